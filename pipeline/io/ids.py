"""Non-identifying ids for manifest rows, exclusion rows and link folders.

With a key, every id is a keyed HMAC (``pipeline.privacy.pseudonym``). Without one, patient and
study ids are written as found (the user chose not to pseudonymise; unsafe ones are digested), and
image/file ids are unkeyed digests of UIDs or paths relative to the scanned root.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.privacy import is_safe_id, plain_digest, pseudonym


@dataclass(frozen=True)
class Ids:
    key: bytes | None = None

    def _digest(self, value: str) -> str:
        return pseudonym(self.key, value) if self.key else plain_digest(value)

    def patient(self, raw: str, fallback: str) -> str:
        """Pseudonym of a PatientID (or NIfTI stem); ``fallback`` seeds one when it is empty."""
        if not raw:
            return "nopid-" + self._digest("nopid:" + fallback)[:12]
        if self.key:
            return pseudonym(self.key, raw)
        return raw if is_safe_id(raw) else "p-" + plain_digest(raw)

    def study(self, raw_uid: str) -> str:
        if not raw_uid:
            return ""
        return pseudonym(self.key, raw_uid) if self.key else raw_uid

    def series(self, uid: str, index: int) -> str:
        return "s-" + self._digest(f"series:{uid}#{index}")

    def nifti(self, relpath: str) -> str:
        return "n-" + self._digest("nifti:" + relpath)

    def file(self, relpath: str) -> str:
        return "f-" + self._digest("file:" + relpath)[:12]
