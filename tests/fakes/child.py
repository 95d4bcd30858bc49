"""A separate process using the inventory, for the cross-process tests (every call is its own
process in production: the cache, the locks and the outbox are shared through STATE_DIR only).

    python -m tests.fakes.child snapshot
    python -m tests.fakes.child book EQ-ID "Name" "+1 555 123 4567" 2031-01-02 2031-01-03

The inventory comes from the environment (``equipment.inventory_from_env``). Before the command
runs, the child waits:
- with CHILD_WAIT_FOR_GO=1: prints ``ready`` and waits for a line on stdin (a barrier the test
  releases once every child is ready, however slowly each one started);
- with START_AT (epoch seconds): until that time.
It then prints one JSON line and exits at once (no wait for background daemon threads), after
``close(timeout=CHILD_CLOSE_TIMEOUT)`` (default 10 s).

With CHILD_FSIZE_LIMIT=N (bytes), once the inventory is built the process may not write any
regular file beyond N bytes (RLIMIT_FSIZE; 0: no file write succeeds, as on a full disk). Sockets
and pipes are not files: Sheets, PostgreSQL and this output still work.

Output: snapshot -> {"known", "age", "source", "n", "statuses", "reservations", "elapsed"} (reservations:
[ref, equipment id, start, end, status], the outbox's pending bookings among them as PENDING);
book -> {"ok": true, "ref", "confirmed", "elapsed"} or {"ok": false, "code", "alternatives", "next_free",
"elapsed"}
or, when not even the outbox could keep it, {"ok": false, "not_recorded": message, "elapsed"}.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import date
from typing import Any

from tests.fakes.sheets_server import install_network_guard


async def run(argv: list[str]) -> dict[str, Any]:
    import equipment

    inv = equipment.inventory_from_env(os.environ)
    if os.environ.get("CHILD_FSIZE_LIMIT"):
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(os.environ["CHILD_FSIZE_LIMIT"]), hard))
    if os.environ.get("CHILD_WAIT_FOR_GO") == "1":
        print("ready", flush=True)
        sys.stdin.readline()
    start_at = float(os.environ.get("START_AT") or 0)
    if start_at > time.time():
        await asyncio.sleep(start_at - time.time())
    t0 = time.monotonic()
    try:
        command = argv[0] if argv else ""
        if command == "snapshot":
            snap = await inv.snapshot()
            out: dict[str, Any] = {
                "known": snap.known, "age": snap.age, "source": snap.source,
                "n": None if snap.units is None else len(snap.units),
                "statuses": None if snap.units is None else {u.id: u.status for u in snap.units},
                "reservations": [[r.ref, r.equipment_id, r.start.isoformat(), r.end.isoformat(), r.status]
                                 for r in snap.reservations]}
        elif command == "book" and len(argv) == 6:
            eid, name, phone, start, end = argv[1:6]
            try:
                request = equipment.parse_booking(eid, name, phone, start, end, f"pid-{os.getpid()}",
                                                  today=date.today())
                b = await inv.book(request)
                out = {"ok": True, "ref": b.ref, "confirmed": b.confirmed}
            except equipment.BookingRefused as e:
                out = {"ok": False, "code": e.code.value, "alternatives": [u.id for u in e.alternatives],
                       "next_free": e.next_free.isoformat() if e.next_free else None}
            except equipment.BookingNotRecorded as e:
                out = {"ok": False, "not_recorded": str(e)}
        else:
            raise SystemExit(f"usage: python -m tests.fakes.child snapshot | book ID NAME PHONE START END "
                             f"(got {argv!r})")
        out["elapsed"] = time.monotonic() - t0
        return out
    finally:
        await inv.close(timeout=float(os.environ.get("CHILD_CLOSE_TIMEOUT") or 10))


def main(argv: list[str]) -> None:
    install_network_guard()
    out = asyncio.run(run(argv))
    print(json.dumps(out), flush=True)
    os._exit(0)  # don't wait for background refresh threads (daemon) on the way out


if __name__ == "__main__":
    main(sys.argv[1:])
