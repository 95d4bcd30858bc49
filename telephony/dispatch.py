"""Send a test call to a worker: dispatch the agent, by its name, into a new room, and print a link
that joins that room from a browser so you can talk to it.

    python -m telephony.dispatch --agent-name equipment-rental-dev
    python -m telephony.dispatch --agent-name equipment-rental-dev --caller +15551234567

A worker with an agent name (this one always has one) gets only the calls dispatched to it by that
name: the phone line's SIP dispatch rule does it for callers, and this command does it for a test,
like `lk dispatch create --agent-name <name> --room <room>`. Run `make dev` (LIVEKIT_AGENT_NAME set
to a development name) in one terminal and this in another, with the same LIVEKIT_URL /
LIVEKIT_API_KEY / LIVEKIT_API_SECRET (.env is read). The worker logs `received job request` and the
agent greets whoever joins the room.

--caller gives your browser participant the SIP attribute a phone caller has (`sip.phoneNumber`),
so the agent knows "your" number as it would a caller's. The printed link holds a join token for
that one room (valid --ttl minutes): share it only with whoever should join.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import secrets
import sys
from typing import Mapping
from urllib.parse import urlencode

import aiohttp
from livekit import api

import phone
import settings

MEET_URL = "https://meet.livekit.io/custom"  # LiveKit Meet: joins any LiveKit server with a URL and a token
DEFAULT_TIMEOUT = 10.0


class DispatchProblem(Exception):
    """What the person running the command must fix."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m telephony.dispatch",
                                description="Dispatch the agent into a new room and print a link to join it.")
    p.add_argument("--agent-name", required=True,
                   help="the name the worker registered with (its LIVEKIT_AGENT_NAME), e.g. equipment-rental-dev")
    p.add_argument("--room", default=None, help="room name (default: test-call-<random>)")
    p.add_argument("--caller", default=None,
                   help="a phone number in E.164 form, given to your participant as sip.phoneNumber")
    p.add_argument("--identity", default="developer", help="your participant's identity (default %(default)s)")
    p.add_argument("--ttl", type=int, default=60, help="minutes the join link stays valid (default %(default)s)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds for the API call")
    return p


def join_link(url: str, token: str) -> str:
    ws_url = url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    return f"{MEET_URL}?{urlencode({'liveKitUrl': ws_url, 'token': token})}"


def join_token(env: Mapping[str, str], room: str, identity: str, caller: str | None, ttl_minutes: int) -> str:
    token = (api.AccessToken(env["LIVEKIT_API_KEY"].strip(), env["LIVEKIT_API_SECRET"].strip())
             .with_identity(identity).with_name(identity)
             .with_ttl(datetime.timedelta(minutes=ttl_minutes))
             .with_grants(api.VideoGrants(room_join=True, room=room)))
    if caller:
        token = token.with_attributes({"sip.phoneNumber": caller})
    return token.to_jwt()


async def dispatch(env: Mapping[str, str], agent_name: str, room: str, timeout: float) -> api.AgentDispatch:
    url = env["LIVEKIT_URL"].strip()
    lk = api.LiveKitAPI(url, env["LIVEKIT_API_KEY"].strip(), env["LIVEKIT_API_SECRET"].strip(), failover=False)
    try:
        # a room that does not exist yet is created by the dispatch
        return await asyncio.wait_for(lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name=agent_name, room=room, metadata="test call")), timeout)
    finally:
        await lk.aclose()


async def run(argv: list[str], env: Mapping[str, str]) -> int:
    args = _parser().parse_args(argv)
    url = (env.get("LIVEKIT_URL") or "").strip()
    try:
        problems = settings.livekit_errors(env)
        if problems:
            raise DispatchProblem(" ".join(problems))
        if problem := settings.agent_name_error(args.agent_name.strip(), var="--agent-name"):
            raise DispatchProblem(problem)
        caller = None
        if args.caller:
            try:
                caller = phone.normalise_e164(args.caller)
            except ValueError:
                raise DispatchProblem(f"--caller must be a number in E.164 form such as +15551234567, "
                                      f"got {settings.shown(args.caller)}") from None
        if not 1 <= args.ttl <= 24 * 60:
            raise DispatchProblem("--ttl must be 1 to 1440 minutes")
        room = args.room or f"test-call-{secrets.token_hex(3)}"
        made = await dispatch(env, args.agent_name.strip(), room, args.timeout)
    except DispatchProblem as e:
        print(f"❌ {e}", file=sys.stderr)
        return 1
    except api.ServerError as e:
        hint = (" LIVEKIT_API_KEY / LIVEKIT_API_SECRET were rejected: copy both from the same project "
                "as LIVEKIT_URL." if e.status == 401 else
                " This API key lacks room admin permission." if e.status == 403 else f" {e.message}")
        print(f"❌ LiveKit refused the dispatch: {e.code} (HTTP {e.status}).{hint}", file=sys.stderr)
        return 1
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
        where = "the address in LIVEKIT_URL" if settings.looks_secret(url) else url
        print(f"❌ Could not reach LiveKit at {where}: {type(e).__name__}. Check LIVEKIT_URL and your "
              "network.", file=sys.stderr)
        return 1

    print(f"✅ Dispatched agent {made.agent_name!r} to room {made.room!r} ({made.id or 'no id'}).")
    print("   The worker registered under that name joins it and greets whoever comes in (it logs "
          "`received job request`); without one running (`make dev`), nobody answers.")
    print(f"Join from a browser to talk to it (microphone on; link valid {args.ttl} min):")
    print(f"   {join_link(url, join_token(env, room, args.identity, caller, args.ttl))}")
    return 0


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    import os

    from dotenv import load_dotenv

    if env is None:
        load_dotenv()
        env = os.environ
    return asyncio.run(run(sys.argv[1:] if argv is None else argv, env))


if __name__ == "__main__":
    sys.exit(main())
