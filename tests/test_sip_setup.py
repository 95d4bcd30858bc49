"""telephony/setup_sip.py against the local LiveKit API stand-in: the requests it sends, and
that running it again changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from google.protobuf import json_format
from livekit.protocol import agent_dispatch, room, sip

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


def test_creates_trunk_and_individual_rule_dispatching_the_agent(lk, capsys):
    assert setup_sip.main(["--number", NUMBER], env_for(lk)) == 0

    assert methods(lk) == ["ListSIPInboundTrunk", "CreateSIPInboundTrunk",
                           "ListSIPDispatchRule", "CreateSIPDispatchRule"]
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
    assert [a.agent_name for a in rule.room_config.agents] == ["equipment-rental"]

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


def test_agent_name_from_env_and_rename_updates_the_same_rule(lk):
    assert setup_sip.main(["--number", NUMBER], env_for(lk)) == 0
    (rule_id,) = lk.rules
    lk.requests.clear()

    assert setup_sip.main(["--number", NUMBER], env_for(lk, LIVEKIT_AGENT_NAME="rental-staging")) == 0
    assert methods(lk) == ["ListSIPInboundTrunk", "ListSIPDispatchRule", "UpdateSIPDispatchRule"]
    update = lk.calls("UpdateSIPDispatchRule")[0].message
    assert update.sip_dispatch_rule_id == rule_id
    assert [a.agent_name for a in update.replace.room_config.agents] == ["rental-staging"]
    assert [a.agent_name for a in the_rule(lk).room_config.agents] == ["rental-staging"]
    assert len(lk.trunks) == 1


def test_adopts_existing_trunk_and_rule_keeping_what_it_does_not_manage(lk):
    trunk = sip.SIPInboundTrunkInfo(sip_trunk_id="ST_old", name="Twilio", numbers=[NUMBER],
                                    auth_username="carrier", auth_password="s3cret")
    lk.trunks["ST_old"] = trunk
    lk.rules["SDR_old"] = sip.SIPDispatchRuleInfo(
        sip_dispatch_rule_id="SDR_old", name="old rule", trunk_ids=["ST_old"], metadata='{"shop": 1}',
        rule=sip.SIPDispatchRule(dispatch_rule_direct=sip.SIPDispatchRuleDirect(room_name="lobby")),
        room_config=room.RoomConfiguration(
            agents=[agent_dispatch.RoomAgentDispatch(agent_name="old-bot")]))

    assert setup_sip.main(["--number", NUMBER], env_for(lk)) == 0

    assert methods(lk) == ["ListSIPInboundTrunk", "UpdateSIPInboundTrunk",
                           "ListSIPDispatchRule", "UpdateSIPDispatchRule"]
    assert list(lk.trunks) == ["ST_old"]
    t = lk.trunks["ST_old"]
    assert t.name == setup_sip.DEFAULT_TRUNK_NAME and list(t.numbers) == [NUMBER]
    assert (t.auth_username, t.auth_password) == ("carrier", "s3cret")

    assert list(lk.rules) == ["SDR_old"]
    r = lk.rules["SDR_old"]
    assert r.rule.WhichOneof("rule") == "dispatch_rule_individual"
    assert [a.agent_name for a in r.room_config.agents] == ["equipment-rental"]
    assert list(r.trunk_ids) == ["ST_old"] and r.metadata == '{"shop": 1}'

    lk.requests.clear()
    assert setup_sip.main(["--number", NUMBER], env_for(lk)) == 0
    assert lk.writes() == []


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
    assert setup_sip.main(["--number", "5551234"], env_for(lk)) == 1
    assert "E.164" in capsys.readouterr().err
    assert setup_sip.main([], env_for(lk, SIP_PHONE_NUMBER=NUMBER)) == 0
    assert list(next(iter(lk.trunks.values())).numbers) == [NUMBER]
    assert lk.requests, "nothing was sent"


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
    assert [a.agent_name for a in rule.room_config.agents] == [setup_sip.DEFAULT_AGENT_NAME]
    assert rule.name == setup_sip.DEFAULT_RULE_NAME

    trunk_req = json_format.Parse((ROOT / "telephony/inbound-trunk.json").read_text(),
                                  sip.CreateSIPInboundTrunkRequest())
    assert trunk_req.trunk.name == setup_sip.DEFAULT_TRUNK_NAME
    assert all(n.startswith("+") for n in trunk_req.trunk.numbers)


def test_default_agent_name_matches_the_worker():
    import agent

    assert setup_sip.DEFAULT_AGENT_NAME == agent.DEFAULT_AGENT_NAME
    assert json.loads((ROOT / "telephony/dispatch-rule.json").read_text())[
        "dispatch_rule"]["roomConfig"]["agents"][0]["agentName"] == agent.DEFAULT_AGENT_NAME
