"""The end-to-end stack as real processes on loopback: redis-server, livekit-server, livekit-sip,
the two provider stand-ins and `python agent.py start` workers.

Each process writes its output to a file in the run's folder (kept for reading after a failure)
and a reader thread keeps every line with the time it arrived, so a test can wait for a line
(`Proc.wait_for`) and time it against what the caller saw. Ports are picked free at start.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]
E2E = ROOT / "e2e"
PYTHON = sys.executable


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_range(n: int, even: bool = True) -> int:
    """The first of `n` consecutive UDP ports that are all free now (a start that is even)."""
    for _ in range(200):
        start = free_port(socket.SOCK_DGRAM)
        start -= start % 2 if even else 0
        socks = []
        try:
            for p in range(start, start + n):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return start
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free UDP ports")


def render(template: Path, dest: Path, values: dict[str, Any]) -> Path:
    text = string.Template(template.read_text()).substitute({k: str(v) for k, v in values.items()})
    dest.write_text(text)
    return dest


@dataclass
class Line:
    mono: float  # time.monotonic() when the line arrived
    wall: float  # time.time() when the line arrived
    text: str
    _json: Any = field(default=None, repr=False)

    @property
    def json(self) -> dict:
        if self._json is None:
            try:
                self._json = json.loads(self.text)
            except ValueError:
                self._json = {}
            if not isinstance(self._json, dict):
                self._json = {}
        return self._json


class Proc:
    """A child process whose output lines are kept, timed, and written to `log_path`."""

    def __init__(self, name: str, argv: list[str], log_path: Path, *, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.lines: list[Line] = []
        self._cond = threading.Condition()
        self._log = open(log_path, "a", buffering=1, encoding="utf-8", errors="replace")
        self._log.write(f"$ {' '.join(argv)}\n")
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=str(cwd or ROOT), start_new_session=True, text=True, errors="replace",
            bufsize=1,
        )
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = Line(time.monotonic(), time.time(), raw.rstrip("\n"))
            self._log.write(raw)
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for(self, pred: Callable[[Line], bool], timeout: float, *, start: int = 0,
                 what: str = "") -> Line:
        """The first line from index `start` on for which `pred` holds; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        i = start
        with self._cond:
            while True:
                while i < len(self.lines):
                    if pred(self.lines[i]):
                        return self.lines[i]
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0 or (not self.alive() and i >= len(self.lines)):
                    state = "running" if self.alive() else f"exited {self.proc.returncode}"
                    raise TimeoutError(f"{self.name} ({state}): no line {what or pred!r} within "
                                       f"{timeout:g}s; log: {self.log_path}")
                self._cond.wait(min(left, 0.5))

    def find(self, pred: Callable[[Line], bool], start: int = 0) -> list[Line]:
        with self._cond:
            return [ln for ln in self.lines[start:] if pred(ln)]

    def mark(self) -> int:
        with self._cond:
            return len(self.lines)

    def send_signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
        """Signal the process (its whole group after `timeout`), wait, close the log."""
        if self.alive():
            try:
                os.kill(self.pid, sig)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with_group = f"killing group {self.pid} after {timeout:g}s"
                self._log.write(f"# e2e: {self.name} did not stop on {signal.Signals(sig).name}; {with_group}\n")
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self._log.write(f"# e2e: {self.name} (pid {self.pid}) still running after SIGKILL\n")
            except ProcessLookupError:
                pass
        # job processes of a worker live in its session: none may outlive it
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._reader.join(5)
        self._log.close()
        return self.proc.returncode


