"""Local stand-ins for the provider endpoints `check` uses to test a key, loopback only.

- ``FakeOpenAI``: ``GET /v1/models`` with ``Authorization: Bearer <key>`` (the base URL, as
  OPENAI_BASE_URL expects it, ends in ``/v1``). A wrong key gets 401 ``invalid_api_key`` with a
  message that quotes the key it was given, as careless servers do: a client that printed the body
  would leak it.
- ``FakeDeepgram``: ``GET /v1/auth/token`` with ``Authorization: Token <key>`` (Deepgram's documented
  key check; DEEPGRAM_BASE_URL is the bare origin). A wrong key gets 401 ``INVALID_AUTH``.

``mode``: "ok" (default), "hang" (accepts, never answers until stop), "error500", "quota" (429
``insufficient_quota``), "forbidden" (403). ``requests`` records (method, path, headers) of each
request. ``env()`` gives the two variables that point the code at the stand-in::

    with FakeOpenAI() as oa, FakeDeepgram() as dg:
        env = {**oa.env(), **dg.env()}

``closed_port_url()`` is an address where nothing listens (connection refused).
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
from dataclasses import dataclass


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]


def closed_port_url(path: str = "") -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}{path}"


class FakeProvider:
    key_var = ""
    url_var = ""
    scheme = ""
    route = ""
    base_path = ""

    def __init__(self, key: str):
        self.key = key
        self.mode = "ok"
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server: http.server.ThreadingHTTPServer | None = None

    # ---------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}{self.base_path}"

    def env(self) -> dict[str, str]:
        return {self.key_var: self.key, self.url_var: self.url}

    def start(self) -> "FakeProvider":
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            disable_nagle_algorithm = True
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                fake._handle(self)

            do_POST = do_GET

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         name=type(self).__name__, daemon=True).start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------- handling
    def _handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        headers = {k.lower(): v for k, v in h.headers.items()}
        path = h.path.split("?")[0]
        with self._lock:
            self.requests.append(Request(h.command, path, headers))
        if self.mode == "hang":
            self._release.wait(120)
            h.close_connection = True
            return
        status, body = self.answer(h.command, path, headers.get("authorization", ""))
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def answer(self, method: str, path: str, auth: str) -> tuple[int, dict]:
        if method != "GET" or path != self.route:
            return 404, self.error(404, "not_found", f"no route {method} {path}")
        scheme, _, given = auth.partition(" ")
        if scheme != self.scheme or given.strip() != self.key:
            return 401, self.error(401, self.invalid_code, f"Incorrect API key provided: {given}.")
        if self.mode == "error500":
            return 500, self.error(500, "internal", "injected failure")
        if self.mode == "quota":
            return 429, self.error(429, "insufficient_quota", "You exceeded your current quota.")
        if self.mode == "forbidden":
            return 403, self.error(403, "forbidden", "Insufficient permissions.")
        return 200, self.ok()

    invalid_code = ""

    def error(self, status: int, code: str, message: str) -> dict:
        raise NotImplementedError

    def ok(self) -> dict:
        raise NotImplementedError


class FakeOpenAI(FakeProvider):
    key_var, url_var, scheme = "OPENAI_API_KEY", "OPENAI_BASE_URL", "Bearer"
    route, base_path = "/v1/models", "/v1"
    invalid_code = "invalid_api_key"

    def __init__(self, key: str = "sk-standin-openai-key", models: tuple[str, ...] = ("gpt-4o", "gpt-4o-mini",
                                                                                       "gpt-4o-mini-tts")):
        super().__init__(key)
        self.models = list(models)

    def error(self, status: int, code: str, message: str) -> dict:
        return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}

    def ok(self) -> dict:
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 1700000000,
                                            "owned_by": "system"} for m in self.models]}


class FakeDeepgram(FakeProvider):
    key_var, url_var, scheme = "DEEPGRAM_API_KEY", "DEEPGRAM_BASE_URL", "Token"
    route, base_path = "/v1/auth/token", ""
    invalid_code = "INVALID_AUTH"

    def __init__(self, key: str = "dg-standin-deepgram-key"):
        super().__init__(key)

    def error(self, status: int, code: str, message: str) -> dict:
        return {"err_code": code, "err_msg": message, "request_id": "00000000-0000-0000-0000-000000000000"}

    def ok(self) -> dict:
        return {"key": "standin", "scopes": ["member"]}
