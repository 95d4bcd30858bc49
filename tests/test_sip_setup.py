"""telephony/setup_sip.py against the local LiveKit API stand-in: the requests it sends, that
running it again changes nothing, and that the agent the shop's number reaches changes only when
named on the command line and confirmed with --yes (never from LIVEKIT_AGENT_NAME)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from google.protobuf import json_format
from livekit.protocol import agent_dispatch, room, sip

import phone
import settings
from telephony import setup_sip
from tests.fakes.livekit_api import FakeLiveKit

ROOT = Path(__file__).resolve().parents[1]
NUMBER = "+15551234567"


@pytest.fixture
def lk():
    with FakeLiveKit() as fake:
        yield fake


def env_for(lk: FakeLiveKit, **extra: str) -> dict[str, str]:
    return {"LIVEKIT_URL": lk.url, "LIVEKIT_API_KEY": lk.api_key, "LIVEKIT_API_SECRET": lk.api_secret, **extra}


def methods(lk: FakeLiveKit) -> list[str]:
    return [r.method.split("/")[1] for r in lk.requests]


def the_rule(lk: FakeLiveKit) -> sip.SIPDispatchRuleInfo:
    assert len(lk.rules) == 1, lk.rules
    return next(iter(lk.rules.values()))


def add_rule(lk: FakeLiveKit, agents: list[str], rule_id: str = "SDR_live", trunk_id: str = "ST_live",
             **fields) -> None:
    """A trunk for NUMBER and a rule on it dispatching `agents`: a line that is already live."""
    lk.trunks[trunk_id] = sip.SIPInboundTrunkInfo(sip_trunk_id=trunk_id, name=setup_sip.DEFAULT_TRUNK_NAME,
                                                  numbers=[NUMBER], krisp_enabled=True)
    lk.rules[rule_id] = sip.SIPDispatchRuleInfo(
        sip_dispatch_rule_id=rule_id, name=setup_sip.DEFAULT_RULE_NAME, trunk_ids=[trunk_id], krisp_enabled=True,
        rule=sip.SIPDispatchRule(dispatch_rule_individual=sip.SIPDispatchRuleIndividual(room_prefix="call-")),
        room_config=room.RoomConfiguration(agents=[agent_dispatch.RoomAgentDispatch(agent_name=a) for a in agents]),
        **fields)


def agents(rule: sip.SIPDispatchRuleInfo) -> list[str]:
    return [a.agent_name for a in rule.room_config.agents]


def test_creates_trunk_and_individual_rule_dispatching_the_agent(lk, capsys):
    assert setup_sip.main(["--number", NUMBER], env_for(lk)) == 0

    # everything is listed (and planned) before anything is written
    assert methods(lk) == ["ListSIPInboundTrunk", "ListSIPDispatchRule",
                           "CreateSIPInboundTrunk", "CreateSIPDispatchRule"]
    for r in lk.requests:  # protobuf bodies, signed with our secret, with the SIP admin grant
        assert r.headers["content-type"] == "application/protobuf"
        assert r.claims["iss"] == lk.api_key and r.claims["sip"]["admin"] is True

    create_trunk = lk.calls("CreateSIPInboundTrunk")[0].message
    assert list(create_trunk.trunk.numbers) == [NUMBER]
    assert create_trunk.trunk.name == setup_sip.DEFAULT_TRUNK_NAME
    (trunk_id,) = lk.trunks

    create_rule = lk.calls("CreateSIPDispatchRule")[0].message
    rule = create_rule.dispatch_rule
    assert rule.rule.WhichOneof("rule") == "dispatch_rule_individual"
    assert rule.rule.dispatch_rule_individual.room_prefix == "call-"
    assert list(rule.trunk_ids) == [trunk_id]
    assert agents(rule) == [settings.DEFAULT_AGENT_NAME]

    out = capsys.readouterr().out
    assert "created" in out and NUMBER in out and "equipment-rental" in out


def test_second_run_only_lists(lk, capsys):
    env = env_for(lk)
    assert setup_sip.main(["--number", NUMBER], env) == 0
    trunks, rules = dict(lk.trunks), dict(lk.rules)
    lk.requests.clear()

    assert setup_sip.main(["--number", NUMBER], env) == 0
    assert methods(lk) == ["ListSIPInboundTrunk", "ListSIPDispatchRule"]
    assert lk.trunks == trunks and lk.rules == rules
    assert capsys.readouterr().out.count("unchanged") == 2


# ------------------------------------------------------------------------------------------ which agent answers


def test_env_agent_name_never_retargets_the_live_rule(lk, capsys):
    """Issue 11: a developer's LIVEKIT_AGENT_NAME=equipment-rental-dev used to move the shop's line
    to their laptop."""
    add_rule(lk, ["equipment-rental"])
    before = dict(lk.rules)

    assert setup_sip.main(["--number", NUMBER], env_for(lk, LIVEKIT_AGENT_NAME="equipment-rental-dev")) == 0
    assert lk.writes() == [] and lk.rules == before
    assert agents(the_rule(lk)) == ["equipment-rental"]
    out = capsys.readouterr().out
    assert "unchanged" in out and "agent 'equipment-rental'" in out
    assert "LIVEKIT_AGENT_NAME='equipment-rental-dev'" in out and "not used" in out


def test_env_agent_name_is_not_used_for_a_new_rule_either(lk, capsys):
    assert setup_sip.main(["--number", NUMBER], env_for(lk, LIVEKIT_AGENT_NAME="equipment-rental-dev")) == 0
    assert agents(the_rule(lk)) == [settings.DEFAULT_AGENT_NAME]
    assert "not used" in capsys.readouterr().out


def test_changing_the_agent_shows_the_diff_and_needs_yes(lk, capsys):
    add_rule(lk, ["equipment-rental"])
    before_rules, before_trunks = dict(lk.rules), dict(lk.trunks)
    # a trunk change is pending too: nothing at all is written, not even that
    argv = ["--number", NUMBER, "--agent-name", "rental-staging", "--allowed-address", "203.0.113.0/24"]

    assert setup_sip.main(argv, env_for(lk)) == 1
    assert lk.writes() == [] and lk.rules == before_rules and lk.trunks == before_trunks
    captured = capsys.readouterr()
    diff = "agents ['equipment-rental'] -> ['rental-staging']"
    assert diff in captured.out and "would update" in captured.out  # what would change
    assert "Not applied" in captured.err and diff in captured.err and "--yes" in captured.err
    assert "Nothing was written" in captured.err

    lk.requests.clear()
    assert setup_sip.main(argv + ["--yes"], env_for(lk)) == 0
    assert methods(lk) == ["ListSIPInboundTrunk", "ListSIPDispatchRule",
                           "UpdateSIPInboundTrunk", "UpdateSIPDispatchRule"]
    update = lk.calls("UpdateSIPDispatchRule")[0].message
    assert update.sip_dispatch_rule_id == "SDR_live"
    assert agents(update.replace) == ["rental-staging"] and agents(the_rule(lk)) == ["rental-staging"]
    assert diff in capsys.readouterr().out
    assert len(lk.trunks) == 1


def test_same_agent_on_the_command_line_needs_no_yes(lk, capsys):
    add_rule(lk, ["equipment-rental"])
    assert setup_sip.main(["--number", NUMBER, "--agent-name", "equipment-rental"], env_for(lk)) == 0
    assert lk.writes() == []
    assert capsys.readouterr().out.count("unchanged") == 2


def test_dry_run_shows_an_agent_change_and_says_it_needs_yes(lk, capsys):
    add_rule(lk, ["equipment-rental"])
    assert setup_sip.main(["--number", NUMBER, "--agent-name", "other", "--dry-run"], env_for(lk)) == 0
    assert lk.writes() == []
    out = capsys.readouterr().out
    assert "would update: agents ['equipment-rental'] -> ['other']" in out
    assert "needs --yes" in out and "nothing was written" in out


def test_rule_dispatching_no_agent_is_left_alone_and_flagged(lk, capsys):
    add_rule(lk, [])
    assert setup_sip.main(["--number", NUMBER], env_for(lk)) == 0
    assert lk.writes() == [] and agents(the_rule(lk)) == []
    out = capsys.readouterr().out
    assert "agent no agent" in out and "dispatches no agent by name" in out and "--agent-name" in out


def test_bad_agent_name_is_refused(lk, capsys):
    assert setup_sip.main(["--number", NUMBER, "--agent-name", "rental staging!"], env_for(lk)) == 1
    assert "--agent-name" in capsys.readouterr().err and lk.requests == []


def test_adopts_existing_trunk_and_rule_keeping_what_it_does_not_manage(lk, capsys):
    trunk = sip.SIPInboundTrunkInfo(sip_trunk_id="ST_old", name="Twilio", numbers=[NUMBER],
                                    auth_username="carrier", auth_password="s3cret")
    lk.trunks["ST_old"] = trunk
    lk.rules["SDR_old"] = sip.SIPDispatchRuleInfo(
        sip_dispatch_rule_id="SDR_old", name="old rule", trunk_ids=["ST_old"], metadata='{"shop": 1}',
        rule=sip.SIPDispatchRule(dispatch_rule_direct=sip.SIPDispatchRuleDirect(room_name="lobby")),
        room_config=room.RoomConfiguration(
            agents=[agent_dispatch.RoomAgentDispatch(agent_name="old-bot")]))

    assert setup_sip.main(["--number", NUMBER], env_for(lk)) == 0

    assert methods(lk) == ["ListSIPInboundTrunk", "ListSIPDispatchRule",
                           "UpdateSIPInboundTrunk", "UpdateSIPDispatchRule"]
    assert list(lk.trunks) == ["ST_old"]
    t = lk.trunks["ST_old"]
    assert t.name == setup_sip.DEFAULT_TRUNK_NAME and list(t.numbers) == [NUMBER]
    assert (t.auth_username, t.auth_password) == ("carrier", "s3cret")

    assert list(lk.rules) == ["SDR_old"]
    r = lk.rules["SDR_old"]
    assert r.rule.WhichOneof("rule") == "dispatch_rule_individual"
    assert agents(r) == ["old-bot"]  # who answers is not ours to change without --agent-name
    assert list(r.trunk_ids) == ["ST_old"] and r.metadata == '{"shop": 1}'

    lk.requests.clear()
    assert setup_sip.main(["--number", NUMBER], env_for(lk)) == 0
    assert lk.writes() == []

    argv = ["--number", NUMBER, "--agent-name", settings.DEFAULT_AGENT_NAME]
    assert setup_sip.main(argv, env_for(lk)) == 1 and lk.writes() == []
    assert setup_sip.main(argv + ["--yes"], env_for(lk)) == 0
    assert agents(lk.rules["SDR_old"]) == [settings.DEFAULT_AGENT_NAME]
    assert lk.rules["SDR_old"].metadata == '{"shop": 1}'
    assert "agents ['old-bot'] -> ['equipment-rental']" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ the rest


def test_dry_run_writes_nothing(lk, capsys):
    assert setup_sip.main(["--number", NUMBER, "--dry-run"], env_for(lk)) == 0
    assert lk.writes() == [] and not lk.trunks and not lk.rules
    out = capsys.readouterr().out
    assert out.count("would create") == 2 and "nothing was written" in out


def test_two_trunks_with_the_number_is_an_error_not_a_guess(lk, capsys):
    for tid in ("ST_a", "ST_b"):
        lk.trunks[tid] = sip.SIPInboundTrunkInfo(sip_trunk_id=tid, numbers=[NUMBER], allowed_addresses=[tid])
    assert setup_sip.main(["--number", NUMBER], env_for(lk)) == 1
    assert lk.writes() == []
    err = capsys.readouterr().err
    assert "ST_a" in err and "ST_b" in err and "Delete" in err


def test_bad_secret_fails_with_a_fix_and_writes_nothing(lk, capsys):
    env = env_for(lk, LIVEKIT_API_SECRET="not-the-secret-" + "x" * 30)
    assert setup_sip.main(["--number", NUMBER], env) == 1
    assert [r.status for r in lk.requests] == [401]
    err = capsys.readouterr().err
    assert "LIVEKIT_API_SECRET" in err and "rejected" in err


def test_hanging_server_is_bounded_by_timeout(lk, capsys):
    lk.mode = "hang"
    t0 = time.monotonic()
    assert setup_sip.main(["--number", NUMBER, "--timeout", "0.5"], env_for(lk)) == 1
    assert time.monotonic() - t0 < 10
    assert "did not answer" in capsys.readouterr().err


def test_number_required_and_validated(lk, capsys):
    assert setup_sip.main([], env_for(lk)) == 1
    assert "--number" in capsys.readouterr().err
    for bad in ("5551234", "+0551234567", "+1555", "tel:+15551234567"):
        assert setup_sip.main(["--number", bad], env_for(lk)) == 1, bad
        assert "E.164" in capsys.readouterr().err
    assert lk.requests == []
    assert setup_sip.main(["--number", "+1 555-123-4567"], env_for(lk)) == 0  # separators people type
    assert list(next(iter(lk.trunks.values())).numbers) == [NUMBER]
    lk.requests.clear()
    assert setup_sip.main([], env_for(lk, SIP_PHONE_NUMBER=NUMBER)) == 0
    assert methods(lk) == ["ListSIPInboundTrunk", "ListSIPDispatchRule"]


@pytest.mark.parametrize("var", ["LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"])
def test_missing_livekit_variable_uses_the_settings_message(lk, capsys, var):
    env = {k: v for k, v in env_for(lk).items() if k != var}
    assert setup_sip.main(["--number", NUMBER], env) == 1
    err = capsys.readouterr().err
    assert f"{var} is not set" in err and settings.WHERE_TO_GET[var] in err
    assert lk.requests == []


def test_malformed_livekit_url(lk, capsys):
    assert setup_sip.main(["--number", NUMBER], env_for(lk, LIVEKIT_URL="shop.livekit.cloud")) == 1
    assert "LIVEKIT_URL must start with wss://" in capsys.readouterr().err
    assert lk.requests == []


def test_documented_command_runs_as_a_module(lk):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "SIP_"))}
    env.update(env_for(lk))
    proc = subprocess.run([sys.executable, "-m", "telephony.setup_sip", "--number", NUMBER],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert len(lk.trunks) == 1 and len(lk.rules) == 1


def test_lk_cli_json_files_match_the_setup_command():
    rule_req = json_format.Parse((ROOT / "telephony/dispatch-rule.json").read_text(),
                                 sip.CreateSIPDispatchRuleRequest())
    rule = rule_req.dispatch_rule
    assert rule.rule.dispatch_rule_individual.room_prefix == setup_sip.DEFAULT_ROOM_PREFIX
    assert agents(rule) == [settings.DEFAULT_AGENT_NAME]
    assert rule.name == setup_sip.DEFAULT_RULE_NAME

    trunk_req = json_format.Parse((ROOT / "telephony/inbound-trunk.json").read_text(),
                                  sip.CreateSIPInboundTrunkRequest())
    assert trunk_req.trunk.name == setup_sip.DEFAULT_TRUNK_NAME
    assert all(phone.is_e164(n) for n in trunk_req.trunk.numbers)
