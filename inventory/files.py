"""Files shared by every call on the machine: durable writes and the named file locks.

Each call is its own process, so an in-process lock serialises nothing: flock-based file locks
do, and the OS releases them when a process dies.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

import filelock

from inventory.model import fold


def atomic_write(path: Path, text: str) -> None:
    """Temp file, fsync, rename: a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def fsync_dir(path: Path) -> None:
    """Makes a rename in `path` durable (best effort)."""
    with contextlib.suppress(OSError):
        fd = os.open(str(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def append_durable(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def csv_text(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def neutralise(s: str) -> str:
    """For CSV outputs: a cell starting with = + - @ is prefixed with ' so a spreadsheet program
    opening the file shows it as text instead of running it ("+1 555 123 4567" stays readable)."""
    return "'" + s if s[:1] in ("=", "+", "-", "@", "\t", "\r") else s


class Locks:
    """Named file locks under STATE_DIR/locks, one per purpose (refresh, replay, snapshot,
    outbox, csv) and one per unit being booked."""

    def __init__(self, state_dir: Path):
        self.dir = Path(state_dir) / "locks"
        self.dir.mkdir(parents=True, exist_ok=True)

    def named(self, name: str, timeout: float = -1) -> filelock.FileLock:
        return filelock.FileLock(str(self.dir / f"{name}.lock"), timeout=timeout)

    @staticmethod
    def unit_name(equipment_id: str) -> str:
        return "unit-" + (re.sub(r"[^A-Za-z0-9_.-]", "_", fold(equipment_id))[:80] or "_")

    def unit(self, equipment_id: str, timeout: float) -> filelock.FileLock:
        return self.named(self.unit_name(equipment_id), timeout)

    @contextlib.contextmanager
    def held_if_free(self, name: str) -> Iterator[bool]:
        """Takes the lock if nobody holds it (yields True), else yields False at once."""
        lock = self.named(name)
        try:
            lock.acquire(blocking=False)
        except filelock.Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()
