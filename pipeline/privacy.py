"""Patient-data protection: identifying DICOM keywords, keyed pseudonyms and log redaction.

Hospital exports carry names, record numbers and dates in DICOM tags and often in folder names,
and third-party readers (pydicom, MONAI, nibabel) put full paths and header values into warnings
and exception texts. Three mechanisms keep them out of cohortnet's outputs:

* ``IDENTIFYING_KEYWORDS`` (PS3.15 Annex E basis) names the tags whose values never leave the
  ingestion layer; ``identifying_values(ds)`` collects them from a header so they can be
  registered with the redactor and used to clean free text.
* ``pseudonym(key, value)``: HMAC-SHA256 keyed pseudonyms (16 hex characters). A keyed HMAC, not
  a plain hash, because record numbers are low-entropy and a plain hash is brute-forced in minutes.
* ``install_redaction()``: a log-record factory, a ``logging.Filter`` on the handlers and a
  ``warnings.showwarning`` hook that replace registered values and paths under registered roots.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import hmac
import logging
import re
import threading
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

# PS3.15 Table E.1-1 (not exhaustive): identity, staff, institution, dates/times, UIDs, free text.
IDENTIFYING_KEYWORDS: frozenset[str] = frozenset(
    {
        # patient identity
        "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "OtherPatientIDs",
        "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName", "PatientAddress",
        "PatientTelephoneNumbers", "PatientTelecomInformation", "MedicalRecordLocator",
        "IssuerOfPatientID", "MilitaryRank", "BranchOfService", "Occupation", "CountryOfResidence",
        "RegionOfResidence", "ResponsiblePerson", "ResponsibleOrganization",
        "PatientInsurancePlanCodeSequence", "OtherPatientIDsSequence", "PersonName",
        "PatientReligiousPreference",
        # study and staff identifiers
        "AccessionNumber", "StudyID", "ReferringPhysicianName", "ReferringPhysicianAddress",
        "ReferringPhysicianTelephoneNumbers", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy",
        "OperatorsName", "PhysiciansOfRecord", "RequestingPhysician", "ScheduledPerformingPhysicianName",
        "RequestAttributesSequence", "AdmissionID", "RequestedProcedureID", "ScheduledProcedureStepID",
        "PerformedProcedureStepID", "FillerOrderNumberImagingServiceRequest",
        "PlacerOrderNumberImagingServiceRequest",
        # institution and device
        "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName",
        "DeviceSerialNumber", "DetectorID", "PlateID", "CassetteID", "GantryID", "DeviceUID",
        # dates and times
        "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "StudyTime", "SeriesTime",
        "AcquisitionTime", "ContentTime", "AcquisitionDateTime", "InstanceCreationDate",
        "InstanceCreationTime", "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
        # UIDs (action U: replaced consistently)
        "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
        "MediaStorageSOPInstanceUID", "IrradiationEventUID", "ReferencedSOPInstanceUID",
        # free text
        "ImageComments", "PatientComments", "StudyComments", "AdditionalPatientHistory",
        "RequestedProcedureDescription", "PerformedProcedureStepDescription", "StudyDescription",
        "SeriesDescription", "ProtocolName", "DerivationDescription", "AdmittingDiagnosesDescription",
        "ReasonForStudy", "TextValue", "ContentCreatorName", "VerifyingObserverName",
    }
)  # fmt: skip

# Descriptive text that is kept (cleaned) in QC columns and not registered for log redaction,
# because it is mostly protocol vocabulary; it is still checked against the header's identifiers.
DESCRIPTIVE_KEYWORDS: frozenset[str] = frozenset(
    {"SeriesDescription", "StudyDescription", "ProtocolName", "DerivationDescription"}
)

# Identifiers (VR LO/SH): every token counts, however many there are (no whole-phrase matching);
# not IssuerOfPatientID, whose words ("General Hospital") are ordinary ones.
ID_KEYWORDS: frozenset[str] = frozenset(
    {
        "PatientID", "OtherPatientIDs", "MedicalRecordLocator", "AccessionNumber",
        "StudyID", "AdmissionID", "RequestedProcedureID", "ScheduledProcedureStepID", "PerformedProcedureStepID",
        "FillerOrderNumberImagingServiceRequest", "PlacerOrderNumberImagingServiceRequest",
        "DeviceSerialNumber", "DetectorID", "PlateID", "CassetteID", "GantryID",
    }
)  # fmt: skip

SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9.]*")
_MIN_TOKEN = 3
_NAME_GROUPS = 3  # family, given and middle names; prefix and suffix ("Dr", "Jr") are not identifying
_SHORT_NAME = re.compile(r"[A-Za-z]{1,2}")  # "Li", "Wu": matched only within the whole name
# between the words of a phrase (lower-cased text, or IGNORECASE): at least one separator ("Ng^Bo",
# "Wu, Li"), never none: "Ng^Lu" must not redact "LUNG", nor "Bo^Ne" "BONE"
_GAP = "[^a-z0-9]+"
PHRASE_TOKENS = 3
MAX_PHRASES = 100_000
REDACTED = "[redacted]"
PATH_REDACTED = "<path>"


def pseudonym(key: bytes, value: str) -> str:
    """Keyed pseudonym: HMAC-SHA256(key, value) as 16 hex characters; stable for the same key."""
    return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def plain_digest(value: str) -> str:
    """Unkeyed 16-hex digest, only for values that are not guessable (UIDs, full paths)."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:16]


