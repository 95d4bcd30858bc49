"""A local stand-in for the LiveKit server API (Twirp over HTTP), loopback only.

It answers the endpoints this project calls, the way livekit-api 1.2.2 sends them:
``POST /twirp/livekit.<Service>/<Method>`` with a protobuf body (``application/protobuf``;
``application/json`` is accepted too and answered in JSON), and an
``Authorization: Bearer <JWT>`` header. The JWT must be HS256-signed with the configured
secret and issued by the configured key, or the call is refused with 401 ``unauthenticated``
(the way a real server refuses a wrong LIVEKIT_API_SECRET); a token without the needed grant
gets 403 ``permission_denied``.

Served: ``livekit.RoomService/ListRooms`` (what preflight uses to test credentials), the
``livekit.SIP`` inbound-trunk and dispatch-rule calls (List/Create/Update/Delete), with state,
so an idempotent setup can be checked by running it twice, and
``livekit.AgentDispatchService/CreateDispatch`` (telephony/dispatch.py; kept in ``dispatches``).

Every request is recorded in ``requests`` (method, decoded message, headers, JWT claims).
``mode = "hang"`` accepts and never answers (to test client timeouts); ``mode = "error500"``
answers 500. Use as a context manager::

    with FakeLiveKit() as lk:
        env = {"LIVEKIT_URL": lk.url, "LIVEKIT_API_KEY": lk.api_key, "LIVEKIT_API_SECRET": lk.api_secret}
"""

from __future__ import annotations

import http.server
import itertools
import json
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import jwt
from google.protobuf import json_format
from google.protobuf.message import Message
from livekit.protocol import agent_dispatch, models, room, sip


@dataclass
class Recorded:
    method: str  # e.g. "livekit.SIP/CreateSIPDispatchRule"
    message: Message | None  # the decoded request
    headers: dict[str, str]
    claims: dict[str, Any] | None
    status: int = 0  # what the fake answered


class TwirpError(Exception):
    def __init__(self, status: int, code: str, msg: str):
        super().__init__(msg)
        self.status, self.code, self.msg = status, code, msg


def _apply_list_update(target, upd: models.ListUpdate) -> None:
    current = list(target)
    if upd.clear:
        current = []
    if len(upd.set):
        current = list(upd.set)
    current = [x for x in current if x not in set(upd.remove)]
    current += [x for x in upd.add if x not in current]
    del target[:]
    target.extend(current)


