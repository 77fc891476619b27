"""The prediction folder's record of finished work: part files and an append-only ledger.

Each chunk of images is scored, its rows written to ``parts/part-<n>.csv`` atomically, and only
then one line per image appended to ``ledger.jsonl`` (``{"image_id", "status": "done" | "failed",
"part", "reason", "message"}``), flushed and synced. A crash therefore leaves either a finished
chunk that the ledger names or a chunk that a rerun does again; a ledger line never points to a
half file. A truncated last line (a crash inside the append) is ignored on reading, and cut off
before the next append (``repair_tail``), so a resumed run's first line is never glued onto it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.reporting import artifacts

LEDGER_FILE = "ledger.jsonl"
PARTS_DIR = "parts"
DONE, FAILED = "done", "failed"


@dataclass
class Ledger:
    folder: Path
    done: dict[str, str] = field(default_factory=dict)  # image_id -> part file name
    failed: dict[str, tuple[str, str]] = field(default_factory=dict)  # image_id -> (reason, message)
    tail_checked: bool = False  # the file ends with a whole line (checked before this ledger's first append)

    @classmethod
    def open(cls, folder: Path) -> Ledger:
        """The ledger of ``folder`` as recorded so far (the latest line of an image wins)."""
        ledger = cls(folder)
        path = folder / LEDGER_FILE
        if not path.is_file():
            return ledger
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # the last line of a crash inside an append
            ledger._apply(entry)
        return ledger

    def _apply(self, entry: dict[str, Any]) -> None:
        image = str(entry["image_id"])
        if entry["status"] == DONE:
            self.done[image] = str(entry["part"])
            self.failed.pop(image, None)
        else:
            self.failed[image] = (str(entry.get("reason", "")), str(entry.get("message", "")))

    def next_part(self) -> int:
        names = list((self.folder / PARTS_DIR).glob("part-*.csv"))
        return 1 + max((int(p.stem.split("-")[1]) for p in names), default=0)

    def record_chunk(self, rows: pd.DataFrame, failures: list[dict[str, str]]) -> None:
        """Write the chunk's part file, then append its ledger lines (synced)."""
        entries: list[dict[str, Any]] = []
        if len(rows):
            name = f"part-{self.next_part():06d}.csv"
            artifacts.write_csv(self.folder / PARTS_DIR / name, rows)
            entries += [{"image_id": i, "status": DONE, "part": name} for i in rows["image_id"]]
        entries += [{**f, "status": FAILED} for f in failures]
        if not entries:
            return
        if not self.tail_checked:
            repair_tail(self.folder / LEDGER_FILE)
            self.tail_checked = True
        with open(self.folder / LEDGER_FILE, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
            fh.flush()
            os.fsync(fh.fileno())
        for entry in entries:
            self._apply(entry)

    def parts(self) -> list[Path]:
        """The part files the ledger names, in order."""
        return sorted({self.folder / PARTS_DIR / p for p in self.done.values()})


def repair_tail(path: Path) -> None:
    """End ``path`` with a whole line: a last line cut by a crash inside an append is removed (or,
    when it is a whole record that lacks only its newline, the newline is added), so that the next
    append starts a line of its own. Called by the one writer (under the folder's lock)."""
    if not path.is_file():
        return
    with open(path, "r+b") as fh:
        end = fh.seek(0, os.SEEK_END)
        start = end
        while start > 0:  # back to just after the last newline
            step = min(start, 1 << 16)
            fh.seek(start - step)
            k = fh.read(step).rfind(b"\n")
            if k >= 0:
                start = start - step + k + 1
                break
            start -= step
        if start == end:
            return
        fh.seek(start)
        tail = fh.read()
        try:
            whole = isinstance(json.loads(tail), dict)
        except ValueError:
            whole = False
        if whole:
            fh.write(b"\n")
        else:
            fh.truncate(start)
        fh.flush()
        os.fsync(fh.fileno())
