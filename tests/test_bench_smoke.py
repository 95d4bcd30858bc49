"""bench/ still measures the production call, and its report renders. No timing here: numbers
belong to `make bench` (results in BENCHMARKS.md)."""

from __future__ import annotations

import asyncio

import pytest
from livekit.agents import tts

import prompts
from settings import Settings
from tests.fakes.tts import FakeTTS

BENCH_ENV = {"OPENAI_API_KEY": "sk-bench-dummy", "DEEPGRAM_API_KEY": "bench-dummy", "GOOGLE_SHEET_ID": ""}
# the pickup's marks, in the order a call passes them (part_pickup's breakdown relies on it)
PICKUP_STEPS = ["entry", "t_inventory_end", "t_build_begin", "t_build_end", "t_session_built",
                "t_session_start_begin", "t_session_start_end", "greeting_queued"]


async def test_the_bench_pipeline_is_the_production_one_with_a_fake_voice(
    no_network: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What pickup measures: voice.build_pipeline's own plugins and options, only the voice fake."""
    from bench.fake_providers import BenchPipeline

    for name, value in BENCH_ENV.items():  # the plugins read their keys from the environment
        monkeypatch.setenv(name, value)
    marks: dict = {}
    bench = BenchPipeline(marks)
    pipeline = bench(Settings.lenient(BENCH_ENV), {})
    production = bench.production
    assert production is not None
    assert isinstance(production.tts, tts.FallbackAdapter)  # built, and its cost counted
    assert pipeline.session.stt is production.session.stt
    assert pipeline.session.llm is production.session.llm
    assert pipeline.session.vad is production.session.vad
    assert pipeline.session.turn_detection is production.session.turn_detection
    assert pipeline.session.options == production.session.options
    assert isinstance(pipeline.session.tts, FakeTTS) and pipeline.tts is pipeline.primary_voice is bench.voice
    assert marks["t_build_begin"] <= marks["t_build_end"] <= marks["t_session_built"]


async def test_one_bench_call_reaches_its_greeting_through_run_call(
    no_network: None, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """bench/ours_call.py drives agent.run_call through its seams: the greeting is queued, the fake
    voice speaks it into the fake output, and the inventory the call sees is known."""
    from bench import ours_call

    for name, value in {**BENCH_ENV, "STATE_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    marks: dict = {}
    async with ours_call.call(marks, {}) as (control, pipeline):
        greeting = prompts.greeting(Settings.lenient().business_name)
        heard = pipeline.voice.requests  # what the fake voice was asked to say
        try:
            for _ in range(200):  # bounded wait for events, not a timing assertion
                if pipeline.audio.first_frame_at is not None and greeting in heard:
                    break
                await asyncio.sleep(0.01)
            assert pipeline.audio.first_frame_at is not None, "no greeting audio reached the output"
            assert control.call.session_started and not control.call.end_reason
            assert sorted((k for k in PICKUP_STEPS if k in marks), key=marks.get) == PICKUP_STEPS
            assert marks["inventory"] == "known"
            # GreetingAudio renders the whole greeting with the fake primary voice, once; the
            # session speaks it sentence by sentence with the same fake voice
            assert heard.count(greeting) == 1, heard
            assert any(r != greeting and greeting.startswith(r) for r in heard), heard
        finally:
            control.cancel_all()
            await asyncio.wait_for(pipeline.session.aclose(), 5)


def test_report_renders_with_nothing_measured() -> None:
    from bench import report
    from bench.common import machine

    text = report.render({"machine": machine(), "command": ".venv/bin/python bench/run.py", "parts": [],
                          "errors": {}, "total_seconds": 0.0})
    assert text.startswith("# Benchmarks")
    assert "not measured" in text.lower()


def test_report_names_a_failed_part() -> None:
    from bench import report
    from bench.common import machine

    text = report.render({"machine": machine(), "command": ".venv/bin/python bench/run.py",
                          "parts": ["memory"], "total_seconds": 0.0,
                          "errors": {"memory": "Traceback (most recent call last):\nRuntimeError: boom"},
                          "memory": {"n": 0, "turn": ["TimeoutError: "], "errors": []}})
    assert "part `memory` failed: `RuntimeError: boom`" in text
    assert "memory: the scripted turn did not complete: TimeoutError" in text


def test_stats_helpers() -> None:
    from bench.common import pct, summary

    assert pct([1.0, 2.0, 3.0], 50) == 2.0
    s = summary([3.0, 1.0, 2.0])
    assert s["n"] == 3 and s["median"] == 2.0 and s["max"] == 3.0


def test_baseline_loader_counts_seed_requests(tmp_path) -> None:
    """The seed's loader through real gspread against the stand-in: token + 3 Sheets GETs."""
    from bench import baseline_seed
    from bench.standins import Sheets

    sheets = Sheets(rows=12)
    try:
        baseline_seed.clear_cache()
        items = baseline_seed.load_equipment_from_sheets(sheets.env(tmp_path))
        assert len(items) == 12
        c = sheets.counts()
        assert (c.get("token"), c.get("metadata"), c.get("read")) == (1, 2, 1)
    finally:
        baseline_seed.clear_cache()
        sheets.stop()


def test_state_bench_quick_on_sqlite_produces_its_results(tmp_path) -> None:
    """bench/state.py end to end on SQLite with tiny sample counts (no PostgreSQL needed): every
    part runs and the raw JSON has what section 7 of BENCHMARKS.md is rendered from. No timing
    asserted; BENCHMARKS.md is not touched (--no-write)."""
    import json
    import subprocess
    import sys

    from bench import state
    from bench.common import ROOT

    out = tmp_path / "state.json"
    r = subprocess.run([sys.executable, "bench/state.py", "--quick", "--engines", "sqlite", "--samples", "3",
                        "--sim-minutes", "0.25", "--no-write", "--json", str(out)],
                       cwd=str(ROOT), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["errors"] == {}, res["errors"]
    assert res["engines"] == ["sqlite"] and res["quick"] is True
    assert {"machine", "uptime_at_start", "loadavg_at_start", "loadavg_at_end", "command", "total_seconds"} <= set(res)
    pickup = res["pickup"]["sqlite"]
    assert {"settings", "construct", "snapshot", "total"} <= set(pickup["in_process"])
    assert pickup["in_process"]["known"] == 3 and pickup["new_process"]["known"] >= 2
    assert pickup["sheets_requests_in_process"] == {}  # a fresh stored snapshot: no Sheets request
    prepared = pickup["prepared_process"]  # warm() in the child first, as agent.prewarm: the fast path
    assert {"build", "warm", "snapshot"} <= set(prepared) and prepared["snapshot"]["p95"] is not None
    assert prepared["known"] == prepared["fast_path"] == prepared["processes"] == 3, prepared["errors"]
    assert pickup["sheets_requests_prepared"] == {}
    booking = res["booking"]["sqlite"]
    assert booking["confirmed"] == 3 and booking["rows_added"] == {"Reservations": 3, "Bookings": 3}
    assert booking["book"]["p95"] is not None and booking["requests_per_booking"]["append"] == 2
    replicas = res["replicas"]["sqlite"]
    assert replicas["replicas"] == 3 and replicas["known"] == replicas["calls"]
    assert {"per_min", "reads_per_min", "reads_per_ttl", "counts"} <= set(replicas)  # 15 simulated s: maybe no read
    avail = res["availability"]["sqlite"]
    for size in map(str, state.RESERVATIONS):
        cell = avail[size]
        assert {"snapshot", "pickup_total", "free_units_all", "free_units_category", "ratio_vs_first"} <= set(cell)
        assert cell["sheets_requests_during_samples"] == {}
    assert avail["10000"]["reservations_in_snapshot"] >= 9000  # those ended over a week ago are dropped
    assert res["availability"]["prepared_sizes"] == list(state.PREPARED_SIZES)
    for size in map(str, state.PREPARED_SIZES):
        prep = avail[size]["prepared"]
        assert prep["process"]["fast_path"] == prep["process"]["processes"], prep["process"]["errors"]
        assert prep["unprepared_process"]["known"] == prep["unprepared_process"]["processes"]
        assert prep["one_process"]["fast_path"] == prep["one_process"]["samples"] > 0
        assert prep["sheets_requests"] == {}
    miss = avail["10000"]["prepared"]  # the stored snapshot replaced after warm(): the full read
    assert miss["miss_process"]["known"] == miss["miss_process"]["processes"] and miss["miss_process"]["fast_path"] == 0
    assert miss["miss_one_process"]["missed"] == miss["miss_one_process"]["samples"] > 0
    model = res["fast_path_model"]["rows"]
    assert all(0 <= v <= 1 for row in model.values() for v in row.values())
    # section 7 renders from it, between its markers, and bench/report.py keeps it when it rewrites the file
    from bench import report

    text = state.render(res, "bench/results/x.json")
    assert "### 7a." in text and "### 7d." in text and "### 7e." in text and "pickup goal, in short" in text
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n## 6. x\n\n## How to rerun\n\nrerun\n")
    state._write_section(doc, text)
    first = doc.read_text()
    assert first.index(report.STATE_TITLE) < first.index(report.STATE_START) < first.index("## How to rerun")
    report.write(doc, "# Benchmarks\n\nnew\n\n## How to rerun\n\nagain\n")
    again = doc.read_text()
    assert report.state_block(again) == report.state_block(first) and "new" in again and "again" in again
    state._write_section(doc, "replaced")
    assert report.state_block(doc.read_text()) == f"{report.STATE_START}\nreplaced\n{report.STATE_END}"
    assert doc.read_text().count(report.STATE_TITLE) == 1
