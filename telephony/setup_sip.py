"""Create or update, idempotently, the LiveKit SIP side of the shop's phone line.

    python -m telephony.setup_sip --number +15551234567            # apply
    python -m telephony.setup_sip --number +15551234567 --dry-run  # show what would change

It makes sure that, in the LiveKit project named by LIVEKIT_URL / LIVEKIT_API_KEY /
LIVEKIT_API_SECRET:

1. an **inbound trunk** accepts calls to the shop's number (found by the number, or by
   --trunk-name; created when missing, its name/numbers/allowed addresses updated when different);
2. a **dispatch rule** on that trunk puts **each caller in their own room** (an individual rule,
   rooms named ``<room-prefix><caller number>_<random>``) and **dispatches our agent by name**
   (``roomConfig.agents[].agentName`` = LIVEKIT_AGENT_NAME, default ``equipment-rental``), which is
   what the worker registers with. A rule already on the trunk (or with --rule-name) is updated in
   place; nothing is duplicated.

Running it again with the same arguments changes nothing (it only lists). It prints one line per
object and exits 0, or prints what went wrong and exits 1.

The number's carrier (Twilio, Telnyx, ...) must still send the calls to your project's SIP URI
(LiveKit Cloud dashboard > Telephony > SIP URI); see the README. For `lk` CLI users the same
objects are in telephony/inbound-trunk.json and telephony/dispatch-rule.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import dataclass
from typing import Awaitable, Mapping, TypeVar

import aiohttp
from livekit import api
from livekit.protocol import agent_dispatch as proto_dispatch
from livekit.protocol import sip as proto_sip

DEFAULT_AGENT_NAME = "equipment-rental"  # same default as agent.py
DEFAULT_TRUNK_NAME = "equipment-rental inbound"
DEFAULT_RULE_NAME = "equipment-rental: each caller to the agent"
DEFAULT_ROOM_PREFIX = "call-"
DEFAULT_TIMEOUT = 10.0

T = TypeVar("T")


class SetupError(Exception):
    """A problem the person running the command must fix; the message says how."""


@dataclass(frozen=True)
class Plan:
    numbers: tuple[str, ...]
    agent_name: str
    trunk_name: str
    rule_name: str
    room_prefix: str
    allowed_addresses: tuple[str, ...] = ()
    krisp: bool = True
    hide_phone_number: bool = False


@dataclass
class Outcome:
    trunk_id: str
    trunk_action: str  # created | updated | unchanged | would create | would update
    rule_id: str
    rule_action: str


# ------------------------------------------------------------------------------------------ desired state


def desired_trunk(plan: Plan) -> proto_sip.SIPInboundTrunkInfo:
    return proto_sip.SIPInboundTrunkInfo(
        name=plan.trunk_name,
        numbers=list(plan.numbers),
        allowed_addresses=list(plan.allowed_addresses),
        krisp_enabled=plan.krisp,
    )


def desired_rule(plan: Plan, trunk_id: str, base: proto_sip.SIPDispatchRuleInfo | None = None
                 ) -> proto_sip.SIPDispatchRuleInfo:
    """The rule we want; fields we don't manage (metadata, attributes, ...) are kept from base."""
    rule = proto_sip.SIPDispatchRuleInfo()
    if base is not None:
        rule.CopyFrom(base)
        rule.ClearField("created_at")
        rule.ClearField("updated_at")
    rule.name = plan.rule_name
    rule.rule.CopyFrom(proto_sip.SIPDispatchRule(
        dispatch_rule_individual=proto_sip.SIPDispatchRuleIndividual(room_prefix=plan.room_prefix)))
    del rule.trunk_ids[:]
    if trunk_id:
        rule.trunk_ids.append(trunk_id)
    rule.hide_phone_number = plan.hide_phone_number
    rule.krisp_enabled = plan.krisp
    ours = [a for a in rule.room_config.agents if a.agent_name == plan.agent_name][:1] or [
        proto_dispatch.RoomAgentDispatch(agent_name=plan.agent_name)]
    del rule.room_config.agents[:]
    # Only our agent answers the phone: a second agent in the room would talk over it, so any
    # other agent on this rule is replaced (the diff line shows it).
    rule.room_config.agents.extend(ours)
    return rule


