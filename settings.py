"""Every environment variable the project reads (bar the platform's own: railway.py): parsing,
bounds, defaults, and the one message that names each bad variable. Used by the worker, the
inventory, `check` and the SIP setup.

Empty means the default, for every variable (the framework's own included: see
`drop_empty_framework_vars`). A bad value is named with what it must be; a value that looks like
a key or a credential is never echoed, whichever variable it was put in.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Mapping
from zoneinfo import ZoneInfo

import phone
from redaction import SECRET_VARS, looks_like_api_key, looks_secret, shorten_id, shown  # noqa: F401 - re-exported
from service_account import DEFAULT_TOKEN_URI, decode_service_account  # noqa: F401 - re-exported

PROJECT_DIR = Path(__file__).resolve().parent
DEFAULT_AGENT_NAME = "equipment-rental"
DEFAULT_BUSINESS_NAME = "the rental shop"
DEFAULT_CSV = PROJECT_DIR / "data" / "equipment.csv"
DEFAULT_STATE_DIR = PROJECT_DIR / ".state"
DEFAULT_SHEETS_API_URL = "https://sheets.googleapis.com"
DEFAULT_DEEPGRAM_URL = "https://api.deepgram.com"
DEFAULT_OPENAI_URL = "https://api.openai.com/v1"
TTS_PROVIDERS = ("deepgram", "openai")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Modes of `python agent.py`: which need a LiveKit server.
LIVEKIT_MODES = ("dev", "start", "connect", "check")
# `console --text`: typed conversation, no speech, so no Deepgram key needed.
TEXT_CONSOLE = "console-text"
# The models and voices voice.build_pipeline builds (named here for the start-up line).
FALLBACK_LLM = "gpt-4o-mini"
STT_MODEL = "nova-3"
VOICES = {"deepgram": "aura-2-andromeda-en", "openai": "gpt-4o-mini-tts/ash"}

# Where to get each credential, for the message that says it is missing.
WHERE_TO_GET = {
    "LIVEKIT_URL": "your LiveKit project's WebSocket URL, e.g. wss://<project>.livekit.cloud "
    "(LiveKit Cloud dashboard > Settings > Project)",
    "LIVEKIT_API_KEY": "LiveKit Cloud dashboard > Settings > API Keys",
    "LIVEKIT_API_SECRET": "LiveKit Cloud dashboard > Settings > API Keys (shown once at creation)",
    "OPENAI_API_KEY": "https://platform.openai.com/api-keys (needed for the LLM, and for TTS "
    "when TTS_PROVIDER=openai or as the TTS fallback)",
    "DEEPGRAM_API_KEY": "https://console.deepgram.com > API Keys (speech-to-text, and the default TTS)",
}
# Read by livekit-agents itself; an empty value must not reach it.
FRAMEWORK_VARS = ("NUM_CPUS", "LIVEKIT_LOG_LEVEL")


@dataclass(frozen=True)
class Number:
    """A number variable: its default and its bounds (inclusive; `above` excludes the low end)."""

    default: float | int | None
    low: float
    high: float
    integer: bool = False
    seconds: bool = False
    above: bool = False

    def parse(self, raw: str) -> float | int:
        value: float | int = int(raw) if self.integer else float(raw)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError
        if value > self.high or value < self.low or (self.above and value == self.low):
            raise ValueError
        return value

    def describe(self) -> str:
        what = "a whole number" if self.integer else "a number of seconds" if self.seconds else "a number"
        low = f"above {self.low:g}" if self.above else f"from {self.low:g}"
        return f"{what} {low} to {self.high:g}"


NUMBERS: dict[str, Number] = {
    "PORT": Number(8081, 1, 65535, integer=True),
    "DRAIN_TIMEOUT": Number(600, 0, 3600, integer=True, seconds=True),
    "NUM_IDLE_PROCESSES": Number(None, 0, 32, integer=True),
    "MAX_CONCURRENT_CALLS": Number(10, 1, 200, integer=True),
    # calls taken past MAX_CONCURRENT_CALLS only to play the overflow answer (busy line, then a
    # transfer to staff or "please call back"): 0 turns them away unanswered, as before
    "MAX_OVERFLOW_CALLS": Number(2, 0, 20, integer=True),
    "ROOM_CONNECT_TIMEOUT": Number(5.0, 0, 60, seconds=True, above=True),
    "SESSION_START_TIMEOUT": Number(10.0, 0, 120, seconds=True, above=True),
    "MAX_CALL_SECONDS": Number(900.0, 0, 7200, seconds=True, above=True),
    "USER_AWAY_SECONDS": Number(20.0, 0, 600, seconds=True, above=True),
    # turn-taking on a phone line (voice.build_pipeline): how long after the caller stops talking
    # the agent answers when the turn detector thinks they are done, and at most when it does not
    "MIN_ENDPOINTING_DELAY": Number(0.3, 0, 2, seconds=True),
    "MAX_ENDPOINTING_DELAY": Number(1.0, 0.3, 6, seconds=True),
    # silence that ends the caller's speech for the VAD: no turn ends sooner (voice.prewarm)
    "VAD_MIN_SILENCE": Number(0.55, 0.1, 2, seconds=True),
    "BOOKING_TIMEOUT": Number(30.0, 0, 50, seconds=True, above=True),
    "MAX_BOOKINGS_PER_CALL": Number(3, 1, 20, integer=True),
    "EQUIPMENT_CACHE_TTL": Number(30.0, 0, 3600, seconds=True),
    "EQUIPMENT_LOAD_TIMEOUT": Number(3.0, 0, 30, seconds=True, above=True),
    "BOOKING_RETRY_BUDGET": Number(8.0, 0, 30, seconds=True),
    "DATABASE_TIMEOUT": Number(3.0, 0, 30, seconds=True, above=True),
    "NUM_CPUS": Number(None, 0, 256, above=True),
    # health (worker.py): GET / answers 503 once LiveKit has been lost this long, and the
    # worker exits with status 3 when it has had no registration with LiveKit for REGISTER_TIMEOUT
    # (at start-up, or since it was lost), so the platform restarts it and counts a failure
    "REGISTER_TIMEOUT": Number(60.0, 1, 3600, seconds=True),
    "DISCONNECT_TIMEOUT": Number(30.0, 1, 3600, seconds=True),
}
HTTP_TIMEOUT_DEFAULT = (5.0, 10.0)
HTTP_TIMEOUT_MAX = 60.0


class ConfigError(Exception):
    """Configuration that cannot work; `errors` names each bad variable."""

    def __init__(self, errors: list[str]):
        super().__init__("; ".join(errors))
        self.errors = errors


# --------------------------------------------------------------------------------------------
# the settings


@dataclass(frozen=True)
class InventorySettings:
    sheet_id: str | None = None
    credentials_info: dict[str, Any] | None = field(default=None, repr=False)
    api_url: str = DEFAULT_SHEETS_API_URL
    equipment_worksheet: str = "Equipment"
    bookings_worksheet: str = "Bookings"  # the history: every booking, change and call-back request
    reservations_worksheet: str = "Reservations"
    settings_worksheet: str = "Settings"
    csv_path: Path = DEFAULT_CSV
    cache_ttl: float = 30.0
    load_timeout: float = 3.0
    http_timeout: tuple[float, float] = HTTP_TIMEOUT_DEFAULT  # (connect, read), per request
    retry_budget: float = 8.0
    state_dir: Path = DEFAULT_STATE_DIR
    database_url: str = field(default="", repr=False)  # PostgreSQL shared by every replica; "" = SQLite here
    database_timeout: float = 3.0  # connect and statement bound, seconds

    @property
    def source(self) -> str:
        return "sheet" if self.sheet_id else "csv"

    def describe(self) -> str:
        if self.sheet_id:
            return f"Google Sheet {shorten_id(self.sheet_id)} ({self.equipment_worksheet!r})"
        return f"CSV {self.csv_path}"


@dataclass(frozen=True)
class Settings:
    agent_name: str = DEFAULT_AGENT_NAME
    business_name: str = DEFAULT_BUSINESS_NAME
    llm_model: str = "gpt-4o"
    tts_provider: str = "deepgram"
    deepgram_url: str = DEFAULT_DEEPGRAM_URL
    openai_url: str = DEFAULT_OPENAI_URL
    transfer_to: str = ""  # a tel:/sip: URI, or "" (take messages instead)
    shop_timezone: str = ""
    port: int | None = None  # None: the framework's (8081 in start, random in dev)
    drain_timeout: int = 600
    num_idle_processes: int | None = None
    max_concurrent_calls: int = 10
    max_overflow_calls: int = 2
    room_connect_timeout: float = 5.0
    session_start_timeout: float = 10.0
    max_call_seconds: float = 900.0
    user_away_seconds: float = 20.0
    min_endpointing_delay: float = 0.3
    max_endpointing_delay: float = 1.0
    vad_min_silence: float = 0.55
    booking_timeout: float = 30.0
    max_bookings_per_call: int = 3
    register_timeout: float = 60.0
    disconnect_timeout: float = 30.0
    inventory: InventorySettings = field(default_factory=InventorySettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, mode: str = "start") -> Settings:
        """The settings; raises ConfigError naming every bad variable."""
        settings, errors = parse(env, mode)
        if errors:
            raise ConfigError(errors)
        return settings

    @classmethod
    def lenient(cls, env: Mapping[str, str] = os.environ) -> Settings:
        """The settings with defaults in place of bad values (validation has already spoken)."""
        return parse(env, "console", check_dirs=False)[0]

    def today(self) -> date:
        return self.now().date()

    def now(self) -> datetime:
        """The shop's time (SHOP_TIMEZONE, else the machine's), time-zone aware."""
        if self.shop_timezone:
            with contextlib.suppress(Exception):
                return datetime.now(ZoneInfo(self.shop_timezone))
        return datetime.now().astimezone()

    def describe(self, version: str = "") -> str:
        """One line for the start-up log: what this deployment runs (never a secret, never the
        full sheet ID or transfer number)."""
        voices = list(TTS_PROVIDERS) if self.tts_provider == "deepgram" else list(reversed(TTS_PROVIDERS))
        idle = "default" if self.num_idle_processes is None else str(self.num_idle_processes)
        return (f"version={version or 'unknown'} agent={self.agent_name} "
                f"inventory={self.inventory.describe()} state={describe_state(self.inventory)} "
                f"llm={self.llm_model}>{FALLBACK_LLM} stt=deepgram/{STT_MODEL} "
                f"tts={'>'.join(voices)} ({', '.join(f'{v}/{VOICES[v]}' for v in voices)}) "
                f"capacity={self.max_concurrent_calls} calls overflow={self.max_overflow_calls} idle_processes={idle} "
                f"transfer={'on' if self.transfer_to else 'off'}")


def describe_state(inv: InventorySettings) -> str:
    """The state engine and where it is: this machine's SQLite in STATE_DIR, or PostgreSQL
    (DATABASE_URL: host, port and database only, never the password)."""
    local = f"sqlite {inv.state_dir}"
    url = inv.database_url
    if not url:
        return local
    m = re.match(r"^[a-z0-9+]+://(?:[^@/]*@)?([^/?#]*)(/[^?#]*)?", url)
    where = f"{m.group(1)}{m.group(2) or ''}" if m else "(DATABASE_URL)"
    return f"postgresql {where} (fallback {local})"


class _Reader:
    def __init__(self, env: Mapping[str, str]):
        self.env = env
        self.errors: list[str] = []

    def get(self, name: str) -> str:
        return (self.env.get(name) or "").strip()

    def error(self, message: str) -> None:
        self.errors.append(message)

    def number(self, name: str) -> Any:
        spec = NUMBERS[name]
        raw = self.get(name)
        if not raw:
            return spec.default
        try:
            return spec.parse(raw)
        except (ValueError, OverflowError):
            self.error(f"{name} must be {spec.describe()}, got {shown(raw, name)}.")
            return spec.default

    def text(self, name: str, default: str = "", limit: int = 200) -> str:
        raw = self.get(name)
        if len(raw) > limit or looks_secret(raw):
            self.error(f"{name} must be at most {limit} characters of plain text, got {shown(raw, name)}.")
            return default
        return raw or default


def parse(env: Mapping[str, str] = os.environ, mode: str = "start",
          check_dirs: bool = True) -> tuple[Settings, list[str]]:
    """The settings, and every problem found (empty: good to go)."""
    r = _Reader(env)
    if mode in LIVEKIT_MODES:
        r.errors.extend(livekit_errors(env))
    for name in ("OPENAI_API_KEY",) if mode == TEXT_CONSOLE else ("OPENAI_API_KEY", "DEEPGRAM_API_KEY"):
        if not r.get(name) and mode not in ("check", "inventory"):
            r.error(f"{name} is not set: {WHERE_TO_GET[name]}.")

    agent_name = r.text("LIVEKIT_AGENT_NAME", DEFAULT_AGENT_NAME, limit=100)
    if problem := agent_name_error(agent_name):
        r.error(problem)
        agent_name = DEFAULT_AGENT_NAME
    tts_provider = r.get("TTS_PROVIDER").lower() or "deepgram"
    if tts_provider not in TTS_PROVIDERS:
        r.error(f"TTS_PROVIDER must be one of {', '.join(TTS_PROVIDERS)} (default deepgram), "
                f"got {shown(tts_provider)}.")
        tts_provider = "deepgram"
    deepgram_url = _url(r, "DEEPGRAM_BASE_URL", DEFAULT_DEEPGRAM_URL)
    openai_url = _url(r, "OPENAI_BASE_URL", DEFAULT_OPENAI_URL)

    transfer = r.get("TRANSFER_PHONE_NUMBER")
    if transfer and not phone.is_transfer_target(transfer):
        r.error("TRANSFER_PHONE_NUMBER must be a number in international format such as "
                f"+15551234567, or a SIP URI such as sip:desk@pbx.example.com, got {shown(transfer)}. "
                "Leave it empty to take messages instead of transferring.")
        transfer = ""
    timezone = r.get("SHOP_TIMEZONE")
    if timezone:
        try:
            ZoneInfo(timezone)
        except Exception:  # noqa: BLE001 - ValueError, ZoneInfoNotFoundError, or a path in disguise
            r.error(f"SHOP_TIMEZONE must be an IANA time zone such as America/Chicago, got {shown(timezone)}.")
            timezone = ""
    level = r.get("LIVEKIT_LOG_LEVEL")
    if level and level.upper() not in LOG_LEVELS:
        r.error(f"LIVEKIT_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {shown(level)}.")
    r.number("NUM_CPUS")
    min_endpointing, max_endpointing = float(r.number("MIN_ENDPOINTING_DELAY")), float(r.number("MAX_ENDPOINTING_DELAY"))
    if min_endpointing > max_endpointing:
        r.error(f"MIN_ENDPOINTING_DELAY ({min_endpointing:g}) must not be more than MAX_ENDPOINTING_DELAY "
                f"({max_endpointing:g}).")
        min_endpointing = min(NUMBERS["MIN_ENDPOINTING_DELAY"].default or 0.0, max_endpointing)

    settings = Settings(
        agent_name=agent_name,
        business_name=r.text("BUSINESS_NAME", DEFAULT_BUSINESS_NAME, limit=80),
        llm_model=r.text("LLM_MODEL", "gpt-4o", limit=80),
        tts_provider=tts_provider,
        deepgram_url=deepgram_url,
        openai_url=openai_url,
        transfer_to=phone.transfer_uri(transfer),
        shop_timezone=timezone,
        port=r.number("PORT") if r.get("PORT") else None,
        drain_timeout=int(r.number("DRAIN_TIMEOUT")),
        num_idle_processes=r.number("NUM_IDLE_PROCESSES"),
        max_concurrent_calls=int(r.number("MAX_CONCURRENT_CALLS")),
        max_overflow_calls=int(r.number("MAX_OVERFLOW_CALLS")),
        room_connect_timeout=float(r.number("ROOM_CONNECT_TIMEOUT")),
        session_start_timeout=float(r.number("SESSION_START_TIMEOUT")),
        max_call_seconds=float(r.number("MAX_CALL_SECONDS")),
        user_away_seconds=float(r.number("USER_AWAY_SECONDS")),
        min_endpointing_delay=min_endpointing,
        max_endpointing_delay=max_endpointing,
        vad_min_silence=float(r.number("VAD_MIN_SILENCE")),
        booking_timeout=float(r.number("BOOKING_TIMEOUT")),
        max_bookings_per_call=int(r.number("MAX_BOOKINGS_PER_CALL")),
        register_timeout=float(r.number("REGISTER_TIMEOUT")),
        disconnect_timeout=float(r.number("DISCONNECT_TIMEOUT")),
        inventory=_inventory(r, check_dirs),
    )
    return settings, r.errors


def livekit_errors(env: Mapping[str, str] = os.environ) -> list[str]:
    """LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET: missing or malformed."""
    r = _Reader(env)
    for name in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
        if not r.get(name):
            r.error(f"{name} is not set: {WHERE_TO_GET[name]}.")
    url = r.get("LIVEKIT_URL")
    if url and not re.match(r"^(wss?|https?)://[^/\s]+", url):
        r.error(f"LIVEKIT_URL must start with wss:// (or ws://, https://), got {shown(url)}: "
                f"{WHERE_TO_GET['LIVEKIT_URL']}.")
    return r.errors


def agent_name_error(name: str, var: str = "LIVEKIT_AGENT_NAME") -> str:
    """"" for a usable agent name, else the problem (naming `var`)."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}", name):
        return ""
    return f"{var} must be letters, digits, '-', '_' or '.', got {shown(name)}."


