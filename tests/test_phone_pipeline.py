"""The voice pipeline as tuned for a phone line (voice.py), and what the forkserver preloads.

Each setting here was measured on the end-to-end tier (BENCHMARKS.md, "End to end"): these tests
pin the values, the e2e tier shows what they do on a real call."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import voice
import worker
from settings import Settings
from tests.fakes.inventory import FakeInventory

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-dummy")
    monkeypatch.setenv("DEEPGRAM_API_KEY", "dg-test-dummy")


# These tests are async: AgentSession takes the running loop (run sync, they would depend on
# whichever loop an earlier test left behind).
async def test_a_hang_up_does_not_hold_the_job_waiting_for_a_transcript(keys: None) -> None:
    """The framework waits 2.0 s for a final transcript at every session close; a caller who
    hung up in silence has none coming (e2e: hang-up -> job ended 2.05 s, every call)."""
    session = voice.build_pipeline(Settings.lenient({}), {}).session
    assert session.options.session_close_transcript_timeout == voice.CLOSE_TRANSCRIPT_TIMEOUT == 0.5


async def test_the_callers_first_words_reach_the_stt(keys: None) -> None:
    """No AEC warm-up: the framework would feed the STT silence for the first 3 s of the greeting
    on an inbound SIP call, and a caller who talks at once loses their first words."""
    session = voice.build_pipeline(Settings.lenient({}), {}).session
    assert session.options.aec_warmup_duration is None


async def test_endpointing_delays_come_from_the_settings(keys: None) -> None:
    session = voice.build_pipeline(Settings.lenient({"MIN_ENDPOINTING_DELAY": "0.2",
                                                     "MAX_ENDPOINTING_DELAY": "1.5"}), {}).session
    assert session.options.endpointing["min_delay"] == 0.2
    assert session.options.endpointing["max_delay"] == 1.5
    default = Settings.lenient({})
    assert (default.min_endpointing_delay, default.max_endpointing_delay) == (0.3, 1.0)


def test_the_vads_end_of_speech_silence_comes_from_the_settings() -> None:
    from types import SimpleNamespace

    proc = SimpleNamespace(userdata={})
    voice.prewarm(proc, Settings.lenient({"VAD_MIN_SILENCE": "0.35"}))  # type: ignore[arg-type]
    assert proc.userdata["vad"].min_silence_duration == 0.35


async def test_the_inventory_names_are_the_stt_keyterms(keys: None) -> None:
    """Deepgram is told the shop's words (unit names, categories), before the session opens its
    stream (set later, the plugin reconnects)."""
    snap = await FakeInventory().snapshot()
    terms = voice.inventory_keyterms(snap)
    assert "Kubota KX040 Mini Excavator" in terms and "Excavators" in terms
    assert len(terms) == len({t.casefold() for t in terms}), "no duplicates"
    session = voice.build_pipeline(Settings.lenient({}), {}).session
    assert voice.expect_words(session, terms) is True
    assert session.stt._opts.keyterm == terms  # type: ignore[union-attr]
    assert voice.expect_words(session, []) is False
    assert voice.inventory_keyterms(None) == []


def test_keyterms_are_bounded() -> None:
    from types import SimpleNamespace

    units = [SimpleNamespace(name=f"Unit {i} " + "x" * 100, category=f"Cat {i}") for i in range(80)]
    terms = voice.inventory_keyterms(SimpleNamespace(units=units))
    assert len(terms) == voice.MAX_KEYTERMS
    assert all(len(t) <= voice.MAX_KEYTERM_CHARS for t in terms)


def test_the_forkserver_preloads_what_a_call_imports() -> None:
    """Imported in the forkserver (worker.PRELOAD -> agent -> voice), a call's process has every
    module it uses already: none is imported on the call's event loop (e2e finding 4), and a
    replacement idle process starts without importing the inventory and the SDKs again."""
    code = ("import sys, worker; [__import__(m) for m in worker.PRELOAD]; import voice; "
            "before = set(sys.modules); "
            "[__import__(m) for m in voice.CALL_TIME_IMPORTS]; "
            "import agent, rental_agent, booking_desk, equipment, prompts; "
            "print(sorted(set(sys.modules) - before))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"imported after the preload: {out.stdout}"
    assert worker.PRELOAD == ["agent"]