def is_safe_id(value: str) -> bool:
    """True for IDs that are safe in CSV cells and file names (no formula or path injection)."""
    return bool(SAFE_ID.match(value)) and value[0] not in "-"


def _values_of(element_value: Any, keyword: str = "") -> list[str]:
    if element_value is None:
        return []
    if isinstance(element_value, str | bytes):
        text = element_value.decode("latin-1") if isinstance(element_value, bytes) else element_value
        return _as_identifying(text, keyword)
    if isinstance(element_value, Sequence):  # pydicom MultiValue and Sequence (not PersonName)
        out: list[str] = []
        for item in element_value:
            if hasattr(item, "keys"):  # a sequence item (pydicom Dataset)
                out.extend(v for kw in IDENTIFYING_KEYWORDS for v in _values_of(item.get(kw), kw))
            else:
                out.extend(_values_of(item, keyword))
        return out
    return _as_identifying(str(element_value), keyword)


def _as_identifying(text: str, keyword: str) -> list[str]:
    """One element value as registered: a person name always with a ``^`` (how ``split_values``
    knows it), an identifier with each of its tokens as a value of its own."""
    text = text.strip(" \x00")
    if not text:
        return []
    if keyword in _person_name_keywords():
        return [text if "^" in text else text + "^"]
    if keyword in ID_KEYWORDS:
        return [text, *sorted(tokens(text))]
    return [text]


@functools.cache
def _person_name_keywords() -> frozenset[str]:
    """Identifying keywords of VR PN (pydicom's dictionary, looked up once)."""
    from pydicom.datadict import dictionary_VR

    return frozenset(kw for kw in IDENTIFYING_KEYWORDS if dictionary_VR(kw) == "PN")


def identifying_values(ds: Any, keywords: Iterable[str] = IDENTIFYING_KEYWORDS) -> set[str]:
    """Text of every identifying element present in ``ds`` (a pydicom Dataset or any mapping).

    Person names are returned whole, with at least one ``^`` (``split_values`` splits them into
    components); identifiers also token by token. Raw pydicom values are decoded here rather
    than converted by pydicom (the slow part of scanning headers): UTF-8 and Latin-1 readings
    are both kept when they differ.
    """
    wanted = keywords if isinstance(keywords, frozenset) else frozenset(keywords)
    found: set[str] = set()
    for key, keyword in _present(ds, wanted):
        raw = ds.get_item(key) if isinstance(key, int) else None
        if raw is not None and getattr(raw, "VR", "SQ") != "SQ" and isinstance(raw.value, bytes):
            found.update(v for part in _decoded(raw.value) for v in _as_identifying(part, keyword))
            continue
        try:
            value = ds.get(keyword)
        except Exception:  # an unparseable value is still identifying, but cannot be read
            continue
        found.update(str(v).strip() for v in _values_of(value, keyword))
    return {v for v in found if v}


def _decoded(value: bytes) -> set[str]:
    texts = {value.decode("utf-8", errors="ignore"), value.decode("latin-1")}
    return {part.strip(" \x00") for text in texts for part in text.split("\\")}


_TAGS: dict[frozenset[str], dict[int, str]] = {}


def _present(ds: Any, wanted: frozenset[str]) -> list[tuple[Any, str]]:
    """(key, keyword) of ``wanted`` present in ``ds``, without converting elements (pydicom is lazy)."""
    keys = list(ds.keys())
    if not keys or not isinstance(keys[0], int):  # a plain mapping of keywords
        return [(k, k) for k in keys if k in wanted]
    if wanted not in _TAGS:
        from pydicom.datadict import tag_for_keyword

        _TAGS[wanted] = {t: kw for kw in wanted if (t := tag_for_keyword(kw)) is not None}
    tags = _TAGS[wanted]
    return [(int(t), tags[int(t)]) for t in keys if int(t) in tags]


