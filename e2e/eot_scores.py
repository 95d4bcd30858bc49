"""What the end-of-turn model makes of a caller's speech, for tuning turn-taking with evidence.

    .venv/bin/python e2e/eot_scores.py            a table (markdown) of scores, complete vs cut short

The agent's turn detector (livekit-agents 1.8.9, `TurnDetector(version="v1-mini")`, run locally)
scores **audio only**: at 200 ms of silence after speech it is given the last 1.2 s of the caller's
audio at 16 kHz (`inference/eot/transports.py`, `_LocalTransport._predict(pcm_snapshot)`); the
transcript plays no part, so whether Deepgram punctuates and capitalises cannot change a score. A
score under the `en` threshold (0.36) makes the agent wait MAX_ENDPOINTING_DELAY instead of
MIN_ENDPOINTING_DELAY. This scores the same window for utterances a caller ends their turn with
("complete") and the same speech cut where a caller might pause mid-sentence ("cut short"), spoken
by espeak-ng, clean (16 kHz) and through a phone line (8 kHz G.711 mu-law, as livekit-sip carries
it). A threshold can only be tuned on speech where the two groups separate.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e import audio  # noqa: E402

COMPLETE = [
    "Hi, do you have a mini excavator I could rent tomorrow?",
    "Do you have a generator for this weekend?",
    "How much is the scissor lift for a week?",
    "I need a concrete mixer on Friday.",
    "Yes, please book it.",
    "My name is Dana Smith.",
    "That's the best number to reach me.",
    "No, that's all. Thank you, goodbye.",
    "Can I pick it up at eight in the morning?",
    "What time do you close on Saturday?",
    "I'd like to extend my booking by two days.",
    "Can I speak to someone at the shop?",
]
CUT_SHORT = [
    "Hi, do you have a",
    "I need a concrete mixer for",
    "How much is the",
    "My name is",
    "I'd like to rent a mini excavator from",
    "Can I pick it up at",
    "I was wondering if",
    "Yes, and also",
    "It's for a job on",
    "What time do you",
]
RATE = 16000
SILENCE = 0.2  # the detector is asked at 200 ms of silence (MIN_SILENCE_DURATION_MS)
WINDOW = 1.2  # seconds of audio it sees (_CLIENT_BUFFER_SECONDS)


def _resample(pcm: bytes, src: int, dst: int) -> bytes:
    return subprocess.run(["sox", "-V1", "-t", "raw", "-r", str(src), "-e", "signed", "-b", "16", "-c", "1", "-",
                           "-t", "raw", "-r", str(dst), "-e", "signed", "-b", "16", "-c", "1", "-"],
                          input=pcm, capture_output=True, check=True).stdout


def window(text: str, phone: bool) -> np.ndarray:
    if phone:
        pcm8 = audio.ulaw_decode(audio.ulaw_encode(audio.speak(text, 8000)))
        pcm = _resample(pcm8, 8000, RATE)
    else:
        pcm = audio.speak(text, RATE)
    _, last = audio.voiced_bounds(pcm, RATE)
    a = np.frombuffer(pcm, dtype=np.int16)[: int(last * RATE)]
    a = np.concatenate([a, np.zeros(int(SILENCE * RATE), dtype=np.int16)])
    return np.ascontiguousarray(a[-int(WINDOW * RATE):])


def main() -> int:
    from livekit.agents.inference.eot.languages import LOCAL_LANGUAGES
    from livekit.local_inference import EOT, init_eot

    init_eot()
    eot = EOT()
    threshold = LOCAL_LANGUAGES["en"]
    rows = []
    groups: dict[tuple[str, str], list[float]] = {}
    for kind, texts in (("complete", COMPLETE), ("cut short", CUT_SHORT)):
        for text in texts:
            scores = []
            for line in ("clean", "phone"):
                p = float(eot.predict(window(text, line == "phone")))
                groups.setdefault((kind, line), []).append(p)
                scores.append(p)
            rows.append((kind, text, *scores))
    print(f"End-of-turn scores (turn-detector-v1-mini, local; `en` threshold {threshold}; espeak-ng voice)\n")
    print("| Utterance | Kind | clean 16 kHz | phone (G.711) |")
    print("| --- | --- | --- | --- |")
    for kind, text, clean, phone in rows:
        print(f"| {text} | {kind} | {clean:.2f} | {phone:.2f} |")
    print("\n| Group | line | median | min | max | above threshold |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (kind, line), ps in groups.items():
        above = sum(p >= threshold for p in ps)
        print(f"| {kind} | {line} | {statistics.median(ps):.2f} | {min(ps):.2f} | {max(ps):.2f} | {above}/{len(ps)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
