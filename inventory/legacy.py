"""The files earlier versions kept in STATE_DIR (equipment-snapshot.json, outbox.jsonl), imported
into the State once, so nothing pending is lost on upgrade.

Each file is claimed by renaming it (one process wins), imported (idempotent by ref, so a
process that dies half-way is simply done again by the next), then kept as *.imported for ops.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from inventory.model import RENTED, fold
from inventory.policy import ShopPolicy
from inventory.reservations import legacy
from inventory.state import State, finite, loads_units

logger = logging.getLogger("equipment")

OLD_SNAPSHOT = "equipment-snapshot.json"
OLD_OUTBOX = "outbox.jsonl"
_MARKS = ("settled", "attempt")


def _claim(path: Path) -> Path | None:
    """The file renamed for this process, or a claim left by a process that died; None if none."""
    for stale in path.parent.glob(f"{path.name}.importing-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            return stale
    if not path.exists():
        return None
    claimed = path.with_name(f"{path.name}.importing-{os.getpid()}")
    try:
        os.rename(path, claimed)
    except FileNotFoundError:
        return None  # another process claimed it first
    return claimed


def _done(claimed: Path, original: Path) -> None:
    os.replace(claimed, original.with_name(f"{original.name}.imported-{int(time.time())}"))


def _salvage(line: str) -> dict[str, Any] | None:
    """A torn line onto which the old version appended its next entry (it wrote after a half-
    written line without a newline first): the torn start cannot be trusted, but a complete
    object that ends the line is that next entry, whose caller was told it was recorded."""
    decoder = json.JSONDecoder()
    start = line.find("{", 1)
    while start != -1:
        try:
            data, end = decoder.raw_decode(line, start)
        except ValueError:
            data, end = None, -1
        if isinstance(data, dict) and not line[end:].strip():
            return data
        start = line.find("{", start + 1)
    return None


def _lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            data = json.loads(line)
        except ValueError:
            data = _salvage(line)  # a torn line: only a complete entry glued after it is kept
        if isinstance(data, dict) and isinstance(data.get("ref"), str):
            out.append(data)
    return out


def import_outbox(state_dir: Path, state: State) -> int:
    original = Path(state_dir) / OLD_OUTBOX
    claimed = _claim(original)
    if claimed is None:
        return 0
    lines = _lines(claimed)
    settled = {d["ref"] for d in lines if d.get("op") == "settled"}
    attempts: dict[str, int] = {}
    for d in lines:
        if d.get("op") == "attempt":
            try:
                attempts[d["ref"]] = max(attempts.get(d["ref"], 0), int(d.get("count", 0)))
            except (TypeError, ValueError):
                pass
    imported = 0
    present = {row.ref for row in state.pending()}  # imported by a process that died half-way
    for d in lines:
        op, ref = d.get("op"), d["ref"]
        if op in _MARKS or ref in settled or op not in ("book", "callback", "log"):
            continue
        if ref in present or state.is_settled(ref):
            continue  # already imported (its attempts too): counting them again would fail it early
        unit = fold(str(d.get("equipment_id") or "")) if op == "book" else ""
        state.add(ref, str(op), unit, d)
        for _ in range(attempts.get(ref, 0)):
            state.attempt(ref, "counted before the upgrade")
        imported += 1
    _done(claimed, original)
    logger.info("Outbox: %d pending entr%s imported from %s into %s", imported, "y" if imported == 1 else "ies",
                original, state.where)
    return imported


def import_snapshot(state_dir: Path, state: State, origin: str) -> bool:
    original = Path(state_dir) / OLD_SNAPSHOT
    claimed = _claim(original)
    if claimed is None:
        return False
    try:
        data = json.loads(claimed.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    units = loads_units(data.get("units")) if isinstance(data, dict) else None
    read_at = finite(data.get("read_at")) if isinstance(data, dict) else None
    ok = bool(units is not None and read_at is not None and data.get("origin") == origin
              and state.snapshot(origin) is None)
    if ok:
        state.save_snapshot(origin, snapshot_data(units or []), read_at, read_at)  # type: ignore[arg-type]
    _done(claimed, original)
    return ok


def snapshot_data(units: list[dict]) -> dict:  # type: ignore[type-arg]
    """An old snapshot in today's format. Holds were baked into the old file as PENDING (they
    come from the outbox now); its RENTED units had no dates in it, so each is taken until the
    first refresh reads the sheet: never shown free on a guess."""
    from inventory.cache import FORMAT  # the snapshot's own format marker

    import json

    from inventory.reservations import busy_of

    kept, reservations = [], []
    for u in units:
        status = str(u.get("status", "")).upper()
        kept.append({**u, "status": "AVAILABLE" if status == "PENDING" else status})
        if status == RENTED:
            taken = legacy(str(u["id"]), RENTED, "", "", "", "", "")
            if taken is not None:
                reservations.append(taken)
    return {"v": FORMAT, "units": kept, "busy": busy_of(reservations),
            "reservations": json.dumps([r.to_list() for r in reservations]), "policy": ShopPolicy().to_dict()}


def import_files(state_dir: Path, state: State, origin: str) -> None:
    """Both files, if present (a stat each when they are not: cheap enough for every call)."""
    directory = Path(state_dir)
    if not any((directory / name).exists() or any(directory.glob(f"{name}.importing-*"))
               for name in (OLD_OUTBOX, OLD_SNAPSHOT)):
        return
    try:
        import_outbox(directory, state)
        import_snapshot(directory, state, origin)
    except Exception as e:  # noqa: BLE001 - the files stay; the next start tries again
        logger.error("Could not import the old STATE_DIR files into %s (%s); they are kept and will be "
                     "imported at the next start", state.where, e)
