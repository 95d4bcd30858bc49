"""A Deepgram stand-in speaking the wire protocol the livekit deepgram plugin uses.

    python -m tests.e2e.standins.deepgram_server [--port 0]   prints "READY <port>"

The agent reaches it through DEEPGRAM_BASE_URL (agent.py appends /v1/listen and /v1/speak).

Speech to text, `GET /v1/listen` (websocket; `Authorization: Token <key>` required):
  binary linear16 audio at ?sample_rate= (16000), text control messages KeepAlive, Finalize,
  CloseStream. End-pointing runs on the real audio: a 10 ms frame is speech when its RMS is above
  E2E_DG_SPEECH_RMS (400); an utterance starts after 30 ms of speech (SpeechStarted, when
  vad_events=true) and is final after ?endpointing= ms of silence, never less than
  E2E_DG_MIN_ENDPOINT_MS (300: an energy detector is not Deepgram's model, and espeak pauses up to
  ~230 ms at a comma). Results carry is_final / speech_final / from_finalize as Deepgram does,
  interim results every 250 ms of speech when interim_results=true, UtteranceEnd after
  ?utterance_end_ms= of silence when given. The words come from the script: the k-th utterance on a
  connection is the k-th transcript (one connection is one call), spread evenly over the speech.
  `POST /v1/listen` (prerecorded) answers the first scripted transcript.

Text to speech, `/v1/speak` (espeak-ng voice, linear16 at ?sample_rate=, 24000 by default):
  websocket: Speak {text} accumulates, Flush -> binary audio then Flushed, Clear -> Cleared,
  Close -> the socket closes; HTTP POST {"text"} -> the audio (container=none: raw PCM).

Script (`POST /_e2e/script`): {"transcripts": ["Do you have a mini excavator?", ...],
"default": "Hello?"}. E2E_DG_TTS_DELAY_MS adds a fixed delay before the first audio byte.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import time
import uuid
import wave
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from tests.e2e import audio
from tests.e2e.standins.common import EventLog, control_routes, dumps, env_float, serve, token_of

SPEECH_RMS = env_float("E2E_DG_SPEECH_RMS", audio.SPEECH_RMS)
MIN_ENDPOINT_MS = env_float("E2E_DG_MIN_ENDPOINT_MS", 300.0)
TTS_DELAY_MS = env_float("E2E_DG_TTS_DELAY_MS", 0.0)
START_FRAMES = 3  # 30 ms of speech opens an utterance
INTERIM_EVERY = 0.25
MODEL_INFO = {"name": "2-general-nova", "version": "2024-01-18.26916", "arch": "nova-3"}

log = EventLog()
script: dict[str, Any] = {"transcripts": [], "default": "Hello?"}


def set_script(body: dict) -> None:
    script["transcripts"] = [str(t) for t in body.get("transcripts", [])]
    script["default"] = str(body.get("default", "Hello?"))


def transcript_for(index: int) -> str:
    lines = script["transcripts"]
    return lines[index] if index < len(lines) else script["default"]


def _flag(q: Any, name: str, default: bool) -> bool:
    v = q.get(name)
    return default if v is None else v.lower() == "true"


# -------------------------------------------------------------------------- speech to text


@dataclass
class Utterance:
    index: int
    text: str
    start: float  # audio seconds
    last_voiced: float
    words: list[str] = field(default_factory=list)
    emitted: int = 0  # words already sent in an is_final result
    last_interim: float = 0.0

    def word_objects(self, upto: int, start_at: int = 0) -> list[dict]:
        n = max(len(self.words), 1)
        span = max(self.last_voiced - self.start, 0.1)
        out = []
        for i in range(start_at, upto):
            w = self.words[i]
            ws = self.start + span * i / n
            we = self.start + span * (i + 1) / n
            bare = w.strip(".,!?;:\"'").lower()
            out.append({"word": bare, "start": round(ws, 3), "end": round(we, 3),
                        "confidence": 0.99, "punctuated_word": w})
        return out


class ListenSession:
    def __init__(self, ws: web.WebSocketResponse, q: Any, conn_id: str) -> None:
        self.ws = ws
        self.conn_id = conn_id
        self.rate = int(q.get("sample_rate", "16000"))
        self.channels = int(q.get("channels", "1"))
        self.interim = _flag(q, "interim_results", False)
        self.vad_events = _flag(q, "vad_events", False)
        ep = q.get("endpointing", "10")
        self.endpoint_ms: float | None = None if ep.lower() == "false" else max(float(ep), MIN_ENDPOINT_MS)
        ue = q.get("utterance_end_ms")
        self.utterance_end_ms = float(ue) if ue else None
        self.request_id = str(uuid.uuid4())
        self.frame = self.rate // 100 * self.channels
        self.buf = np.zeros(0, dtype=np.int16)
        self.samples = 0  # per channel, processed
        self.voiced_run = 0
        self.silence_ms = 0.0
        self.utt: Utterance | None = None
        self.count = 0
        self.pending_utterance_end: float | None = None  # last word end, waiting for UtteranceEnd

    @property
    def now(self) -> float:
        return self.samples / self.rate

    async def send(self, msg: dict) -> None:
        if not self.ws.closed:
            await self.ws.send_str(dumps(msg))

    def results(self, utt: Utterance, words: list[dict], *, is_final: bool, speech_final: bool,
                from_finalize: bool = False) -> dict:
        start = words[0]["start"] if words else self.now
        end = words[-1]["end"] if words else self.now
        return {
            "type": "Results", "channel_index": [0, 1], "duration": round(max(end - start, 0.0), 3),
            "start": round(start, 3), "is_final": is_final, "speech_final": speech_final,
            "from_finalize": from_finalize,
            "channel": {"alternatives": [{
                "transcript": " ".join(w["punctuated_word"] for w in words),
                "confidence": 0.99 if words else 0.0, "words": words}]},
            "metadata": {"request_id": self.request_id, "model_info": MODEL_INFO,
                         "model_uuid": "e2e-standin"},
        }

    async def feed(self, data: bytes) -> None:
        self.buf = np.concatenate([self.buf, np.frombuffer(data, dtype=np.int16)])
        while self.buf.size >= self.frame:
            chunk, self.buf = self.buf[: self.frame], self.buf[self.frame:]
            if self.channels > 1:
                chunk = chunk.reshape(-1, self.channels)[:, 0]
            self.samples += chunk.size
            await self.step(audio.rms(chunk) > SPEECH_RMS)

    async def step(self, voiced: bool) -> None:
        if self.utt is None:
            self.voiced_run = self.voiced_run + 1 if voiced else 0
            if voiced:
                self.pending_utterance_end = None
            elif self.pending_utterance_end is not None and self.utterance_end_ms is not None:
                if self.now - self.pending_utterance_end >= self.utterance_end_ms / 1000:
                    await self.send({"type": "UtteranceEnd", "channel": [0, 1],
                                     "last_word_end": round(self.pending_utterance_end, 3)})
                    self.pending_utterance_end = None
            if self.voiced_run >= START_FRAMES:
                start = self.now - START_FRAMES / 100
                text = transcript_for(self.count)
                self.utt = Utterance(self.count, text, start, self.now, words=text.split())
                self.count += 1
                self.silence_ms = 0.0
                log.add("stt_speech_started", conn=self.conn_id, utterance=self.utt.index,
                        audio_t=round(start, 3), text=text)
                if self.vad_events:
                    await self.send({"type": "SpeechStarted", "channel": [0, 1],
                                     "timestamp": round(start, 3)})
            return
        utt = self.utt
        if voiced:
            self.silence_ms = 0.0
            utt.last_voiced = self.now
        else:
            self.silence_ms += 10.0
        if self.interim and voiced and self.now - utt.last_interim >= INTERIM_EVERY:
            utt.last_interim = self.now
            # one word per 300 ms of speech, the last one only in the final result
            shown = min(len(utt.words) - 1, max(utt.emitted, math.ceil((self.now - utt.start) / 0.3)))
            if shown > utt.emitted:
                await self.send(self.results(utt, utt.word_objects(shown, utt.emitted),
                                             is_final=False, speech_final=False))
        if self.endpoint_ms is not None and self.silence_ms >= self.endpoint_ms:
            await self.finish(speech_final=True)

    async def finish(self, *, speech_final: bool, from_finalize: bool = False) -> None:
        utt = self.utt
        if utt is None:
            if from_finalize:  # nothing pending: Deepgram still answers the Finalize
                await self.send({**self.results(Utterance(-1, "", self.now, self.now), [],
                                                is_final=True, speech_final=False),
                                 "from_finalize": True})
            return
        words = utt.word_objects(len(utt.words), utt.emitted)
        utt.emitted = len(utt.words)
        await self.send(self.results(utt, words, is_final=True, speech_final=speech_final,
                                     from_finalize=from_finalize))
        if speech_final:
            log.add("stt_final", conn=self.conn_id, utterance=utt.index, text=utt.text,
                    audio_start=round(utt.start, 3), audio_end=round(utt.last_voiced, 3),
                    sent_at_audio=round(self.now, 3), from_finalize=from_finalize)
            self.pending_utterance_end = utt.last_voiced
            self.utt = None
            self.voiced_run = 0

    async def finalize(self) -> None:
        """Finalize: flush what has been heard as an is_final result (from_finalize)."""
        utt = self.utt
        if utt is not None:
            log.add("stt_finalize", conn=self.conn_id, utterance=utt.index, audio_t=round(self.now, 3))
            words = utt.word_objects(len(utt.words), utt.emitted)
            utt.emitted = len(utt.words)
            if words:
                await self.send(self.results(utt, words, is_final=True, speech_final=False,
                                             from_finalize=True))
        else:
            await self.finish(speech_final=False, from_finalize=True)

    def metadata(self) -> dict:
        return {"type": "Metadata", "transaction_key": "deprecated", "request_id": self.request_id,
                "sha256": "", "created": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
                "duration": round(self.now, 3), "channels": self.channels,
                "models": ["e2e-standin"], "model_info": {"e2e-standin": MODEL_INFO}}


async def listen_ws(request: web.Request) -> web.StreamResponse:
    if token_of(request, "Token") is None:
        return web.json_response({"err_code": "INVALID_AUTH", "err_msg": "Invalid credentials."},
                                 status=401)
    if request.query.get("encoding", "linear16") != "linear16":
        return web.json_response({"err_msg": "e2e stand-in: only linear16"}, status=400)
    ws = web.WebSocketResponse(heartbeat=None)
    await ws.prepare(request)
    conn_id = uuid.uuid4().hex[:8]
    session = ListenSession(ws, request.query, conn_id)
    log.add("stt_connect", conn=conn_id, query=dict(request.query), keyterms=request.query.getall("keyterm", []))
    try:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await session.feed(msg.data)
            elif msg.type == WSMsgType.TEXT:
                kind = json.loads(msg.data).get("type")
                if kind == "Finalize":
                    await session.finalize()
                elif kind == "CloseStream":
                    await session.finish(speech_final=True)
                    await session.send(session.metadata())
                    await ws.close()
                    break
                # KeepAlive: nothing to do
    finally:
        log.add("stt_disconnect", conn=conn_id, audio_seconds=round(session.now, 3),
                utterances=session.count)
    return ws


async def listen_http(request: web.Request) -> web.Response:
    if token_of(request, "Token") is None:
        return web.json_response({"err_code": "INVALID_AUTH"}, status=401)
    await request.read()
    text = transcript_for(0)
    words = text.split()
    alt = {"transcript": text, "confidence": 0.99,
           "words": [{"word": w.strip(".,!?").lower(), "punctuated_word": w, "start": i * 0.3,
                      "end": i * 0.3 + 0.3, "confidence": 0.99} for i, w in enumerate(words)]}
    log.add("stt_prerecorded", text=text)
    return web.json_response({"metadata": {"request_id": str(uuid.uuid4())},
                              "results": {"channels": [{"alternatives": [alt]}]}})


# -------------------------------------------------------------------------- text to speech


def _tts_params(q: Any) -> tuple[int, str]:
    return int(q.get("sample_rate", "24000")), q.get("encoding", "linear16")


async def synth(text: str, rate: int) -> bytes:
    if not text.strip():
        return b""
    return await asyncio.get_running_loop().run_in_executor(None, audio.speak, text.strip(), rate)


async def speak_ws(request: web.Request) -> web.StreamResponse:
    if token_of(request, "Token") is None:
        return web.json_response({"err_code": "INVALID_AUTH"}, status=401)
    rate, encoding = _tts_params(request.query)
    if encoding != "linear16":
        return web.json_response({"err_msg": "e2e stand-in: only linear16"}, status=400)
    ws = web.WebSocketResponse(heartbeat=None)
    await ws.prepare(request)
    conn_id = uuid.uuid4().hex[:8]
    request_id = str(uuid.uuid4())
    await ws.send_str(dumps({"type": "Metadata", "request_id": request_id,
                             "model_name": request.query.get("model", ""), "model_version": "e2e",
                             "model_uuid": "e2e-standin"}))
    log.add("tts_ws_connect", conn=conn_id, query=dict(request.query))
    pending: list[str] = []
    sequence = 0
    async for msg in ws:
        if msg.type != WSMsgType.TEXT:
            continue
        body = json.loads(msg.data)
        kind = body.get("type")
        if kind == "Speak":
            pending.append(str(body.get("text", "")))
        elif kind == "Flush":
            text = "".join(pending)
            pending.clear()
            received = time.time()
            pcm = await synth(text, rate)
            if TTS_DELAY_MS:
                await asyncio.sleep(TTS_DELAY_MS / 1000)
            step = rate // 10 * 2  # 100 ms per message
            for i in range(0, len(pcm), step):
                await ws.send_bytes(pcm[i:i + step])
            log.add("tts", via="ws", conn=conn_id, text=text.strip(), rate=rate,
                    seconds=round(len(pcm) / (2 * rate), 3), flush_at=received)
            await ws.send_str(dumps({"type": "Flushed", "sequence_id": sequence}))
            sequence += 1
        elif kind == "Clear":
            pending.clear()
            await ws.send_str(dumps({"type": "Cleared", "sequence_id": sequence}))
        elif kind == "Close":
            await ws.close()
            break
    log.add("tts_ws_disconnect", conn=conn_id)
    return ws


async def speak_http(request: web.Request) -> web.StreamResponse:
    if token_of(request, "Token") is None:
        return web.json_response({"err_code": "INVALID_AUTH"}, status=401)
    rate, encoding = _tts_params(request.query)
    if encoding != "linear16":
        return web.json_response({"err_msg": "e2e stand-in: only linear16"}, status=400)
    text = str((await request.json()).get("text", ""))
    pcm = await synth(text, rate)
    if TTS_DELAY_MS:
        await asyncio.sleep(TTS_DELAY_MS / 1000)
    if request.query.get("container", "wav") == "wav":
        out = io.BytesIO()
        with wave.open(out, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(pcm)
        body, ctype = out.getvalue(), "audio/wav"
    else:
        body, ctype = pcm, f"audio/l16;rate={rate}"
    log.add("tts", via="http", text=text.strip(), rate=rate, seconds=round(len(pcm) / (2 * rate), 3))
    resp = web.StreamResponse(headers={"Content-Type": ctype, "dg-request-id": str(uuid.uuid4())})
    await resp.prepare(request)
    step = rate // 10 * 2
    for i in range(0, len(body), step):
        await resp.write(body[i:i + step])
    await resp.write_eof()
    return resp


async def speak(request: web.Request) -> web.StreamResponse:
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return await speak_ws(request)
    return await speak_http(request)


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/v1/listen", listen_ws)
    app.router.add_post("/v1/listen", listen_http)
    app.router.add_get("/v1/speak", speak)
    app.router.add_post("/v1/speak", speak_http)
    control_routes(app, log, set_script)
    return app


if __name__ == "__main__":
    serve(make_app(), "deepgram-standin")