def tokens(text: str) -> set[str]:
    """Lower-cased alphanumeric tokens (dots kept inside UIDs) of at least 3 characters.

    ``"Doe^Jane"`` gives ``{"doe", "jane"}``; ``"MRN-0012345"`` gives ``{"mrn", "0012345"}``.
    """
    out: set[str] = set()
    for match in _TOKEN.findall(text):
        token = match.rstrip(".").lower()
        if len(token) >= _MIN_TOKEN:
            out.add(token)
        out.update(p for p in token.split(".") if len(p) >= _MIN_TOKEN and not p.isdigit())
    return out


def name_parts(name: str) -> tuple[set[str], set[str]]:
    """(tokens, phrases) of a person name (``Family^Given^Middle^Prefix^Suffix``, groups separated
    by ``=``): every component split on ``^`` and spaces, whatever their number, gives its tokens
    of 3+ characters; a name with a part of one or two letters (``"Li^Wu"``, ``"Doe^John^W"``)
    also gives the whole name as a phrase, family first and given first (``"li wu"``, ``"wu li"``),
    because such a part alone is an ordinary word ("no", "de", "CT") and must never be redacted
    on its own. A phrase matches whole words, whatever is or is not between its words ("Li Wu",
    "Wu, Li", "Li-Wu", "Li^Wu", "LiWu"; not "LIWUX"). A name of one short part only cannot be
    matched safely and is not."""
    toks: set[str] = set()
    phrases: set[str] = set()
    for group in name.split("="):
        components = [[p.strip(".,") for p in c.split() if p.strip(".,")] for c in group.split("^")]
        for component in components:
            for part in component:
                toks |= tokens(part)
        named = components[:_NAME_GROUPS]
        parts = [p for c in named for p in c]
        if len(parts) >= 2 and any(_SHORT_NAME.fullmatch(p) for p in parts):
            phrases.add(" ".join(parts).lower())
            phrases.add(" ".join([p for c in named[1:] for p in c] + named[0]).lower())
    return toks, phrases


def _phrase_pattern(phrase: str) -> str:
    """A phrase's words with any run of non-alphanumeric characters, or none, between them:
    "ng bo" matches "Ng Bo", "Ng^Bo", "Ng_Bo", "Ng, Bo" and "NgBo"."""
    return _GAP.join(map(re.escape, phrase.split()))


def _whole(phrase: str, folded: str) -> bool:
    """``phrase`` in ``folded`` as whole words ("li wu" is not in "oli wun", "liwu" not in "liwux")."""
    return re.search(rf"(?<![a-z0-9]){_phrase_pattern(phrase)}(?![a-z0-9])", folded) is not None


_YEAR = r"(?:18|19|20)\d\d"
_MONTH_NAME = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?"
    r"|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?(?![a-z])"
)
# A calendar date as it is usually written, not inside a longer number or a dotted version or UID
# ("1.2.840.10008", "1.25", "5.0"): ISO and compact (with a DT's time), day or month first with a
# four- or two-digit year, and with a month name.
_DATE = re.compile(
    rf"""(?<!\d)(?<!\d[./-])(?:
      (?P<iy>{_YEAR})(?P<isep>[-./])(?P<im>\d\d?)(?P=isep)(?P<id>\d\d?)
    | (?P<cy>{_YEAR})(?P<cm>0[1-9]|1[0-2])(?P<cd>0[1-9]|[12]\d|3[01])(?:T?\d{{4}}(?:\d\d(?:\.\d{{1,6}})?)?)?
    | (?P<a>\d\d?)(?P<nsep>[-./])(?P<b>\d\d?)(?P=nsep)(?P<ny>{_YEAR}|\d\d)
    | (?P<td>\d\d?)[ .-]?(?P<tm>{_MONTH_NAME})[ .,-]*(?P<ty>{_YEAR}|\d\d)
    | (?<![a-z])(?P<um>{_MONTH_NAME})[ ]?(?P<ud>\d\d?)(?:st|nd|rd|th)?,?[ ]?(?P<uy>{_YEAR})
    )(?![./-]?\d)""",
    re.IGNORECASE | re.VERBOSE,
)
# A DA or DT value as a header holds it (YYYYMMDD, an old ACR-NEMA YYYY.MM.DD, a DT's time and offset).
_HEADER_DATE = re.compile(
    rf"({_YEAR})\.?(0[1-9]|1[0-2])\.?(0[1-9]|[12]\d|3[01])(?:\d{{2,6}}(?:\.\d{{1,6}})?)?(?:[+-]\d{{4}})?"
)