def trunk_differs(cur: proto_sip.SIPInboundTrunkInfo, plan: Plan) -> list[str]:
    diffs = []
    if cur.name != plan.trunk_name:
        diffs.append(f"name {cur.name!r} -> {plan.trunk_name!r}")
    if sorted(cur.numbers) != sorted(plan.numbers):
        diffs.append(f"numbers {list(cur.numbers)} -> {list(plan.numbers)}")
    if sorted(cur.allowed_addresses) != sorted(plan.allowed_addresses):
        diffs.append(f"allowed addresses {list(cur.allowed_addresses)} -> {list(plan.allowed_addresses)}")
    if cur.krisp_enabled != plan.krisp:
        diffs.append(f"krisp {cur.krisp_enabled} -> {plan.krisp}")
    return diffs


def rule_differs(cur: proto_sip.SIPDispatchRuleInfo, want: proto_sip.SIPDispatchRuleInfo) -> list[str]:
    diffs = []
    if cur.name != want.name:
        diffs.append(f"name {cur.name!r} -> {want.name!r}")
    if cur.rule != want.rule:
        kind = cur.rule.WhichOneof("rule") or "none"
        prefix = cur.rule.dispatch_rule_individual.room_prefix if kind == "dispatch_rule_individual" else ""
        diffs.append(f"rule {kind}{' ' + repr(prefix) if prefix else ''} -> individual "
                     f"{want.rule.dispatch_rule_individual.room_prefix!r}")
    if sorted(cur.trunk_ids) != sorted(want.trunk_ids):
        diffs.append(f"trunks {list(cur.trunk_ids) or 'all'} -> {list(want.trunk_ids) or 'all'}")
    cur_agents = [a.agent_name for a in cur.room_config.agents]
    want_agents = [a.agent_name for a in want.room_config.agents]
    if cur_agents != want_agents:
        diffs.append(f"agents {cur_agents} -> {want_agents}")
    if cur.hide_phone_number != want.hide_phone_number:
        diffs.append(f"hide_phone_number {cur.hide_phone_number} -> {want.hide_phone_number}")
    if cur.krisp_enabled != want.krisp_enabled:
        diffs.append(f"krisp {cur.krisp_enabled} -> {want.krisp_enabled}")
    return diffs


# ------------------------------------------------------------------------------------------ apply


async def _timed(aw: Awaitable[T], timeout: float, what: str) -> T:
    # livekit-api's own ClientTimeout does not bound a request (it passes timeout=None per call),
    # so every call is bounded here.
    try:
        return await asyncio.wait_for(aw, timeout)
    except asyncio.TimeoutError:
        raise SetupError(f"LiveKit did not answer {what} within {timeout:g}s: check LIVEKIT_URL "
                         "and your network") from None