class FakeLiveKit:
    def __init__(self, api_key: str = "APIfakekey", api_secret: str = "fake-secret-0123456789abcdef0123456789"):
        self.api_key = api_key
        self.api_secret = api_secret
        self.mode = "ok"  # "ok" | "hang" | "error500"
        self.latency = 0.0
        self.requests: list[Recorded] = []
        self.trunks: dict[str, sip.SIPInboundTrunkInfo] = {}
        self.rules: dict[str, sip.SIPDispatchRuleInfo] = {}
        self.rooms: list[str] = []
        self.dispatches: list[agent_dispatch.AgentDispatch] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._release = threading.Event()  # set on stop, frees hanging handlers
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._routes: dict[str, tuple[type[Message], Callable[[Any, dict], Message], str]] = {
            "livekit.RoomService/ListRooms": (room.ListRoomsRequest, self._list_rooms, "room_list"),
            "livekit.SIP/ListSIPInboundTrunk": (sip.ListSIPInboundTrunkRequest, self._list_trunks, "sip_admin"),
            "livekit.SIP/CreateSIPInboundTrunk": (sip.CreateSIPInboundTrunkRequest, self._create_trunk, "sip_admin"),
            "livekit.SIP/UpdateSIPInboundTrunk": (sip.UpdateSIPInboundTrunkRequest, self._update_trunk, "sip_admin"),
            "livekit.SIP/DeleteSIPTrunk": (sip.DeleteSIPTrunkRequest, self._delete_trunk, "sip_admin"),
            "livekit.SIP/ListSIPDispatchRule": (sip.ListSIPDispatchRuleRequest, self._list_rules, "sip_admin"),
            "livekit.SIP/CreateSIPDispatchRule": (sip.CreateSIPDispatchRuleRequest, self._create_rule, "sip_admin"),
            "livekit.SIP/UpdateSIPDispatchRule": (sip.UpdateSIPDispatchRuleRequest, self._update_rule, "sip_admin"),
            "livekit.SIP/DeleteSIPDispatchRule": (sip.DeleteSIPDispatchRuleRequest, self._delete_rule, "sip_admin"),
            "livekit.AgentDispatchService/CreateDispatch": (agent_dispatch.CreateAgentDispatchRequest,
                                                            self._create_dispatch, "room_admin"),
        }

    # ---------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "FakeLiveKit":
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            disable_nagle_algorithm = True
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                fake._handle(self)

            def do_GET(self):
                self._send(404, "application/json", b'{"code":"bad_route","msg":"not found"}')

            def _send(self, status: int, ctype: str, body: bytes):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-livekit", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeLiveKit":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------- helpers for tests
    def calls(self, method_suffix: str = "") -> list[Recorded]:
        return [r for r in self.requests if r.method.endswith(method_suffix)]

    def writes(self) -> list[Recorded]:
        return [r for r in self.requests if not r.method.split("/")[-1].startswith("List")]

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):06d}"

    # ---------------------------------------------------------------- request handling
    def _handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in h.headers.items()}
        path = h.path.split("?")[0]
        method = path.removeprefix("/twirp/")
        rec = Recorded(method=method, message=None, headers=headers, claims=None)
        with self._lock:
            self.requests.append(rec)
        if self.mode == "hang":
            self._release.wait(120)
            h.close_connection = True
            return
        if self.latency:
            time.sleep(self.latency)
        is_json = headers.get("content-type", "").startswith("application/json")
        try:
            if self.mode == "error500":
                raise TwirpError(500, "internal", "injected failure")
            if not path.startswith("/twirp/") or method not in self._routes:
                raise TwirpError(404, "bad_route", f"no handler for {path}")
            req_cls, fn, grant = self._routes[method]
            rec.claims = self._authorize(headers.get("authorization", ""), grant)
            msg = req_cls()
            try:
                if is_json:
                    json_format.Parse(body.decode() or "{}", msg)
                else:
                    msg.ParseFromString(body)
            except Exception as e:  # noqa: BLE001
                raise TwirpError(400, "malformed", f"cannot decode request: {e}") from e
            rec.message = msg
            with self._lock:
                resp = fn(msg, rec.claims)
            out = json_format.MessageToJson(resp).encode() if is_json else resp.SerializeToString()
            rec.status = 200
            h._send(200, "application/json" if is_json else "application/protobuf", out)
        except TwirpError as e:
            rec.status = e.status
            h._send(e.status, "application/json", json.dumps({"code": e.code, "msg": e.msg}).encode())

    def _authorize(self, header: str, grant: str) -> dict:
        if not header.lower().startswith("bearer "):
            raise TwirpError(401, "unauthenticated", "no authorization header")
        token = header.split(" ", 1)[1].strip()
        try:
            claims = jwt.decode(token, self.api_secret, algorithms=["HS256"],
                                options={"verify_aud": False}, leeway=10)
        except jwt.PyJWTError as e:
            raise TwirpError(401, "unauthenticated", f"invalid token: {e}") from e
        if claims.get("iss") != self.api_key:
            raise TwirpError(401, "unauthenticated", "invalid API key")
        if grant == "room_list" and not (claims.get("video") or {}).get("roomList"):
            raise TwirpError(403, "permission_denied", "requires roomList grant")
        if grant == "sip_admin" and not (claims.get("sip") or {}).get("admin"):
            raise TwirpError(403, "permission_denied", "requires SIP admin grant")
        if grant == "room_admin" and not (claims.get("video") or {}).get("roomAdmin"):
            raise TwirpError(403, "permission_denied", "requires roomAdmin grant")
        return claims

    # ---------------------------------------------------------------- AgentDispatchService
    def _create_dispatch(self, req: agent_dispatch.CreateAgentDispatchRequest, _c) -> agent_dispatch.AgentDispatch:
        if not req.agent_name or not req.room:
            raise TwirpError(400, "invalid_argument", "agent_name and room are required")
        made = agent_dispatch.AgentDispatch(id=self.new_id("AD_"), agent_name=req.agent_name, room=req.room,
                                            metadata=req.metadata)
        self.dispatches.append(made)
        if req.room not in self.rooms:  # a dispatch creates its room
            self.rooms.append(req.room)
        return made

    # ---------------------------------------------------------------- RoomService
    def _list_rooms(self, req: room.ListRoomsRequest, _c) -> room.ListRoomsResponse:
        names = [n for n in self.rooms if not req.names or n in req.names]
        return room.ListRoomsResponse(rooms=[models.Room(name=n, sid="RM_" + n) for n in names])

    # ---------------------------------------------------------------- SIP trunks
    def _check_number_conflict(self, trunk: sip.SIPInboundTrunkInfo) -> None:
        for other in self.trunks.values():
            if other.sip_trunk_id == trunk.sip_trunk_id:
                continue
            shared = set(other.numbers) & set(trunk.numbers)
            if shared and not other.allowed_addresses and not trunk.allowed_addresses:
                raise TwirpError(400, "invalid_argument",
                                 f"conflicting inbound SIP Trunks: {other.sip_trunk_id} and new, number {sorted(shared)}")

    def _list_trunks(self, req: sip.ListSIPInboundTrunkRequest, _c) -> sip.ListSIPInboundTrunkResponse:
        items = [t for t in self.trunks.values()
                 if (not req.trunk_ids or t.sip_trunk_id in req.trunk_ids)
                 and (not req.numbers or set(t.numbers) & set(req.numbers))]
        return sip.ListSIPInboundTrunkResponse(items=items)

    def _create_trunk(self, req: sip.CreateSIPInboundTrunkRequest, _c) -> sip.SIPInboundTrunkInfo:
        if req.trunk.sip_trunk_id:
            raise TwirpError(400, "invalid_argument", "trunk ID must be empty")
        t = sip.SIPInboundTrunkInfo()
        t.CopyFrom(req.trunk)
        t.sip_trunk_id = self.new_id("ST_")
        self._check_number_conflict(t)
        self.trunks[t.sip_trunk_id] = t
        return t

    def _update_trunk(self, req: sip.UpdateSIPInboundTrunkRequest, _c) -> sip.SIPInboundTrunkInfo:
        cur = self.trunks.get(req.sip_trunk_id)
        if cur is None:
            raise TwirpError(404, "not_found", f"trunk {req.sip_trunk_id} not found")
        new = sip.SIPInboundTrunkInfo()
        if req.HasField("replace"):
            new.CopyFrom(req.replace)
        else:
            new.CopyFrom(cur)
            u = req.update
            for name in ("numbers", "allowed_addresses", "allowed_numbers"):
                if u.HasField(name):
                    _apply_list_update(getattr(new, name), getattr(u, name))
            for name in ("auth_username", "auth_password", "auth_realm", "name", "metadata"):
                if u.HasField(name):
                    setattr(new, name, getattr(u, name))
        new.sip_trunk_id = cur.sip_trunk_id
        self._check_number_conflict(new)
        self.trunks[cur.sip_trunk_id] = new
        return new

    def _delete_trunk(self, req: sip.DeleteSIPTrunkRequest, _c) -> sip.SIPTrunkInfo:
        if self.trunks.pop(req.sip_trunk_id, None) is None:
            raise TwirpError(404, "not_found", f"trunk {req.sip_trunk_id} not found")
        return sip.SIPTrunkInfo(sip_trunk_id=req.sip_trunk_id)

    # ---------------------------------------------------------------- SIP dispatch rules
    def _list_rules(self, req: sip.ListSIPDispatchRuleRequest, _c) -> sip.ListSIPDispatchRuleResponse:
        items = [r for r in self.rules.values()
                 if (not req.dispatch_rule_ids or r.sip_dispatch_rule_id in req.dispatch_rule_ids)
                 and (not req.trunk_ids or not r.trunk_ids or set(r.trunk_ids) & set(req.trunk_ids))]
        return sip.ListSIPDispatchRuleResponse(items=items)

    def _create_rule(self, req: sip.CreateSIPDispatchRuleRequest, _c) -> sip.SIPDispatchRuleInfo:
        r = sip.SIPDispatchRuleInfo()
        if req.HasField("dispatch_rule"):
            r.CopyFrom(req.dispatch_rule)
        else:  # the deprecated flat form
            r.rule.CopyFrom(req.rule)
            r.trunk_ids.extend(req.trunk_ids)
            r.hide_phone_number = req.hide_phone_number
            r.name, r.metadata = req.name, req.metadata
            r.room_config.CopyFrom(req.room_config)
        if not r.HasField("rule"):
            raise TwirpError(400, "invalid_argument", "dispatch rule has no rule")
        r.sip_dispatch_rule_id = self.new_id("SDR_")
        self.rules[r.sip_dispatch_rule_id] = r
        return r

    def _update_rule(self, req: sip.UpdateSIPDispatchRuleRequest, _c) -> sip.SIPDispatchRuleInfo:
        cur = self.rules.get(req.sip_dispatch_rule_id)
        if cur is None:
            raise TwirpError(404, "not_found", f"dispatch rule {req.sip_dispatch_rule_id} not found")
        new = sip.SIPDispatchRuleInfo()
        if req.HasField("replace"):
            new.CopyFrom(req.replace)
        else:
            new.CopyFrom(cur)
            u = req.update
            if u.HasField("trunk_ids"):
                _apply_list_update(new.trunk_ids, u.trunk_ids)
            if u.HasField("rule"):
                new.rule.CopyFrom(u.rule)
            for name in ("name", "metadata"):
                if u.HasField(name):
                    setattr(new, name, getattr(u, name))
        new.sip_dispatch_rule_id = cur.sip_dispatch_rule_id
        self.rules[cur.sip_dispatch_rule_id] = new
        return new

    def _delete_rule(self, req: sip.DeleteSIPDispatchRuleRequest, _c) -> sip.SIPDispatchRuleInfo:
        r = self.rules.pop(req.sip_dispatch_rule_id, None)
        if r is None:
            raise TwirpError(404, "not_found", f"dispatch rule {req.sip_dispatch_rule_id} not found")
        return r