_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")


def _month_number(name: str) -> int:
    return _MONTHS.index(name[:3].lower()) + 1


def _years(text: str) -> list[int]:
    """A four-digit year, or both centuries of a two-digit one ("70": 1970 and 2070)."""
    return [int(text)] if len(text) == 4 else [1900 + int(text), 2000 + int(text)]


def _candidates(g: dict[str, str | None]) -> list[tuple[int, int, int]]:
    """(year, month, day) that a ``_DATE`` match's groups can mean ("03/04/21": 4 March or 3 April, 1921 or 2021)."""
    if g["iy"]:
        return [(int(g["iy"]), int(g["im"] or 0), int(g["id"] or 0))]
    if g["cy"]:
        return [(int(g["cy"]), int(g["cm"] or 0), int(g["cd"] or 0))]
    if g["a"]:
        a, b = int(g["a"]), int(g["b"] or 0)
        return [(y, m, d) for y in _years(g["ny"] or "") for m, d in ((b, a), (a, b))]
    if g["tm"]:
        return [(y, _month_number(g["tm"]), int(g["td"] or 0)) for y in _years(g["ty"] or "")]
    return [(int(g["uy"] or 0), _month_number(g["um"] or ""), int(g["ud"] or 0))]


def _valid(ymd: Iterable[tuple[int, int, int]]) -> set[str]:
    out = set()
    for y, m, d in ymd:
        try:
            out.add(datetime.date(y, m, d).strftime("%Y%m%d"))
        except ValueError:  # not a date (month 13, 31 April)
            continue
    return out


def _is_calendar_date(match: re.Match[str]) -> bool:
    """A ``_DATE`` match that is a date whatever the header says. A two-digit year only in
    "DD.MM.YY" (day first) and "MM/DD/YY" (month first), with two-digit day and month: "01.02.70"
    and "12/31/99" are dates; "1.2.10", "12.30.45" (a time) and "10-20-30" are not."""
    g = match.groupdict()
    if g["a"] and len(g["ny"] or "") == 2:
        a, b, sep = g["a"], g["b"] or "", g["nsep"]
        if len(a) < 2 or len(b) < 2 or sep not in "./":
            return False
        order = (int(b), int(a)) if sep == "." else (int(a), int(b))
        return bool(_valid([(y, *order) for y in _years(g["ny"] or "")]))
    return bool(_valid(_candidates(g)))


def dates_in(text: str) -> set[str]:
    """YYYYMMDD of every reading of every date in ``text``, however rendered ("2021-03-04",
    "04.03.2021", "3/4/21", "04-MAR-2021", "March 4, 2021", "20210304")."""
    return {day for m in _DATE.finditer(text) for day in _valid(_candidates(m.groupdict()))}


def contains_date(text: str) -> bool:
    """True if ``text`` holds a calendar date (any of the renderings of ``dates_in``; two-digit
    years only as "DD.MM.YY"/"MM/DD/YY"). Protocol words ("T1 3D", "5.0 mm", "1.25", "2:1") are not dates."""
    return any(_is_calendar_date(m) for m in _DATE.finditer(text))


def header_dates(values: Iterable[str]) -> set[str]:
    """YYYYMMDD of the values that are a header's DA or DT (``"19700101"``, ``"20210304093000.5"``)."""
    return {"".join(m.groups()) for v in values if (m := _HEADER_DATE.fullmatch(v.strip()))}


def split_values(values: Iterable[str]) -> tuple[set[str], set[str]]:
    """(tokens, phrases): person names (values with a ``^``) match component by component, and so do
    short values (IDs, dates); free text of more than ``PHRASE_TOKENS`` tokens matches only
    whole, so a comment does not redact common words."""
    toks: set[str] = set()
    phrases: set[str] = set()
    for v in values:
        if "^" in v:
            name_toks, name_phrases = name_parts(v)
            toks |= name_toks
            phrases |= name_phrases
            continue
        t = tokens(v)
        if len(t) > PHRASE_TOKENS:
            phrases.add(" ".join(v.lower().split()))
        else:
            toks |= t
    return toks, phrases