async def apply(lk: api.LiveKitAPI, plan: Plan, *, dry_run: bool = False,
                timeout: float = DEFAULT_TIMEOUT) -> Outcome:
    # 1. the inbound trunk
    listed = await _timed(lk.sip.list_inbound_trunk(proto_sip.ListSIPInboundTrunkRequest()), timeout,
                          "ListSIPInboundTrunk")
    trunks = list(listed.items)
    by_number = [t for t in trunks if set(t.numbers) & set(plan.numbers)]
    by_name = [t for t in trunks if t.name == plan.trunk_name]
    candidates = by_number or by_name
    if len({t.sip_trunk_id for t in candidates}) > 1:
        ids = ", ".join(f"{t.sip_trunk_id} ({t.name!r}, {list(t.numbers)})" for t in candidates)
        raise SetupError(f"several inbound trunks match {list(plan.numbers)} / {plan.trunk_name!r}: "
                         f"{ids}. Delete the extra ones (lk sip inbound delete <id>) and run again.")
    if candidates:
        trunk = candidates[0]
        trunk_id = trunk.sip_trunk_id
        diffs = trunk_differs(trunk, plan)
        if not diffs:
            trunk_action = "unchanged"
        elif dry_run:
            trunk_action = "would update: " + "; ".join(diffs)
        else:
            # A whole-trunk replace built from the current one: keeps what we don't manage
            # (auth, headers, media settings) and changes what we do, in one write.
            new = proto_sip.SIPInboundTrunkInfo()
            new.CopyFrom(trunk)
            new.name = plan.trunk_name
            del new.numbers[:]
            new.numbers.extend(plan.numbers)
            del new.allowed_addresses[:]
            new.allowed_addresses.extend(plan.allowed_addresses)
            new.krisp_enabled = plan.krisp
            await _timed(lk.sip.update_inbound_trunk(trunk_id, new), timeout, "UpdateSIPInboundTrunk")
            trunk_action = "updated: " + "; ".join(diffs)
    elif dry_run:
        trunk_id, trunk_action = "", "would create"
    else:
        created = await _timed(lk.sip.create_inbound_trunk(
            proto_sip.CreateSIPInboundTrunkRequest(trunk=desired_trunk(plan))), timeout,
            "CreateSIPInboundTrunk")
        trunk_id, trunk_action = created.sip_trunk_id, "created"

    # 2. the dispatch rule
    listed_rules = await _timed(lk.sip.list_dispatch_rule(proto_sip.ListSIPDispatchRuleRequest()),
                                timeout, "ListSIPDispatchRule")
    rules = list(listed_rules.items)
    named = [r for r in rules if r.name == plan.rule_name]
    on_trunk = [r for r in rules if trunk_id and trunk_id in r.trunk_ids]
    candidates = named or on_trunk
    if len({r.sip_dispatch_rule_id for r in candidates}) > 1:
        ids = ", ".join(f"{r.sip_dispatch_rule_id} ({r.name!r})" for r in candidates)
        raise SetupError(f"several dispatch rules match trunk {trunk_id} / {plan.rule_name!r}: {ids}. "
                         "Delete the extra ones (lk sip dispatch delete <id>) and run again.")
    if candidates:
        cur = candidates[0]
        rule_id = cur.sip_dispatch_rule_id
        want = desired_rule(plan, trunk_id or (cur.trunk_ids[0] if cur.trunk_ids else ""), base=cur)
        diffs = rule_differs(cur, want)
        if not diffs:
            rule_action = "unchanged"
        elif dry_run:
            rule_action = "would update: " + "; ".join(diffs)
        else:
            await _timed(lk.sip.update_dispatch_rule(rule_id, want), timeout, "UpdateSIPDispatchRule")
            rule_action = "updated: " + "; ".join(diffs)
    elif dry_run:
        rule_id, rule_action = "", "would create"
    else:
        created_rule = await _timed(lk.sip.create_dispatch_rule(
            proto_sip.CreateSIPDispatchRuleRequest(dispatch_rule=desired_rule(plan, trunk_id))),
            timeout, "CreateSIPDispatchRule")
        rule_id, rule_action = created_rule.sip_dispatch_rule_id, "created"
    return Outcome(trunk_id, trunk_action, rule_id, rule_action)


# ------------------------------------------------------------------------------------------ command line


def _parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m telephony.setup_sip",
        description="Create or update (idempotently) the LiveKit inbound SIP trunk for the shop's "
                    "number and the dispatch rule that sends each caller to the agent.")
    p.add_argument("--number", action="append", default=None,
                   help="the shop's phone number in E.164 form, e.g. +15551234567 (repeat for several; "
                        "default: SIP_PHONE_NUMBER)")
    p.add_argument("--agent-name", default=(env.get("LIVEKIT_AGENT_NAME") or "").strip() or DEFAULT_AGENT_NAME,
                   help="agent to dispatch (default: LIVEKIT_AGENT_NAME or %(default)s)")
    p.add_argument("--trunk-name", default=DEFAULT_TRUNK_NAME)
    p.add_argument("--rule-name", default=DEFAULT_RULE_NAME)
    p.add_argument("--room-prefix", default=DEFAULT_ROOM_PREFIX,
                   help="each caller's room is named <prefix><caller number>_<random> (default %(default)s)")
    p.add_argument("--allowed-address", action="append", default=[],
                   help="only accept SIP traffic from this IP/CIDR (your carrier's); repeatable")
    p.add_argument("--no-krisp", action="store_true", help="turn off Krisp noise cancellation on the line")
    p.add_argument("--hide-phone-number", action="store_true",
                   help="hide the caller's number from the room (the agent then cannot read it back)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per API call")
    p.add_argument("--dry-run", action="store_true", help="list and print what would change; write nothing")
    return p


