"""Shared pieces of the benchmark: statistics, machine facts, process helpers, and the fake
providers (TTS, audio output) used to run a real AgentSession with no network and no room.

Nothing here measures anything by itself; bench/run.py and the part modules do.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"  # raw JSON per run (git-ignored)
PY = sys.executable

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# ---------------------------------------------------------------- statistics

def pct(values: Iterable[float], q: float) -> float | None:
    """Percentile with linear interpolation (q in 0..100). None for no data."""
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    if len(v) == 1:
        return v[0]
    k = (len(v) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def summary(values: Iterable[float]) -> dict[str, Any]:
    v = [x for x in values if x is not None]
    return {
        "n": len(v),
        "median": statistics.median(v) if v else None,
        "p95": pct(v, 95),
        "min": min(v) if v else None,
        "max": max(v) if v else None,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_ms(x: float | None, digits: int | None = None) -> str:
    """Seconds → a millisecond string."""
    if x is None:
        return "–"
    ms = x * 1000.0
    if digits is None:
        digits = 2 if ms < 10 else (1 if ms < 100 else 0)
    return f"{ms:,.{digits}f} ms"


def fmt_s(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f} s"


def fmt_ratio(x: float | None) -> str:
    if x is None:
        return "–"
    if x >= 100:
        return f"{x:,.0f}×"
    if x >= 10:
        return f"{x:.0f}×"
    return f"{x:.1f}×"


def fmt_mb(x: float | None) -> str:
    return "–" if x is None else f"{x / (1024 * 1024):,.0f} MB"


# ---------------------------------------------------------------- machine

def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    except OSError:
        nproc = str(os.cpu_count())
    mem_total = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"],
                                    capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = "", False
    import importlib.metadata as md

    def ver(p: str) -> str:
        try:
            return md.version(p)
        except md.PackageNotFoundError:
            return "-"

    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": nproc,
        "cpu": cpu,
        "mem_total": mem_total,
        "loadavg_at_start": load,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "livekit_agents": ver("livekit-agents"),
        "gspread": ver("gspread"),
        "commit": commit + ("+uncommitted changes" if dirty else ""),
        "hostname": socket.gethostname(),
    }


# ---------------------------------------------------------------- misc helpers

def write_json(name: str, data: Any) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    p = RESULTS / name
    p.write_text(json.dumps(data, indent=2, default=str))
    return p


class Budget:
    """A wall-clock budget for the whole run; parts ask how much is left and shrink."""

    def __init__(self, seconds: float):
        self.t0 = time.monotonic()
        self.total = seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.total - self.elapsed()


def log(*a: Any) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}]", *a, file=sys.stderr, flush=True)