def contains_identifying(text: str, identifying: Iterable[str]) -> bool:
    """True if ``text`` contains a token of a short identifying value, a whole free-text value or
    name phrase, or one of the header's dates however it is written ("01.01.1970" for 19700101)."""
    values = list(identifying)
    toks, phrases = split_values(values)
    return _contains(text, toks, phrases, header_dates(values))


def _contains(text: str, toks: set[str], phrases: set[str], dates: set[str]) -> bool:
    folded = " ".join(text.lower().split())
    if toks & tokens(text) or any(_whole(p, folded) for p in phrases):
        return True
    return bool(dates and dates & dates_in(text))


def clean_description(text: str | None, identifying: Iterable[str], max_len: int = 64) -> str:
    """A descriptive text (SeriesDescription) safe for a QC column, or ``[redacted]``.

    Redacts the whole text when it contains an identifying value of the same header or any
    calendar date (a description needs none); drops characters outside a conservative set and a
    leading formula character (CSV injection). The text is checked as found and again once
    filtered, since dropping characters can join what they separated ("Ng^Bo" into "NgBo").
    """
    if not text:
        return ""
    values = list(identifying)
    toks, phrases = split_values(values)
    dates = header_dates(values)
    filtered = re.sub(r"[^A-Za-z0-9 _.+\-()/:,*#%]", "", text).strip()
    kept = filtered[:max_len]
    kept = kept.lstrip("=+-@") if kept[:1] in "=+-@" else kept
    for candidate in dict.fromkeys((text, filtered, kept)):
        if _contains(candidate, toks, phrases, dates) or contains_date(candidate):
            return REDACTED
    return kept


class Redactor:
    """Registry of identifying tokens and data roots; ``redact(text)`` removes both.

    Tokens are matched whole (``"jane"`` does not redact ``"janet"``; a name with a one- or two-letter
    part, ``"Li^Wu"``, is matched only as the whole name), in
    O(len(text)) per call however many values are registered; a registered DA/DT value also in its
    other renderings ("1970-01-01", "01.01.1970", "1/1/70" for 19700101). Paths under a registered
    root become ``<path>``.
    """

    def __init__(self) -> None:
        self._tokens: set[str] = set()
        self._phrases: set[str] = set()
        self._phrase_re: re.Pattern[str] | None = None
        self._dates: set[str] = set()
        self._roots: list[str] = []
        self._root_re: re.Pattern[str] | None = None
        self._lock = threading.Lock()

    def register_values(self, values: Iterable[str]) -> None:
        values = list(values)
        new, phrases = split_values(values)
        dates = header_dates(values)
        if dates - self._dates:
            with self._lock:
                self._dates |= dates
        if new - self._tokens:
            with self._lock:
                self._tokens |= new
        if phrases - self._phrases and len(self._phrases) < MAX_PHRASES:
            with self._lock:
                self._phrases |= phrases
                self._phrase_re = None  # rebuilt on the next redact(): registering stays O(1)

    def register_root(self, root: str | Path) -> None:
        # the path as given only when it reads as a path: a bare relative "data" or "." would
        # match ordinary text ("data.spatial_size", "AUC 0.95"); the resolved path always
        given = str(Path(root))
        variants = {str(Path(root).resolve())} | ({given} if "/" in given.strip("./") else set())
        with self._lock:
            self._roots = sorted(set(self._roots) | variants, key=len, reverse=True)
            pattern = "|".join(re.escape(r) for r in self._roots)
            self._root_re = re.compile(rf"(?:{pattern})[^\s'\"]*")

    @property
    def roots(self) -> tuple[str, ...]:
        """The registered roots (as given and resolved), for a worker process's redactor."""
        return tuple(self._roots)

    def clear(self) -> None:
        with self._lock:
            self._tokens = set()
            self._phrases = set()
            self._phrase_re = None
            self._dates = set()
            self._roots = []
            self._root_re = None

    def redact(self, text: str) -> str:
        if self._root_re is not None:
            text = self._root_re.sub(PATH_REDACTED, text)
        if self._phrases and self._phrase_re is None:
            with self._lock:
                alternatives = "|".join(_phrase_pattern(p) for p in sorted(self._phrases))
                # whole words only: the phrase "li wu" never cuts into "oli wun" (nor "liwu" into "liwux")
                self._phrase_re = re.compile(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])", re.IGNORECASE)
        if self._phrase_re is not None:
            text = self._phrase_re.sub(REDACTED, text)
        if self._dates:  # a registered date however written: "01.01.1970", "1970-01-01", "1/1/70"
            dates = self._dates

            # only what reads as a date (``_is_calendar_date``: "1.2.70" in "monai 1.2.70" does not)
            def _date(m: re.Match[str]) -> str:
                return REDACTED if _is_calendar_date(m) and _valid(_candidates(m.groupdict())) & dates else m.group(0)

            text = _DATE.sub(_date, text)
        if not self._tokens:
            return text
        registered = self._tokens

        def _sub(match: re.Match[str]) -> str:
            token = match.group(0)
            core = token.rstrip(".")
            if core.lower() in registered:
                return REDACTED + token[len(core) :]
            parts = core.split(".")
            if any(p.lower() in registered for p in parts):
                return ".".join(REDACTED if p.lower() in registered else p for p in parts) + token[len(core) :]
            return token

        return _TOKEN.sub(_sub, text)