def http_ok(url: str, timeout: float = 1.0, also: tuple[int, ...] = ()) -> bool:
    """The URL answers 2xx (or one of the statuses in `also`)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return 200 <= r.status < 300
    except urllib.error.HTTPError as e:
        return e.code in also
    except Exception:
        return False


def wait_until(cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not true within {timeout:g}s")
        time.sleep(interval)


# ------------------------------------------------------------------------------------ the servers


def binaries() -> dict[str, str]:
    """Paths of the pinned livekit-server and livekit-sip (built by `make e2e-tools`)."""
    out = subprocess.run(["bash", str(E2E / "build-tools.sh"), "--paths"], capture_output=True, text=True)
    paths = dict(line.split("=", 1) for line in out.stdout.split() if "=" in line)
    if out.returncode != 0:
        raise RuntimeError("livekit-server / livekit-sip are not built: run `make e2e-tools` "
                           f"(bash e2e/build-tools.sh). Looked for {paths}")
    return paths


@dataclass
class Stack:
    """The shared infrastructure of one test session."""

    run_dir: Path
    api_key: str = "e2e-key"
    api_secret: str = field(default_factory=lambda: "e2e-" + secrets.token_hex(20))
    procs: dict[str, Proc] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def livekit_url(self) -> str:
        return f"ws://127.0.0.1:{self.ports['LIVEKIT_PORT']}"

    @property
    def sip_port(self) -> int:
        return self.ports["SIP_PORT"]

    def _values(self) -> dict[str, Any]:
        return {**self.ports, "API_KEY": self.api_key, "API_SECRET": self.api_secret,
                "STATE_DIR": self.run_dir}

    def start_redis(self) -> None:
        self.ports["REDIS_PORT"] = free_port()
        conf = render(E2E / "config" / "redis.conf", self.run_dir / "redis.conf", self._values())
        p = self.procs["redis"] = Proc("redis-server", [shutil.which("redis-server") or "redis-server", str(conf)],
                                       self.run_dir / "redis.log")
        p.wait_for(lambda ln: "Ready to accept connections" in ln.text, 20, what="redis ready")

    def start_livekit(self, binary: str) -> None:
        self.ports.update(LIVEKIT_PORT=free_port(), RTC_TCP_PORT=free_port(),
                          RTC_UDP_PORT=free_port(socket.SOCK_DGRAM), NO_STUN_PORT=free_port(socket.SOCK_DGRAM))
        conf = render(E2E / "config" / "livekit.yaml", self.run_dir / "livekit.yaml", self._values())
        self.procs["livekit"] = Proc("livekit-server", [binary, "--config", str(conf)],
                                     self.run_dir / "livekit-server.log")
        url = f"http://127.0.0.1:{self.ports['LIVEKIT_PORT']}/"
        wait_until(lambda: http_ok(url) or not self.procs["livekit"].alive(), 30, "livekit-server answering")
        if not self.procs["livekit"].alive():
            raise RuntimeError(f"livekit-server exited; see {self.run_dir / 'livekit-server.log'}")

    def start_sip(self, binary: str) -> None:
        rtp = free_port_range(200)
        self.ports.update(SIP_PORT=free_port(socket.SOCK_DGRAM), SIP_HEALTH_PORT=free_port(),
                          RTP_PORT_START=rtp, RTP_PORT_END=rtp + 199)
        conf = render(E2E / "config" / "sip.yaml", self.run_dir / "sip.yaml", self._values())
        p = self.procs["sip"] = Proc("livekit-sip", [binary, "--config", str(conf)],
                                     self.run_dir / "livekit-sip.log")
        url = f"http://127.0.0.1:{self.ports['SIP_HEALTH_PORT']}/"
        # 429 is livekit-sip's "UnderLoad": up, but the machine's CPU is above 90% (a busy CI box);
        # it still answers inbound calls (only outbound ones are refused)
        wait_until(lambda: http_ok(url, also=(429,)) or not p.alive(), 30, "livekit-sip health")
        if not p.alive():
            raise RuntimeError(f"livekit-sip exited; see {self.run_dir / 'livekit-sip.log'}")

    def start_standin(self, name: str, module: str, env: dict[str, str] | None = None) -> int:
        p = self.procs[name] = Proc(name, [PYTHON, "-m", module, "--port", "0"],
                                    self.run_dir / f"{name}.log", env={**os.environ, **(env or {})})
        ready = p.wait_for(lambda ln: ln.text.startswith("READY "), 30, what="READY")
        port = int(ready.text.split()[1])
        self.ports[name] = port
        return port

    def stop(self) -> None:
        # livekit-server waits for participants to leave on SIGTERM: nothing here needs that
        errors = []
        for name in reversed(list(self.procs)):
            try:  # one that fails to stop must not leave the others running
                self.procs[name].stop(timeout=3)
            except Exception as e:
                errors.append(f"{name}: {e!r}")
        self.procs.clear()
        if errors:
            raise RuntimeError(f"could not stop: {errors}")


class Worker(Proc):
    """A real `python agent.py start`."""

    def __init__(self, name: str, env: dict[str, str], run_dir: Path) -> None:
        self.port = int(env["PORT"])
        self.agent_name = env["LIVEKIT_AGENT_NAME"]
        super().__init__(name, [PYTHON, "agent.py", "start"], run_dir / f"{name}.log", env=env, cwd=ROOT)

    def wait_registered(self, timeout: float = 60.0) -> Line:
        return self.wait_for(lambda ln: "registered worker" in ln.text, timeout, what="registered worker")

    def status(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/worker", timeout=2) as r:
            return json.loads(r.read())

    # a call's lines are found by the room's RM_ id, which the worker logs as `room_id`: the room
    # name holds the caller's number and may be redacted in the log
    def call_lines(self, room_id: str, start: int = 0) -> list[Line]:
        return self.find(lambda ln: bool(room_id) and ln.json.get("room_id") == room_id, start)

    def wait_call_summary(self, room_id: str, timeout: float, start: int = 0) -> Line:
        return self.wait_for(
            lambda ln: "Call summary" in ln.text and ln.json.get("room_id") == room_id, timeout,
            start=start, what=f"Call summary for room {room_id}")


def worker_env(stack: Stack, *, agent_name: str, state_dir: Path, csv_path: Path, openai_port: int,
               deepgram_port: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a real worker pointed at the local stack and stand-ins, and nothing else."""
    keep = {k: v for k, v in os.environ.items()
            if k in ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER", "SHELL")}
    env = {
        **keep,
        "LIVEKIT_URL": stack.livekit_url,
        "LIVEKIT_API_KEY": stack.api_key,
        "LIVEKIT_API_SECRET": stack.api_secret,
        "LIVEKIT_AGENT_NAME": agent_name,
        "OPENAI_API_KEY": "dummy",
        "OPENAI_BASE_URL": f"http://127.0.0.1:{openai_port}/v1",
        "DEEPGRAM_API_KEY": "dummy",
        "DEEPGRAM_BASE_URL": f"http://127.0.0.1:{deepgram_port}",
        "STATE_DIR": str(state_dir),
        "EQUIPMENT_CSV": str(csv_path),
        "PORT": str(free_port()),
        "BUSINESS_NAME": "Acme Equipment Rental",
        "SHOP_TIMEZONE": "America/Chicago",
        "MAX_CONCURRENT_CALLS": "10",
        "NUM_IDLE_PROCESSES": "2",
        "DRAIN_TIMEOUT": "30",
        "LIVEKIT_LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    }
    env.update(extra_worker_env())
    env.update(extra or {})
    return env


def extra_worker_env(raw: str | None = None) -> dict[str, str]:
    """E2E_WORKER_ENV="NAME=value,NAME=value": settings every worker of the run gets (to measure a
    setting: `E2E_WORKER_ENV=MAX_ENDPOINTING_DELAY=2.5 make test-e2e`)."""
    raw = os.environ.get("E2E_WORKER_ENV", "") if raw is None else raw
    return dict(item.strip().split("=", 1) for item in raw.split(",") if "=" in item)
