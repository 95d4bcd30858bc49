"""Real speech for the end-to-end tier: espeak-ng speaks, sox resamples, numpy measures.

Used by the provider stand-ins (the voices the agent speaks with) and by the callers (what the
caller says). Everything is 16-bit signed little-endian mono PCM unless a name says otherwise.
"""

from __future__ import annotations

import functools
import shutil
import subprocess

import numpy as np

VOICE = "en-us"
WORDS_PER_MINUTE = 170

# A 10 ms frame is speech when its RMS is above this (int16 scale; espeak's voice sits around
# 2000-8000, digital silence at 0, G.711 silence at a few units).
SPEECH_RMS = 400.0


def tools_missing() -> list[str]:
    return [t for t in ("espeak-ng", "sox") if shutil.which(t) is None]


@functools.lru_cache(maxsize=256)
def speak(text: str, rate: int, voice: str = VOICE, wpm: int = WORDS_PER_MINUTE) -> bytes:
    """`text` spoken by espeak-ng, as PCM at `rate` Hz. Cached per (text, rate, voice)."""
    espeak = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(wpm), "--stdout", text],
        check=True, capture_output=True, timeout=30,
    )
    # espeak's WAV header has placeholder sizes; sox reads it anyway (-V1: no warnings)
    sox = subprocess.run(
        ["sox", "-V1", "-t", "wav", "-", "-t", "raw", "-r", str(rate), "-e", "signed", "-b", "16",
         "-c", "1", "-"],
        input=espeak.stdout, check=True, capture_output=True, timeout=30,
    )
    return sox.stdout


def silence(seconds: float, rate: int) -> bytes:
    return b"\x00\x00" * int(round(seconds * rate))


def rms(pcm: bytes | np.ndarray) -> float:
    a = np.frombuffer(pcm, dtype=np.int16) if isinstance(pcm, (bytes, bytearray, memoryview)) else pcm
    if a.size == 0:
        return 0.0
    return float(np.sqrt(np.mean(a.astype(np.float64) ** 2)))


def is_speech(pcm: bytes | np.ndarray, threshold: float = SPEECH_RMS) -> bool:
    return rms(pcm) > threshold


def speech_seconds(pcm: bytes, rate: int, threshold: float = SPEECH_RMS) -> float:
    """How much of `pcm` (10 ms frames) is above the speech threshold."""
    a = np.frombuffer(pcm, dtype=np.int16)
    n = rate // 100
    frames = a[: a.size - a.size % n].reshape(-1, n) if a.size >= n else a.reshape(0, n)
    if frames.size == 0:
        return 0.0
    levels = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    return float(np.count_nonzero(levels > threshold)) / 100.0


def voiced_bounds(pcm: bytes, rate: int, threshold: float = SPEECH_RMS) -> tuple[float, float]:
    """(first, last) second of `pcm` (10 ms frames) above the speech threshold: espeak pads its
    speech with silence, and "end of the caller's speech" is the last voiced frame."""
    a = np.frombuffer(pcm, dtype=np.int16)
    n = rate // 100
    frames = a[: a.size - a.size % n].reshape(-1, n) if a.size >= n else a.reshape(0, n)
    levels = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1)) if frames.size else np.zeros(0)
    voiced = np.flatnonzero(levels > threshold)
    if voiced.size == 0:
        return 0.0, 0.0
    return float(voiced[0]) / 100.0, float(voiced[-1] + 1) / 100.0


# -- G.711 mu-law (what a phone line carries) ------------------------------------------------

_BIAS = 0x84
_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])


def ulaw_encode(pcm: bytes) -> bytes:
    """16-bit PCM -> G.711 mu-law bytes (bit-exact with the reference coder, audioop.lin2ulaw)."""
    x = np.frombuffer(pcm, dtype=np.int16).astype(np.int32) >> 2  # 14-bit
    negative = x < 0
    mag = np.minimum(np.where(negative, -x, x), 8159) + 0x21
    seg = np.searchsorted(_SEG_END, mag)  # first segment whose end >= mag
    uval = np.where(seg >= 8, 0x7F, (seg << 4) | ((mag >> (seg + 1)) & 0x0F))
    out = np.where(negative, uval ^ 0x7F, uval ^ 0xFF)
    return out.astype(np.uint8).tobytes()


def ulaw_decode(data: bytes) -> bytes:
    u = ~np.frombuffer(data, dtype=np.uint8).astype(np.int32) & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    mag = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return np.where(sign != 0, -mag, mag).astype(np.int16).tobytes()
