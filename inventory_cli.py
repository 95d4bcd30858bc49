"""`python agent.py inventory <command>`: the inventory from a shell, for staff and scripts, on
whichever store and state engine the environment configures (the same as the worker's).

    python agent.py inventory list --from 2030-05-01 --to 2030-05-03 [--category Lifts] [--json]
    python agent.py inventory quote EX-101 --from D --to D [--json]
    python agent.py inventory book EX-101 --from D --to D --name "Dana Smith" --phone +15551234567 [--json]
    python agent.py inventory cancel R7K3QX --phone +15551234567 [--json]
    python agent.py inventory replay [--json]

With --json each command prints one JSON object. Exit status: 0 done, 3 refused, 4 kept pending
(recorded, not yet written to the sheet), 2 bad usage or configuration, 1 unexpected.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import date
from typing import Any, Mapping, TextIO

import equipment
import prompts
import settings
from phone import same_number

DONE, UNEXPECTED, USAGE, REFUSED, PENDING = 0, 1, 2, 3, 4


class Usage(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would print and exit: we answer in JSON too
        raise Usage(message)


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python agent.py inventory", description="The shop's inventory from a shell.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    ls = sub.add_parser("list", help="units and whether they are free for the dates")
    ls.add_argument("--from", dest="start", type=_date, required=True)
    ls.add_argument("--to", dest="end", type=_date, required=True)
    ls.add_argument("--category", default=None)
    quote = sub.add_parser("quote", help="what renting one unit for the dates costs")
    quote.add_argument("equipment_id")
    quote.add_argument("--from", dest="start", type=_date, required=True)
    quote.add_argument("--to", dest="end", type=_date, required=True)
    cancel = sub.add_parser("cancel", help="cancel a booking before it starts (the phone must match it)")
    cancel.add_argument("ref")
    cancel.add_argument("--phone", required=True)
    book = sub.add_parser("book", help="book one unit, as the phone agent would")
    book.add_argument("equipment_id")
    book.add_argument("--from", dest="start", type=_date, required=True)
    book.add_argument("--to", dest="end", type=_date, required=True)
    book.add_argument("--name", required=True)
    book.add_argument("--phone", required=True)
    sub.add_parser("replay", help="write what the outbox holds now")
    for cmd in sub.choices.values():
        cmd.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _refused(refused: equipment.BookingRefused) -> tuple[int, dict[str, Any]]:
    return REFUSED, {"refused": refused.code.value, "message": prompts.refusal_reason(refused)}


async def _known(inv: equipment.Inventory) -> equipment.Snapshot:
    snap = await inv.snapshot()
    if not snap.known:
        raise equipment.BookingRefused(equipment.RefusalCode.INVENTORY_UNKNOWN)
    return snap


async def _list(inv: equipment.Inventory, args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    if args.end < args.start:
        raise Usage("--to is before --from")
    snap = await inv.snapshot()
    units = snap.search(category=args.category) if snap.known else []

    def row(u: equipment.Unit) -> dict[str, Any]:
        free = snap.free(u, args.start, args.end)
        nxt = args.start if free else snap.next_free(u, args.start, args.end)
        return {"id": u.id, "name": u.name, "category": u.category, "daily_rate": u.daily_rate,
                "weekly_rate": u.weekly_rate, "four_week_rate": u.four_week_rate, "status": u.status,
                "available": free, "next_free": nxt.isoformat() if nxt else None}

    return DONE, {"known": snap.known, "units": [row(u) for u in units]}


async def _quote(inv: equipment.Inventory, args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    try:
        snap = await _known(inv)
        unit = snap.find(args.equipment_id)
        if unit is None:
            raise equipment.BookingRefused(equipment.RefusalCode.UNKNOWN_ID, requested_id=args.equipment_id)
        if args.end < args.start:
            raise equipment.BookingRefused(equipment.RefusalCode.END_BEFORE_START)
        q = snap.quote(unit, args.start, args.end)
    except equipment.NoPrice:
        return _refused(equipment.BookingRefused(equipment.RefusalCode.NO_PRICE, unit=unit))
    except equipment.BookingRefused as refused:
        return _refused(refused)
    return DONE, {"id": unit.id, "days": q.days, "total": str(q.total), "deposit": str(q.deposit),
                  "lines": [{"label": line.label, "amount": str(line.amount)} for line in q.lines]}


async def _cancel(inv: equipment.Inventory, args: argparse.Namespace, today: date) -> tuple[int, dict[str, Any]]:
    try:
        snap = await _known(inv)
        r = snap.reservation(args.ref)
        if r is None:
            raise equipment.BookingRefused(equipment.RefusalCode.NO_SUCH_BOOKING, requested_id=args.ref)
        if not same_number(r.renter_phone, args.phone):
            raise equipment.BookingRefused(equipment.RefusalCode.NOT_YOURS, requested_id=args.ref)
        booking = await inv.change(equipment.ChangeRequest(r.ref, today, today, True, f"cli-{os.getpid()}"), today)
    except equipment.BookingRefused as refused:
        return _refused(refused)
    return (DONE if booking.confirmed else PENDING), {"cancelled": booking.confirmed, "ref": booking.ref}


async def _book(inv: equipment.Inventory, args: argparse.Namespace, today: date) -> tuple[int, dict[str, Any]]:
    try:
        request = equipment.parse_booking(args.equipment_id, args.name, args.phone, args.start.isoformat(),
                                          args.end.isoformat(), f"cli-{os.getpid()}", today=today)
        booking = await inv.book(request)
    except equipment.BookingRefused as refused:
        return _refused(refused)
    return (DONE if booking.confirmed else PENDING), {"ref": booking.ref, "confirmed": booking.confirmed,
                                                      "id": booking.equipment_id, "total": booking.total}


async def _run(args: argparse.Namespace, values: settings.Settings) -> tuple[int, dict[str, Any]]:
    inv = equipment.inventory_from_settings(values.inventory)
    try:
        if args.command == "list":
            return await _list(inv, args)
        if args.command == "book":
            return await _book(inv, args, values.today())
        if args.command == "quote":
            return await _quote(inv, args)
        if args.command == "cancel":
            return await _cancel(inv, args, values.today())
        return DONE, {"settled": await inv.replay_outbox()}
    finally:
        await inv.close(timeout=10.0)


def _table(result: dict[str, Any]) -> str:
    if "units" in result:
        if not result["known"]:
            return "The inventory is unknown right now (the sheet did not answer, and nothing is cached)."
        rows = [(u["id"], u["name"][:34], u["category"][:14], prompts.money(u["daily_rate"]),
                 prompts.money(u["weekly_rate"]), "free" if u["available"] else
                 (f"free from {u['next_free']}" if u["next_free"] else
                  "booked" if u["status"] in equipment.RENTABLE else u["status"].lower()))
                for u in result["units"]]
        widths = [max(len(str(r[i])) for r in rows + [("ID", "Name", "Category", "Day", "Week", "")])
                  for i in range(6)]
        return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
                         for r in [("ID", "Name", "Category", "Day", "Week", "")] + rows)
    if "lines" in result:
        lines = "\n".join(f"  {line['label']}: ${line['amount']}" for line in result["lines"])
        return (f"{result['id']}, {result['days']} day(s):\n{lines}\n  total: ${result['total']}\n"
                f"  refundable deposit (not in the total): ${result['deposit']}")
    if "cancelled" in result:
        return (f"Booking {result['ref']} cancelled." if result["cancelled"]
                else f"Cancellation of {result['ref']} RECORDED, not yet written to the sheet (pending).")
    if "ref" in result:
        state = "confirmed" if result["confirmed"] else "RECORDED, not yet written to the sheet (pending)"
        total = f", total ${result['total']}" if result.get("total") else ""
        return f"Booked {result['id']}: reference {result['ref']}, {state}{total}."
    if "refused" in result:
        return f"Refused ({result['refused']}): {result['message']}"
    if "settled" in result:
        return f"Outbox: {result['settled']} entr{'y' if result['settled'] == 1 else 'ies'} settled."
    return result.get("error", "") + "".join(f"\n  - {p}" for p in result.get("problems", []))


def main(argv: list[str], env: Mapping[str, str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    as_json = "--json" in argv
    try:
        args = parser().parse_args(argv)
        values = settings.Settings.from_env(os.environ if env is None else env, mode="inventory")
        code, result = asyncio.run(_run(args, values))
    except Usage as e:
        code, result = USAGE, {"error": f"usage: {e}"}
    except settings.ConfigError as e:
        code, result = USAGE, {"error": "configuration problem", "problems": e.errors}
    except Exception as e:  # noqa: BLE001 - one JSON object whatever happens
        code, result = UNEXPECTED, {"error": f"unexpected: {type(e).__name__}: {settings.shown(str(e))}"}
    print(json.dumps(result) if as_json else _table(result), file=out)
    return code
