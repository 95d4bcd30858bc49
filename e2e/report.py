"""The end-to-end tier's timings as a markdown table (median, p95, n) for BENCHMARKS.md.

    .venv/bin/python e2e/report.py [e2e/results/e2e-timings.json ...]

Several files (runs) are pooled. p95 is the nearest-rank value (with fewer than 20 samples it is
the largest or next to largest: read n). Each row names the scenarios it is taken from.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any, Iterable

DEFAULT = Path(__file__).resolve().parent / "results" / "e2e-timings.json"

# (label, metric key, scenarios (None: all), callers (None: both))
ROWS: list[tuple[str, str, tuple[str, ...] | None, tuple[str, ...] | None]] = [
    ("INVITE → 200 OK, one call at a time", "invite_to_200_s",
     ("greet_and_hang_up", "question_answered", "booking", "barge_in", "first_words", "capacity_busy_call"), ("sip",)),
    ("INVITE → 200 OK, five at once", "invite_to_200_s", ("five_at_once",), ("sip",)),
    ("INVITE → 200 OK, overflow answer", "invite_to_200_s", ("capacity_overflow",), ("sip",)),
    ("answer → first agent audio (SIP caller)", "answer_to_first_audio_s",
     ("greet_and_hang_up", "question_answered", "booking", "capacity_busy_call"), ("sip",)),
    ("answer → first agent audio, five at once (SIP)", "answer_to_first_audio_s", ("five_at_once",), ("sip",)),
    ("answer → first audio of the overflow answer (SIP)", "answer_to_first_audio_s", ("capacity_overflow",), ("sip",)),
    ("room joined → first agent audio (rtc caller, dispatch included)", "answer_to_first_audio_s",
     ("greet_and_hang_up", "question_answered"), ("rtc",)),
    ("caller hangs up → job ended", "hangup_to_job_end_s", None, None),
    ("agent's goodbye (end of its audio) → BYE at the caller", "goodbye_end_to_bye_s", ("booking",), ("sip",)),
    ("voice to voice: end of the caller's speech → first agent audio", "voice_to_voice_s", None, None),
    ("voice to voice, SIP callers", "voice_to_voice_s", None, ("sip",)),
    ("voice to voice, rtc callers", "voice_to_voice_s", None, ("rtc",)),
    ("late worker: registered → waiting caller hears the agent", "registered_to_first_audio_s", None, None),
    ("first words: share of the speech the STT received", "first_words_share", ("first_words",), ("sip",)),
]


def load(paths: Iterable[Path]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    calls, metas = [], []
    for p in paths:
        doc = json.loads(Path(p).read_text())
        metas.append({k: v for k, v in doc.items() if k != "calls"})
        calls += doc.get("calls", [])
    return calls, metas


def values(calls: list[dict[str, Any]], key: str, scenarios: tuple[str, ...] | None,
           callers: tuple[str, ...] | None) -> list[float]:
    out: list[float] = []
    for c in calls:
        if scenarios is not None and c.get("scenario") not in scenarios:
            continue
        if callers is not None and c.get("caller") not in callers:
            continue
        if key == "first_words_share":
            v: Any = (c["stt_heard_s"] / c["spoken_s"]) if c.get("spoken_s") else None
        elif key == "voice_to_voice_s" and "end_of_speech_to_first_reply_audio_s" in c and key not in c:
            v = c["end_of_speech_to_first_reply_audio_s"]
        else:
            v = c.get(key)
        for x in (v if isinstance(v, list) else [v]):
            if isinstance(x, (int, float)) and math.isfinite(x):
                out.append(float(x))
    return out


def p95(xs: list[float]) -> float:
    s = sorted(xs)
    return s[max(0, math.ceil(0.95 * len(s)) - 1)]


def table(calls: list[dict[str, Any]]) -> str:
    lines = ["| Measure | median | p95 | min | max | n |", "| --- | --- | --- | --- | --- | --- |"]
    for label, key, scenarios, callers in ROWS:
        xs = values(calls, key, scenarios, callers)
        if not xs:
            continue
        lines.append(f"| {label} | {statistics.median(xs):.2f} | {p95(xs):.2f} | {min(xs):.2f} | "
                     f"{max(xs):.2f} | {len(xs)} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv[1:]] or [DEFAULT]
    calls, metas = load(paths)
    for m in metas:
        print(f"<!-- {m.get('started')} calls_per_scenario={m.get('calls_per_scenario')} "
              f"machine={m.get('machine')} worker_env={m.get('worker_env', '')!r} -->")
    print(table(calls))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