REDACTOR = Redactor()


def register_identifying(values: Iterable[str]) -> None:
    """Add header values (e.g. from ``identifying_values``) to the process-wide redactor."""
    REDACTOR.register_values(values)


def register_root(root: str | Path) -> None:
    """Paths under ``root`` (a scanned data folder) are replaced by ``<path>`` in logs."""
    REDACTOR.register_root(root)


def registered_roots() -> tuple[str, ...]:
    """The roots registered in this process: what a worker process needs to redact the same paths
    (the identifying values it registers itself, from the headers it reads)."""
    return REDACTOR.roots


def redact(text: str) -> str:
    return REDACTOR.redact(text)


class RedactionFilter(logging.Filter):
    """Formats each record's message, then redacts it (and its exception text) in place."""

    def filter(self, record: logging.LogRecord) -> bool:
        _redact_record(record)
        return True


def _redact_record(record: logging.LogRecord) -> None:
    if getattr(record, "_cohortnet_redacted", False):
        return
    try:
        message = record.getMessage()
    except Exception:  # a malformed format string: keep the template only
        message = str(record.msg)
    record.msg, record.args = REDACTOR.redact(message), ()
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = REDACTOR.redact(record.exc_text)
    if record.stack_info:
        record.stack_info = REDACTOR.redact(record.stack_info)
    setattr(record, "_cohortnet_redacted", True)  # noqa: B010 (LogRecord declares no such attribute)


_installed: dict[str, Any] = {}


def install_redaction(logger: logging.Logger | None = None) -> RedactionFilter:
    """Redact every log record and warning of this process; idempotent.

    Installs (1) a log-record factory, so records from any logger are redacted when created,
    whatever handlers are added later; (2) a ``RedactionFilter`` on the handlers of ``logger``
    (default: ``pipeline``) and of the root logger; (3) a ``warnings.showwarning`` hook.
    Call it after handlers are set up; ``uninstall_redaction()`` restores the previous state.
    """
    filt: RedactionFilter = _installed.get("filter") or RedactionFilter()
    if "factory" not in _installed:
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            _redact_record(record)
            return record

        _installed["factory"] = previous
        logging.setLogRecordFactory(factory)
    if "showwarning" not in _installed:
        original = warnings.showwarning

        def showwarning(
            message: Warning | str,
            category: type[Warning],
            filename: str,
            lineno: int,
            file: TextIO | None = None,
            line: str | None = None,
        ) -> None:
            original(REDACTOR.redact(str(message)), category, filename, lineno, file, line)

        _installed["showwarning"] = original
        warnings.showwarning = showwarning
    for target in (logger or logging.getLogger("pipeline"), logging.getLogger()):
        for handler in target.handlers:
            if filt not in handler.filters:
                handler.addFilter(filt)
    _installed["filter"] = filt
    return filt


def uninstall_redaction() -> None:
    """Undo ``install_redaction`` (tests)."""
    if "factory" in _installed:
        logging.setLogRecordFactory(_installed.pop("factory"))
    if "showwarning" in _installed:
        warnings.showwarning = _installed.pop("showwarning")
    filt = _installed.pop("filter", None)
    if filt is not None:
        for name in [*logging.root.manager.loggerDict, ""]:
            for handler in getattr(logging.getLogger(name), "handlers", []):
                handler.removeFilter(filt)


def load_key(path: str | Path) -> bytes:
    """Read a pseudonymisation key file (at least 16 bytes once surrounding whitespace is removed)."""
    key = Path(path).read_bytes().strip()
    if len(key) < 16:
        raise ValueError(f"key file holds {len(key)} bytes; a pseudonymisation key needs at least 16")
    return key