def config_errors(mode: str = "start", env: Mapping[str, str] = os.environ) -> list[str]:
    return parse(env, mode)[1]


def inventory_errors(env: Mapping[str, str] = os.environ) -> list[str]:
    """The inventory's own variables only (for tools that need nothing else)."""
    r = _Reader(env)
    _inventory(r, check_dirs=True)
    return r.errors


def inventory_settings(env: Mapping[str, str] = os.environ) -> InventorySettings:
    r = _Reader(env)
    inv = _inventory(r, check_dirs=True)
    if r.errors:
        raise ConfigError(r.errors)
    return inv


def _url(r: _Reader, name: str, default: str) -> str:
    raw = r.get(name)
    if not raw:
        return default
    if not re.match(r"^https?://[^/\s]+", raw) or looks_secret(raw):
        r.error(f"{name} must be an http(s) URL, got {shown(raw, name)}.")
        return default
    return raw.rstrip("/")


def _inventory(r: _Reader, check_dirs: bool) -> InventorySettings:
    ttl = float(r.number("EQUIPMENT_CACHE_TTL"))
    load_timeout = float(r.number("EQUIPMENT_LOAD_TIMEOUT"))
    budget = float(r.number("BOOKING_RETRY_BUDGET"))
    http_timeout = HTTP_TIMEOUT_DEFAULT
    raw = r.get("SHEETS_HTTP_TIMEOUT")
    if raw:
        try:
            parts = [float(p) for p in raw.split(",")]
            if len(parts) == 1:
                parts = [min(parts[0], 5.0), parts[0]]
            if len(parts) != 2 or not all(math.isfinite(p) and 0 < p <= HTTP_TIMEOUT_MAX for p in parts):
                raise ValueError
            http_timeout = (parts[0], parts[1])
        except ValueError:
            r.error(f"SHEETS_HTTP_TIMEOUT must be seconds, or 'connect,read' seconds, each above 0 and at "
                    f"most {HTTP_TIMEOUT_MAX:g}, got {shown(raw)}.")
    api_url = _url(r, "GOOGLE_SHEETS_API_URL", DEFAULT_SHEETS_API_URL)

    sheet_id = r.get("GOOGLE_SHEET_ID") or None
    if sheet_id:
        m = re.search(r"/d/([A-Za-z0-9_-]+)", sheet_id) if sheet_id.startswith("http") else None
        if m:
            sheet_id = m.group(1)
        if not re.fullmatch(r"[A-Za-z0-9_-]{10,200}", sheet_id) or looks_like_api_key(sheet_id):
            r.error(f"GOOGLE_SHEET_ID must be the sheet's ID (the part after /d/ in its URL), "
                    f"got {shown(sheet_id) if not sheet_id.startswith(('{', '-----')) else 'something else'}.")
            sheet_id = None
    raw_json = r.get("GOOGLE_SERVICE_ACCOUNT_JSON")
    cred_path = r.get("GOOGLE_APPLICATION_CREDENTIALS")
    info = None
    if cred_path and (looks_secret(cred_path) or cred_path.startswith("{")):
        r.error("GOOGLE_APPLICATION_CREDENTIALS must be a path to the key file; it holds what looks like "
                "the key itself (not shown): put that in GOOGLE_SERVICE_ACCOUNT_JSON instead.")
        cred_path = ""
    if raw_json:
        info = decode_service_account(raw_json, "GOOGLE_SERVICE_ACCOUNT_JSON", r.errors)
    elif cred_path and sheet_id:
        try:
            text = Path(cred_path).expanduser().read_text(encoding="utf-8")
        except OSError as e:
            r.error(f"GOOGLE_APPLICATION_CREDENTIALS: cannot read {shown(cred_path)} ({e.strerror or e}).")
        else:
            info = decode_service_account(text, "GOOGLE_APPLICATION_CREDENTIALS", r.errors)
    if sheet_id and not raw_json and not cred_path:
        r.error("GOOGLE_SHEET_ID is set but there are no credentials: set GOOGLE_SERVICE_ACCOUNT_JSON "
                "(the service-account JSON, raw or base64) or GOOGLE_APPLICATION_CREDENTIALS (a file path).")
    elif raw_json and not sheet_id and not r.get("GOOGLE_SHEET_ID"):
        r.error("GOOGLE_SERVICE_ACCOUNT_JSON is set but GOOGLE_SHEET_ID is not "
                "(without it the embedded CSV inventory is used).")

    tabs = {name: r.text(name, default, limit=100) for name, default in (
        ("EQUIPMENT_WORKSHEET", "Equipment"), ("RESERVATIONS_WORKSHEET", "Reservations"),
        ("SETTINGS_WORKSHEET", "Settings"), ("BOOKINGS_WORKSHEET", "Bookings"))}
    if len(set(tabs.values())) < len(tabs):
        r.error(f"{', '.join(tabs)} must name four different worksheets.")

    csv_path = Path(r.get("EQUIPMENT_CSV") or DEFAULT_CSV).expanduser()
    if not sheet_id and not csv_path.is_file():
        r.error(f"EQUIPMENT_CSV: no inventory file at {shown(r.get('EQUIPMENT_CSV') or str(csv_path))}.")
    # on Railway a volume, when the service has one, is where state survives a redeploy
    state_dir = Path(r.get("STATE_DIR") or r.get("RAILWAY_VOLUME_MOUNT_PATH") or DEFAULT_STATE_DIR).expanduser()
    if looks_secret(r.get("STATE_DIR")):
        r.error(f"STATE_DIR must be a folder, got {shown(r.get('STATE_DIR'))}.")
        state_dir = DEFAULT_STATE_DIR
    elif check_dirs:
        problem = _writable_dir(state_dir)
        if problem:
            r.error(f"STATE_DIR {shown(r.get('STATE_DIR') or str(state_dir))} {problem}: set it to a folder this process can "
                    "create and write (on Railway, a volume's mount path, or leave it empty).")

    database_url = r.get("DATABASE_URL")
    if database_url and not re.match(r"^postgres(ql)?://[^\s]+$", database_url):
        r.error("DATABASE_URL must be a postgresql:// URL (Railway: the Postgres service's DATABASE_URL), "
                "got something else (not shown).")
        database_url = ""

    return InventorySettings(
        database_url=database_url, database_timeout=float(r.number("DATABASE_TIMEOUT")),
        sheet_id=sheet_id, credentials_info=info, api_url=api_url, equipment_worksheet=tabs["EQUIPMENT_WORKSHEET"],
        bookings_worksheet=tabs["BOOKINGS_WORKSHEET"], reservations_worksheet=tabs["RESERVATIONS_WORKSHEET"],
        settings_worksheet=tabs["SETTINGS_WORKSHEET"], csv_path=csv_path, cache_ttl=ttl, load_timeout=load_timeout,
        http_timeout=http_timeout, retry_budget=budget, state_dir=state_dir)


def _writable_dir(path: Path) -> str:
    """"" when `path` is (or can be made) a folder this process can write; else why not."""
    if path.exists() and not path.is_dir():
        return "exists and is not a folder"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as e:
        return f"is not writable ({e.strerror or type(e).__name__})"
    return ""


def drop_empty_framework_vars(environ: Any = os.environ) -> None:
    """livekit-agents reads some variables itself and chokes on empty ones (an empty NUM_CPUS
    logs "failed to parse" in every process): empty means the default, so remove them."""
    for name in FRAMEWORK_VARS:
        if name in environ and not str(environ[name]).strip():
            del environ[name]
