"""`python agent.py inventory <command>`: the inventory from a shell, for staff and scripts, on
whichever store and state engine the environment configures (the same as the worker's).

    python agent.py inventory list --from 2030-05-01 --to 2030-05-03 [--category Lifts] [--json]
    python agent.py inventory book EX-101 --from D --to D --name "Dana Smith" --phone +15551234567 [--json]
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


async def _list(inv: equipment.Inventory, args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    if args.end < args.start:
        raise Usage("--to is before --from")
    snap = await inv.snapshot()
    units = snap.search(category=args.category, available_only=False) if snap.known else []
    return DONE, {"known": snap.known, "units": [
        {"id": u.id, "name": u.name, "category": u.category, "daily_rate": u.daily_rate,
         "weekly_rate": u.weekly_rate, "status": u.status, "available": u.available} for u in units]}


async def _book(inv: equipment.Inventory, args: argparse.Namespace, today: date) -> tuple[int, dict[str, Any]]:
    try:
        request = equipment.parse_booking(args.equipment_id, args.name, args.phone, args.start.isoformat(),
                                          args.end.isoformat(), f"cli-{os.getpid()}", today=today)
        booking = await inv.book(request)
    except equipment.BookingRefused as refused:
        return REFUSED, {"refused": refused.code.value, "message": prompts.refusal_reason(refused)}
    return (DONE if booking.confirmed else PENDING), {"ref": booking.ref, "confirmed": booking.confirmed,
                                                      "id": booking.equipment_id}


async def _run(args: argparse.Namespace, values: settings.Settings) -> tuple[int, dict[str, Any]]:
    inv = equipment.inventory_from_settings(values.inventory)
    try:
        if args.command == "list":
            return await _list(inv, args)
        if args.command == "book":
            return await _book(inv, args, values.today())
        return DONE, {"settled": await inv.replay_outbox()}
    finally:
        await inv.close(timeout=10.0)


def _table(result: dict[str, Any]) -> str:
    if "units" in result:
        if not result["known"]:
            return "The inventory is unknown right now (the sheet did not answer, and nothing is cached)."
        rows = [(u["id"], u["name"][:34], u["category"][:14], prompts.money(u["daily_rate"]),
                 prompts.money(u["weekly_rate"]), "free" if u["available"] else u["status"].lower())
                for u in result["units"]]
        widths = [max(len(str(r[i])) for r in rows + [("ID", "Name", "Category", "Day", "Week", "")])
                  for i in range(6)]
        return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
                         for r in [("ID", "Name", "Category", "Day", "Week", "")] + rows)
    if "ref" in result:
        state = "confirmed" if result["confirmed"] else "RECORDED, not yet written to the sheet (pending)"
        return f"Booked {result['id']}: reference {result['ref']}, {state}."
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
