"""Create or update, idempotently, the LiveKit SIP side of the shop's phone line.

    python -m telephony.setup_sip --number +15551234567            # apply
    python -m telephony.setup_sip --number +15551234567 --dry-run  # show what would change
    python -m telephony.setup_sip --number +15551234567 --agent-name equipment-rental --yes
                                                                   # point the line at an agent

It makes sure that, in the LiveKit project named by LIVEKIT_URL / LIVEKIT_API_KEY /
LIVEKIT_API_SECRET:

1. an **inbound trunk** accepts calls to the shop's number (found by the number, or by
   --trunk-name; created when missing, its name/numbers/allowed addresses updated when different);
2. a **dispatch rule** on that trunk puts **each caller in their own room** (an individual rule,
   rooms named ``<room-prefix><caller number>_<random>``) and **dispatches an agent by name**
   (``roomConfig.agents[].agentName``), which is what the worker registers with. A rule already on
   the trunk (or with --rule-name) is updated in place; nothing is duplicated.

Which agent answers the phone is never changed by accident:
- an existing rule keeps the agent it dispatches unless --agent-name is given;
- a change of agent is shown as a diff line and is applied only with --yes (without it, nothing at
  all is written and the command exits 1);
- LIVEKIT_AGENT_NAME is never read here: it names the worker on *this* machine (a developer's
  laptop sets it to ``equipment-rental-dev``), not where the shop's number goes. A new rule
  dispatches --agent-name, or settings.DEFAULT_AGENT_NAME.

Everything is listed first and planned; only then is anything written. Running it again with the
same arguments changes nothing (it only lists). It prints one line per object and exits 0, or
prints what went wrong and exits 1.

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
from typing import Any, Awaitable, Callable, Mapping, Sequence, TypeVar

import aiohttp
from livekit import api
from livekit.protocol import agent_dispatch as proto_dispatch
from livekit.protocol import sip as proto_sip

import phone
import settings

DEFAULT_TRUNK_NAME = "equipment-rental inbound"
DEFAULT_RULE_NAME = "equipment-rental: each caller to the agent"
DEFAULT_ROOM_PREFIX = "call-"
DEFAULT_TIMEOUT = 10.0
NEW = "(new)"  # the trunk ID in a plan, before the trunk is created

T = TypeVar("T")
M = TypeVar("M")


class SetupError(Exception):
    """A problem the person running the command must fix; the message says how."""


@dataclass(frozen=True)
class Plan:
    numbers: tuple[str, ...]
    agent_name: str | None  # None: an existing rule keeps its agents; a new one gets the default
    trunk_name: str
    rule_name: str
    room_prefix: str
    allowed_addresses: tuple[str, ...] = ()
    krisp: bool = True
    hide_phone_number: bool = False

    @property
    def new_rule_agent(self) -> str:
        return self.agent_name or settings.DEFAULT_AGENT_NAME


@dataclass(frozen=True)
class Kind:
    """What reconcile needs to know about one kind of SIP object."""

    rpc: str  # for messages: Create<rpc>, Update<rpc>
    id_field: str
    create: Callable[[api.LiveKitAPI, Any], Awaitable[Any]]
    update: Callable[[api.LiveKitAPI, str, Any], Awaitable[Any]]


TRUNK = Kind("SIPInboundTrunk", "sip_trunk_id",
             lambda lk, t: lk.sip.create_inbound_trunk(proto_sip.CreateSIPInboundTrunkRequest(trunk=t)),
             lambda lk, id_, t: lk.sip.update_inbound_trunk(id_, t))
RULE = Kind("SIPDispatchRule", "sip_dispatch_rule_id",
            lambda lk, r: lk.sip.create_dispatch_rule(proto_sip.CreateSIPDispatchRuleRequest(dispatch_rule=r)),
            lambda lk, id_, r: lk.sip.update_dispatch_rule(id_, r))


@dataclass
class Change:
    """One object reconciled: what is there, what we want, and how they differ."""

    kind: Kind
    current: Any | None
    desired: Any
    diffs: list[str]
    agent_change: str = ""  # the diff line that changes which agent answers, if any

    @property
    def current_id(self) -> str:
        return getattr(self.current, self.kind.id_field) if self.current is not None else ""


@dataclass
class Outcome:
    trunk_id: str
    trunk_action: str  # created | updated: ... | unchanged | would create | would update: ...
    rule_id: str
    rule_action: str
    agents: list[str]  # what the rule dispatches once applied
    notes: list[str]
    needs_yes: str = ""  # set when nothing was written: the agent change that --yes would apply


# ------------------------------------------------------------------------------------------ desired state


def desired_trunk(plan: Plan, base: proto_sip.SIPInboundTrunkInfo | None = None) -> proto_sip.SIPInboundTrunkInfo:
    """The trunk we want; built from the current one, it keeps what we don't manage (auth,
    headers, media settings) and changes what we do, in one write."""
    trunk = proto_sip.SIPInboundTrunkInfo()
    if base is not None:
        trunk.CopyFrom(base)
    trunk.name = plan.trunk_name
    del trunk.numbers[:]
    trunk.numbers.extend(plan.numbers)
    del trunk.allowed_addresses[:]
    trunk.allowed_addresses.extend(plan.allowed_addresses)
    trunk.krisp_enabled = plan.krisp
    return trunk


def desired_rule(plan: Plan, trunk_id: str, base: proto_sip.SIPDispatchRuleInfo | None = None
                 ) -> proto_sip.SIPDispatchRuleInfo:
    """The rule we want; fields we don't manage (metadata, attributes, ...) are kept from base.
    Its agents are base's unless the plan names one (then only that one: a second agent in the
    room would talk over it)."""
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
    name = plan.agent_name if base is not None else plan.new_rule_agent
    if name is not None:
        ours = [a for a in rule.room_config.agents if a.agent_name == name][:1] or [
            proto_dispatch.RoomAgentDispatch(agent_name=name)]
        del rule.room_config.agents[:]
        rule.room_config.agents.extend(ours)
    return rule


def trunk_differs(cur: proto_sip.SIPInboundTrunkInfo, want: proto_sip.SIPInboundTrunkInfo) -> list[str]:
    diffs = []
    if cur.name != want.name:
        diffs.append(f"name {cur.name!r} -> {want.name!r}")
    if sorted(cur.numbers) != sorted(want.numbers):
        diffs.append(f"numbers {list(cur.numbers)} -> {list(want.numbers)}")
    if sorted(cur.allowed_addresses) != sorted(want.allowed_addresses):
        diffs.append(f"allowed addresses {list(cur.allowed_addresses)} -> {list(want.allowed_addresses)}")
    if cur.krisp_enabled != want.krisp_enabled:
        diffs.append(f"krisp {cur.krisp_enabled} -> {want.krisp_enabled}")
    return diffs


def agents_of(rule: proto_sip.SIPDispatchRuleInfo) -> list[str]:
    return [a.agent_name for a in rule.room_config.agents]


def agents_diff(cur: proto_sip.SIPDispatchRuleInfo, want: proto_sip.SIPDispatchRuleInfo) -> str:
    return "" if agents_of(cur) == agents_of(want) else f"agents {agents_of(cur)} -> {agents_of(want)}"


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
    if agents_diff(cur, want):
        diffs.append(agents_diff(cur, want))
    if cur.hide_phone_number != want.hide_phone_number:
        diffs.append(f"hide_phone_number {cur.hide_phone_number} -> {want.hide_phone_number}")
    if cur.krisp_enabled != want.krisp_enabled:
        diffs.append(f"krisp {cur.krisp_enabled} -> {want.krisp_enabled}")
    return diffs


# ------------------------------------------------------------------------------------------ plan


def find_one(candidates: Sequence[M], id_of: Callable[[M], str], describe: Callable[[M], str],
             what: str, delete: str) -> M | None:
    """The one existing object that matches, None if none does; several is an error, not a guess."""
    if len({id_of(c) for c in candidates}) > 1:
        listed = ", ".join(f"{id_of(c)} ({describe(c)})" for c in candidates)
        raise SetupError(f"several {what}: {listed}. Delete the extra ones ({delete} <id>) and run again.")
    return candidates[0] if candidates else None


def plan_changes(plan: Plan, trunks: Sequence[proto_sip.SIPInboundTrunkInfo],
                 rules: Sequence[proto_sip.SIPDispatchRuleInfo]) -> tuple[Change, Change]:
    by_number = [t for t in trunks if set(t.numbers) & set(plan.numbers)]
    trunk = find_one(by_number or [t for t in trunks if t.name == plan.trunk_name],
                     lambda t: t.sip_trunk_id, lambda t: f"{t.name!r}, {list(t.numbers)}",
                     f"inbound trunks match {list(plan.numbers)} / {plan.trunk_name!r}", "lk sip inbound delete")
    want_trunk = desired_trunk(plan, trunk)
    trunk_change = Change(TRUNK, trunk, want_trunk, trunk_differs(trunk, want_trunk) if trunk else [])

    trunk_id = trunk.sip_trunk_id if trunk else ""
    named = [r for r in rules if r.name == plan.rule_name]
    on_trunk = [r for r in rules if trunk_id and trunk_id in r.trunk_ids]
    rule = find_one(named or on_trunk, lambda r: r.sip_dispatch_rule_id, lambda r: repr(r.name),
                    f"dispatch rules match trunk {trunk_id or NEW} / {plan.rule_name!r}", "lk sip dispatch delete")
    want_rule = desired_rule(plan, trunk_id or NEW, base=rule)  # NEW: replaced once the trunk exists
    rule_change = Change(RULE, rule, want_rule, rule_differs(rule, want_rule) if rule else [],
                         agent_change=agents_diff(rule, want_rule) if rule else "")
    return trunk_change, rule_change


# ------------------------------------------------------------------------------------------ apply


async def _timed(aw: Awaitable[T], timeout: float, what: str) -> T:
    # livekit-api's own ClientTimeout does not bound a request (it passes timeout=None per call),
    # so every call is bounded here.
    try:
        return await asyncio.wait_for(aw, timeout)
    except asyncio.TimeoutError:
        raise SetupError(f"LiveKit did not answer {what} within {timeout:g}s: check LIVEKIT_URL "
                         "and your network") from None


async def reconcile(lk: api.LiveKitAPI, change: Change, *, dry_run: bool, timeout: float) -> tuple[str, str]:
    """Creates, updates or leaves one object as planned: (its ID, what was done)."""
    if change.current is not None and not change.diffs:
        return change.current_id, "unchanged"
    if dry_run:
        if change.current is None:
            return "", "would create"
        return change.current_id, "would update: " + "; ".join(change.diffs)
    if change.current is not None:
        await _timed(change.kind.update(lk, change.current_id, change.desired), timeout, f"Update{change.kind.rpc}")
        return change.current_id, "updated: " + "; ".join(change.diffs)
    created = await _timed(change.kind.create(lk, change.desired), timeout, f"Create{change.kind.rpc}")
    return getattr(created, change.kind.id_field), "created"


async def apply(lk: api.LiveKitAPI, plan: Plan, *, dry_run: bool = False, yes: bool = False,
                timeout: float = DEFAULT_TIMEOUT) -> Outcome:
    """Lists, plans, then writes. A plan that changes the agent an existing rule dispatches is
    only shown (nothing at all is written) unless `yes`: see Outcome.needs_yes."""
    listed_trunks = await _timed(lk.sip.list_inbound_trunk(proto_sip.ListSIPInboundTrunkRequest()), timeout,
                                 "ListSIPInboundTrunk")
    listed_rules = await _timed(lk.sip.list_dispatch_rule(proto_sip.ListSIPDispatchRuleRequest()), timeout,
                                "ListSIPDispatchRule")
    trunk_change, rule_change = plan_changes(plan, list(listed_trunks.items), list(listed_rules.items))

    needs_yes = f"dispatch rule {rule_change.current_id} {rule_change.agent_change}" \
        if rule_change.agent_change and not yes else ""
    dry_run = dry_run or bool(needs_yes)
    notes = []
    if rule_change.current is not None and not agents_of(rule_change.desired):
        notes.append(f"dispatch rule {rule_change.current_id} dispatches no agent by name, so no named worker "
                     "gets these calls; pass --agent-name NAME --yes to choose one")

    trunk_id, trunk_action = await reconcile(lk, trunk_change, dry_run=dry_run, timeout=timeout)
    if trunk_change.current is None and trunk_id:  # the rule goes on the trunk just created
        del rule_change.desired.trunk_ids[:]
        rule_change.desired.trunk_ids.append(trunk_id)
        rule_change.diffs = [d.replace(NEW, trunk_id) for d in rule_change.diffs]
    rule_id, rule_action = await reconcile(lk, rule_change, dry_run=dry_run, timeout=timeout)
    return Outcome(trunk_id, trunk_action, rule_id, rule_action, agents_of(rule_change.desired), notes, needs_yes)


# ------------------------------------------------------------------------------------------ command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m telephony.setup_sip",
        description="Create or update (idempotently) the LiveKit inbound SIP trunk for the shop's "
                    "number and the dispatch rule that sends each caller to the agent.")
    p.add_argument("--number", action="append", default=None,
                   help="the shop's phone number in E.164 form, e.g. +15551234567 (repeat for several; "
                        "default: SIP_PHONE_NUMBER)")
    p.add_argument("--agent-name", default=None,
                   help="agent the phone line dispatches. Without it an existing rule keeps its agent and a new "
                        f"rule dispatches {settings.DEFAULT_AGENT_NAME!r}; LIVEKIT_AGENT_NAME is not used")
    p.add_argument("--yes", action="store_true",
                   help="apply a change of the agent an existing rule dispatches (shown first; refused without)")
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


def e164(raw: str) -> str:
    """The number without the separators people type; SetupError unless it is E.164 (phone.py's rule)."""
    try:
        return phone.normalise_e164(raw)
    except ValueError:
        raise SetupError(f"phone number {settings.shown(raw)} must be in E.164 form, e.g. +15551234567") from None


def agent_name_problem(name: str) -> str:
    """settings.py's rule for an agent name, applied to --agent-name."""
    return settings.agent_name_error(name, var="--agent-name")


def livekit_problems(env: Mapping[str, str]) -> list[str]:
    """settings.py's messages for LIVEKIT_URL / _API_KEY / _API_SECRET (missing or malformed)."""
    return settings.livekit_errors(env)


def make_plan(args: argparse.Namespace, env: Mapping[str, str]) -> Plan:
    raw_numbers = args.number or [x for x in (env.get("SIP_PHONE_NUMBER") or "").split(",") if x.strip()]
    if not raw_numbers:
        raise SetupError("no phone number: pass --number +15551234567 or set SIP_PHONE_NUMBER")
    agent_name = args.agent_name.strip() if args.agent_name is not None else None
    if agent_name is not None and agent_name_problem(agent_name):
        raise SetupError(agent_name_problem(agent_name))
    problems = livekit_problems(env)
    if problems:
        raise SetupError(" ".join(problems))
    return Plan(
        numbers=tuple(dict.fromkeys(e164(n) for n in raw_numbers)),
        agent_name=agent_name,
        trunk_name=args.trunk_name,
        rule_name=args.rule_name,
        room_prefix=args.room_prefix,
        allowed_addresses=tuple(args.allowed_address),
        krisp=not args.no_krisp,
        hide_phone_number=args.hide_phone_number,
    )


async def run(argv: list[str], env: Mapping[str, str]) -> int:
    args = _parser().parse_args(argv)
    url = (env.get("LIVEKIT_URL") or "").strip()
    try:
        plan = make_plan(args, env)
        lk = api.LiveKitAPI(url, env["LIVEKIT_API_KEY"].strip(), env["LIVEKIT_API_SECRET"].strip(), failover=False)
        try:
            out = await apply(lk, plan, dry_run=args.dry_run, yes=args.yes, timeout=args.timeout)
        finally:
            await lk.aclose()
    except SetupError as e:
        print(f"❌ {e}", file=sys.stderr)
        return 1
    except api.ServerError as e:
        hint = f" {e.message}" if e.status not in (401, 403) and e.message else ""
        if e.status == 401:
            hint = (" LIVEKIT_API_KEY / LIVEKIT_API_SECRET were rejected: copy both from the same "
                    f"project as LIVEKIT_URL ({settings.WHERE_TO_GET['LIVEKIT_API_KEY']}).")
        elif e.status == 403:
            hint = " This API key lacks SIP admin permission: use a key with full permissions."
        print(f"❌ LiveKit refused the request: {e.code} (HTTP {e.status}).{hint}", file=sys.stderr)
        return 1
    except (aiohttp.ClientError, OSError) as e:
        where = "the address in LIVEKIT_URL" if settings.looks_secret(url) else url
        print(f"❌ Could not reach LiveKit at {where}: {type(e).__name__}. Check LIVEKIT_URL "
              "(wss://<project>.livekit.cloud) and your network.", file=sys.stderr)
        return 1

    shown_only = args.dry_run or bool(out.needs_yes)
    mark = "📝" if shown_only else "✅"
    agents = ", ".join(repr(a) for a in out.agents) or "no agent"
    print(f"{mark} Inbound trunk {out.trunk_id or NEW} for {', '.join(plan.numbers)}: {out.trunk_action}")
    print(f"{mark} Dispatch rule {out.rule_id or NEW}: each caller in their own room "
          f"'{plan.room_prefix}<caller>_<random>', agent {agents}: {out.rule_action}")
    env_name = (env.get("LIVEKIT_AGENT_NAME") or "").strip()
    if env_name and plan.agent_name is None and [env_name] != out.agents:
        out.notes.append(f"LIVEKIT_AGENT_NAME={env_name!r} names the worker on this machine; it is not used here, "
                         f"so the line dispatches {agents}. If the shop's calls really should go to that worker: "
                         f"--agent-name {env_name} --yes")
    for note in out.notes:
        print(f"⚠️  {note}")
    if out.needs_yes and args.dry_run:
        print(f"⚠️  applying it needs --yes: it changes which agent answers the phone ({out.needs_yes})")
    elif out.needs_yes:
        print(f"❌ Not applied: this changes which agent answers the phone ({out.needs_yes}). Nothing was "
              "written. Run again with --yes to apply it.", file=sys.stderr)
        return 1
    if args.dry_run:
        print("Dry run: nothing was written.")
    else:
        print(f"Calls to {', '.join(plan.numbers)} now reach workers registered as {agents} "
              "(the carrier must send them to your LiveKit SIP URI).")
    return 0


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    if env is None:
        from dotenv import load_dotenv

        load_dotenv()
        env = os.environ
    return asyncio.run(run(sys.argv[1:] if argv is None else argv, env))


if __name__ == "__main__":
    sys.exit(main())