def _check_number(n: str) -> str:
    n = n.strip().replace(" ", "").replace("-", "")
    if not (n.startswith("+") and n[1:].isdigit() and 8 <= len(n) <= 16):
        raise SetupError(f"phone number {n!r} must be in E.164 form, e.g. +15551234567")
    return n


async def run(argv: list[str], env: Mapping[str, str]) -> int:
    args = _parser(env).parse_args(argv)
    try:
        raw_numbers = args.number or [x for x in (env.get("SIP_PHONE_NUMBER") or "").split(",") if x.strip()]
        if not raw_numbers:
            raise SetupError("no phone number: pass --number +15551234567 or set SIP_PHONE_NUMBER")
        missing = [n for n in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET") if not (env.get(n) or "").strip()]
        if missing:
            raise SetupError(f"{', '.join(missing)} not set: LiveKit Cloud dashboard > Settings > API Keys "
                             "(and the project URL, wss://<project>.livekit.cloud)")
        plan = Plan(
            numbers=tuple(dict.fromkeys(_check_number(n) for n in raw_numbers)),
            agent_name=args.agent_name.strip(),
            trunk_name=args.trunk_name,
            rule_name=args.rule_name,
            room_prefix=args.room_prefix,
            allowed_addresses=tuple(args.allowed_address),
            krisp=not args.no_krisp,
            hide_phone_number=args.hide_phone_number,
        )
        lk = api.LiveKitAPI(env["LIVEKIT_URL"].strip(), env["LIVEKIT_API_KEY"].strip(),
                            env["LIVEKIT_API_SECRET"].strip(), failover=False)
        try:
            out = await apply(lk, plan, dry_run=args.dry_run, timeout=args.timeout)
        finally:
            await lk.aclose()
    except SetupError as e:
        print(f"❌ {e}", file=sys.stderr)
        return 1
    except api.ServerError as e:
        hint = ""
        if e.status == 401:
            hint = (" LIVEKIT_API_KEY / LIVEKIT_API_SECRET were rejected: copy both from the same "
                    "project as LIVEKIT_URL (LiveKit Cloud dashboard > Settings > API Keys).")
        elif e.status == 403:
            hint = " This API key lacks SIP admin permission: use a key with full permissions."
        print(f"❌ LiveKit refused the request: {e.code} {e.message} (HTTP {e.status}).{hint}", file=sys.stderr)
        return 1
    except (aiohttp.ClientError, OSError) as e:
        print(f"❌ Could not reach LiveKit at {env.get('LIVEKIT_URL')}: {type(e).__name__}: {e}. "
              "Check LIVEKIT_URL (wss://<project>.livekit.cloud) and your network.", file=sys.stderr)
        return 1

    mark = "📝" if args.dry_run else "✅"
    print(f"{mark} Inbound trunk {out.trunk_id or '(new)'} for {', '.join(plan.numbers)}: {out.trunk_action}")
    print(f"{mark} Dispatch rule {out.rule_id or '(new)'}: each caller in their own room "
          f"'{plan.room_prefix}<caller>_<random>', agent '{plan.agent_name}': {out.rule_action}")
    if args.dry_run:
        print("Dry run: nothing was written.")
    else:
        print(f"Calls to {', '.join(plan.numbers)} now reach workers registered as '{plan.agent_name}' "
              "(the carrier must send them to your LiveKit SIP URI).")
    return 0


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    if env is None:
        try:
            from dotenv import load_dotenv

            load_dotenv()
        except ImportError:
            pass
        env = os.environ
    return asyncio.run(run(sys.argv[1:] if argv is None else argv, env))


if __name__ == "__main__":
    sys.exit(main())
