"""What a caller heard, frame by frame, and the timings the tier records (not asserts)."""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(os.environ.get("E2E_RESULTS") or Path(__file__).resolve().parents[2] / "e2e" / "results" / "e2e-timings.json")


@dataclass
class Heard:
    """Frames of the agent's audio as they reached the caller: (monotonic time, is speech)."""

    frames: list[tuple[float, bool]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, t: float, voiced: bool, seconds: float = 0.01) -> None:
        with self._lock:
            self.frames.append((t, voiced))
            self.frame_seconds = seconds

    def first_speech(self, after: float = 0.0) -> float | None:
        with self._lock:
            return next((t for t, v in self.frames if v and t >= after), None)

    def speech_seconds(self, after: float = 0.0, before: float = float("inf")) -> float:
        with self._lock:
            step = getattr(self, "frame_seconds", 0.01)
            return sum(step for t, v in self.frames if v and after <= t < before)

    def bursts(self, gap: float = 0.6, after: float = 0.0) -> list[tuple[float, float]]:
        """Stretches of speech, merged across pauses shorter than `gap` (a sentence's commas)."""
        out: list[list[float]] = []
        with self._lock:
            for t, v in self.frames:
                if not v or t < after:
                    continue
                if out and t - out[-1][1] <= gap:
                    out[-1][1] = t
                else:
                    out.append([t, t])
        return [(a, b) for a, b in out]

    def last_frame(self) -> float | None:
        with self._lock:
            return self.frames[-1][0] if self.frames else None


class Results:
    """Timings of one test session, written as JSON for the benchmark step to read."""

    def __init__(self, path: Path = RESULTS) -> None:
        self.path = path
        self.calls: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.started = time.time()
        self.load_at_start = os.getloadavg()

    def add(self, scenario: str, caller: str, **values: Any) -> dict[str, Any]:
        row = {"scenario": scenario, "caller": caller,
               **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in values.items()}}
        with self._lock:
            self.calls.append(row)
        return row

    def write(self, meta: dict[str, Any]) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "what": "end-to-end call timings from tests/e2e (seconds; measured, never asserted)",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version(),
                        # 1/5/15-minute load averages: other work on the machine skews every timing
                        "loadavg_start": [round(x, 2) for x in self.load_at_start],
                        "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
            "duration_s": round(time.time() - self.started, 1),
            **meta,
            "calls": self.calls,
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        tmp.replace(self.path)
        return self.path
