"""bench/ stays importable and its report renders (no timing here: numbers belong to `make bench`)."""

from __future__ import annotations

import importlib

import pytest

PARTS = ["bench.common", "bench.baseline_seed", "bench.fake_providers", "bench.standins", "bench.callproc",
         "bench.part_pickup", "bench.part_worker", "bench.part_load", "bench.part_memory", "bench.report",
         "bench.run", "bench.ours_call"]


@pytest.mark.parametrize("name", PARTS)
def test_bench_module_imports(name: str) -> None:
    importlib.import_module(name)


def test_report_renders_with_nothing_measured() -> None:
    from bench import report
    from bench.common import machine

    text = report.render({"machine": machine(), "command": ".venv/bin/python bench/run.py", "parts": [],
                          "errors": {}, "total_seconds": 0.0})
    assert text.startswith("# Benchmarks")
    assert "not measured" in text.lower()


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
        baseline_seed._equipment_cache = None
        items = baseline_seed.load_equipment_from_sheets(sheets.env(tmp_path))
        assert len(items) == 12
        c = sheets.counts()
        assert (c.get("token"), c.get("metadata"), c.get("read")) == (1, 2, 1)
    finally:
        baseline_seed._equipment_cache = None
        sheets.stop()
