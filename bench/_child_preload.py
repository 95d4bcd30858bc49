"""Imported once by the bench's forkserver (never by the orchestrator), mirroring what the worker's
forkserver preloads: livekit.agents with its own warm-up (livekit.agents.ipc._preload: av, the VAD
and end-of-turn weights, the rtc library, the openai SDK), the plugins, gspread, and our modules.
Children forked from it start with all of that shared copy-on-write, as job processes do.

No guard: an ImportError here is skipped by multiprocessing, and the first child that needs the
module fails with the traceback, which lands in the report; any other error stops the forkserver,
so every child fails to start, also visibly."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import livekit.agents  # noqa: E402,F401
import livekit.plugins.deepgram  # noqa: E402,F401
import livekit.plugins.openai  # noqa: E402,F401
import livekit.plugins.silero  # noqa: E402,F401
import livekit.agents.ipc._preload  # noqa: E402,F401
import gspread  # noqa: E402,F401
import google.oauth2.service_account  # noqa: E402,F401

import agent  # noqa: E402,F401  (and through it voice, equipment, inventory/, settings, prompts)
from bench import baseline_seed, fake_providers, ours_call  # noqa: E402,F401
