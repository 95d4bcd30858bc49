"""telephony/dispatch.py (the README's "send a test call to a dev worker") against the local
LiveKit API stand-in: the dispatch it creates, the join link it prints, and each failure named."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import jwt
import pytest

from telephony import dispatch
from tests.fakes.livekit_api import FakeLiveKit
from tests.fakes.providers import closed_port_url


@pytest.fixture
def lk():
    with FakeLiveKit() as fake:
        yield fake


def env_for(lk: FakeLiveKit, **extra: str) -> dict[str, str]:
    return {"LIVEKIT_URL": lk.url, "LIVEKIT_API_KEY": lk.api_key, "LIVEKIT_API_SECRET": lk.api_secret, **extra}


def run(argv: list[str], env: dict[str, str]) -> int:
    return dispatch.main(argv, env)


def test_dispatches_the_named_agent_and_prints_a_link_that_joins_that_room(lk, capsys):
    assert run(["--agent-name", "equipment-rental-dev", "--room", "test-call-1", "--caller", "+1 555 123 4567"],
               env_for(lk)) == 0
    [made] = lk.dispatches
    assert (made.agent_name, made.room) == ("equipment-rental-dev", "test-call-1")
    [call] = lk.calls("CreateDispatch")
    assert call.claims["video"]["roomAdmin"] and call.claims["video"]["room"] == "test-call-1"

    out = capsys.readouterr().out
    assert "✅ Dispatched agent 'equipment-rental-dev' to room 'test-call-1'" in out
    link = next(word for word in out.split() if word.startswith(dispatch.MEET_URL))
    query = parse_qs(urlparse(link).query)
    assert query["liveKitUrl"] == [lk.url.replace("http://", "ws://")]
    claims = jwt.decode(query["token"][0], lk.api_secret, algorithms=["HS256"], options={"verify_aud": False})
    assert claims["iss"] == lk.api_key and claims["sub"] == "developer"
    video = claims["video"]
    assert video["roomJoin"] and video["room"] == "test-call-1"  # that room only, no admin rights
    assert not any(video.get(g) for g in ("roomAdmin", "roomCreate", "roomList", "agent"))
    assert claims["attributes"] == {"sip.phoneNumber": "+15551234567"}
    assert lk.api_secret not in out


def test_a_room_is_made_up_when_not_given(lk):
    assert run(["--agent-name", "equipment-rental-dev"], env_for(lk)) == 0
    assert lk.dispatches[0].room.startswith("test-call-")


@pytest.mark.parametrize("argv,env_change,words", [
    (["--agent-name", "bad name!"], {}, "--agent-name must be"),
    (["--agent-name", "dev", "--caller", "555"], {}, "--caller must be"),
    (["--agent-name", "dev"], {"LIVEKIT_API_SECRET": ""}, "LIVEKIT_API_SECRET is not set"),
    (["--agent-name", "dev"], {"LIVEKIT_API_SECRET": "wrong-secret-0123456789abcdef0123456789"}, "rejected"),
])
def test_each_problem_is_named_and_nothing_is_dispatched(lk, capsys, argv, env_change, words):
    assert run(argv, {**env_for(lk), **env_change}) == 1
    assert words in capsys.readouterr().err
    assert lk.dispatches == []


def test_an_unreachable_server_is_named(capsys):
    env = {"LIVEKIT_URL": closed_port_url(), "LIVEKIT_API_KEY": "APIkey", "LIVEKIT_API_SECRET": "s" * 40}
    assert run(["--agent-name", "dev", "--timeout", "3"], env) == 1
    assert "Could not reach LiveKit" in capsys.readouterr().err
