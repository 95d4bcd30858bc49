"""An OpenAI-compatible stand-in: what the openai SDK (through the livekit openai plugin) calls.

    python -m tests.e2e.standins.openai_server [--port 0]   prints "READY <port>"

The agent reaches it through OPENAI_BASE_URL=http://127.0.0.1:<port>/v1 (read by the SDK).

`POST /v1/chat/completions` (`Authorization: Bearer <key>` required): streaming (SSE chunks, then
a usage chunk when stream_options.include_usage, then [DONE]) or not. What the assistant says is
scripted by rules matched against the conversation the agent sends, so concurrent calls each get
their own answer:

    {"rules": [
       {"user": "excavator", "tool": "look_up_equipment", "arguments": {"category": "excavator"}},
       {"after_tool": "look_up_equipment", "say": "Yes, the Kubota KX040 is free: 325 dollars a day."},
       {"user": "bye", "say": "Thanks for calling, goodbye!", "tool": "end_call", "arguments": {}}
     ],
     "default": "Sure, what can I help you with?"}

The last message decides: a tool result matches the first rule whose "after_tool" names that tool
(and whose optional "user" regex matches the latest user message); a user message matches the first
rule without "after_tool" whose "user" regex (case-insensitive search) matches it. A rule may give
"say" (streamed word by word), "tool" + "arguments" (one tool call), or both (text first). A tool
the request does not offer is never called: the default is said instead, and the event log says so.

`POST /v1/audio/speech`: espeak-ng speaking `input`; `audio/wav` (24 kHz) unless
stream_format=sse with response_format pcm, then `speech.audio.delta` events.
`GET /v1/models`: the models the agent uses. E2E_OPENAI_TTFT_MS delays the first chunk.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
import time
import uuid
import wave
from typing import Any

from aiohttp import web

from tests.e2e import audio
from tests.e2e.standins.common import EventLog, control_routes, dumps, env_float, serve, token_of

TTFT_MS = env_float("E2E_OPENAI_TTFT_MS", 0.0)
TTS_RATE = 24000

log = EventLog()
script: dict[str, Any] = {"rules": [], "default": "Sure, what can I help you with?"}


def set_script(body: dict) -> None:
    script["rules"] = list(body.get("rules", []))
    script["default"] = str(body.get("default", script["default"]))


def _unauthorized() -> web.Response:
    return web.json_response({"error": {"message": "Incorrect API key provided.",
                                        "type": "invalid_request_error", "code": "invalid_api_key"}},
                             status=401)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def decide(messages: list[dict], offered: set[str]) -> tuple[str, dict | None, str]:
    """(text to say, tool call or None, which rule) for this conversation."""
    users = [m for m in messages if m.get("role") == "user"]
    last_user = _text(users[-1].get("content")) if users else ""
    last = messages[-1] if messages else {}
    after_tool = None
    if last.get("role") == "tool":
        by_id = {tc.get("id"): tc.get("function", {}).get("name")
                 for m in messages if m.get("role") == "assistant"
                 for tc in (m.get("tool_calls") or [])}
        after_tool = by_id.get(last.get("tool_call_id"))
    for i, rule in enumerate(script["rules"]):
        if (rule.get("after_tool") or None) != after_tool:
            continue
        pattern = rule.get("user")
        if pattern and not re.search(pattern, last_user, re.IGNORECASE):
            continue
        tool = rule.get("tool")
        if tool and tool not in offered:
            return script["default"], None, f"rule {i}: tool {tool!r} not offered"
        call = None
        if tool:
            call = {"id": f"call_{uuid.uuid4().hex[:20]}", "name": tool,
                    "arguments": dumps(rule.get("arguments", {}))}
        return str(rule.get("say", "")), call, f"rule {i}"
    return script["default"], None, "default"


def _chunk(cid: str, model: str, delta: dict, finish: str | None = None) -> dict:
    return {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "system_fingerprint": "fp_e2e", "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                         "finish_reason": finish}]}


async def chat(request: web.Request) -> web.StreamResponse:
    if token_of(request, "Bearer") is None:
        return _unauthorized()
    body = await request.json()
    messages = body.get("messages", [])
    model = body.get("model", "gpt-4o")
    offered = {t.get("function", {}).get("name") for t in body.get("tools") or []}
    say, call, why = decide(messages, offered)
    received = time.time()
    log.add("chat", model=model, messages=messages, tools=sorted(n for n in offered if n),
            say=say, tool_call=call, rule=why, stream=bool(body.get("stream")))
    cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    usage = {"prompt_tokens": sum(len(_text(m.get("content")).split()) for m in messages),
             "completion_tokens": len(say.split()) + (5 if call else 0)}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    if TTFT_MS:
        await asyncio.sleep(TTFT_MS / 1000)
    tool_calls = ([{"index": 0, "id": call["id"], "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]}}]
                  if call else None)
    if not body.get("stream"):
        message: dict[str, Any] = {"role": "assistant", "content": say or None, "refusal": None}
        if tool_calls:
            message["tool_calls"] = [{k: v for k, v in tc.items() if k != "index"} for tc in tool_calls]
        return web.json_response({
            "id": cid, "object": "chat.completion", "created": int(received), "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "tool_calls" if call else "stop"}],
            "usage": usage, "system_fingerprint": "fp_e2e"})

    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                       "Cache-Control": "no-cache", "x-request-id": cid})
    await resp.prepare(request)

    async def event(obj: Any) -> None:
        await resp.write(f"data: {obj if isinstance(obj, str) else dumps(obj)}\n\n".encode())

    await event(_chunk(cid, model, {"role": "assistant", "content": "", "refusal": None}))
    words = say.split(" ") if say else []
    for i, w in enumerate(words):
        await event(_chunk(cid, model, {"content": w if i == 0 else " " + w}))
    if call:
        # the name first, then the arguments in two pieces, as the API streams them
        args = call["arguments"]
        half = len(args) // 2
        await event(_chunk(cid, model, {"tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                                                         "function": {"name": call["name"], "arguments": ""}}]}))
        for piece in (args[:half], args[half:]):
            await event(_chunk(cid, model, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
    await event(_chunk(cid, model, {}, "tool_calls" if call else "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        await event({"id": cid, "object": "chat.completion.chunk", "created": int(received),
                     "model": model, "choices": [], "usage": usage})
    await event("[DONE]")
    await resp.write_eof()
    return resp


async def speech(request: web.Request) -> web.StreamResponse:
    if token_of(request, "Bearer") is None:
        return _unauthorized()
    body = await request.json()
    text = str(body.get("input", ""))
    pcm = await asyncio.get_running_loop().run_in_executor(None, audio.speak, text, TTS_RATE) if text.strip() else b""
    log.add("tts", via="openai", text=text, model=body.get("model"), voice=body.get("voice"),
            seconds=round(len(pcm) / (2 * TTS_RATE), 3))
    if body.get("stream_format") == "sse" and body.get("response_format") == "pcm":
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        step = TTS_RATE // 10 * 2
        for i in range(0, len(pcm), step):
            delta = base64.b64encode(pcm[i:i + step]).decode()
            await resp.write(f"data: {dumps({'type': 'speech.audio.delta', 'audio': delta})}\n\n".encode())
        done = {"type": "speech.audio.done", "usage": {"input_tokens": len(text.split()),
                                                       "output_tokens": len(pcm) // 1000}}
        await resp.write(f"data: {dumps(done)}\n\n".encode())
        await resp.write_eof()
        return resp
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(TTS_RATE)
        w.writeframes(pcm)
    # an OpenAI-compatible server that ignores stream_format: the plugin reads Content-Type
    return web.Response(body=out.getvalue(), content_type="audio/wav",
                        headers={"x-request-id": f"req_{uuid.uuid4().hex[:24]}"})


async def models(request: web.Request) -> web.Response:
    if token_of(request, "Bearer") is None:
        return _unauthorized()
    return web.json_response({"object": "list", "data": [
        {"id": m, "object": "model", "created": 0, "owned_by": "e2e"}
        for m in ("gpt-4o", "gpt-4o-mini", "gpt-4o-mini-tts")]})


def make_app() -> web.Application:
    app = web.Application(client_max_size=32 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/audio/speech", speech)
    app.router.add_get("/v1/models", models)
    control_routes(app, log, set_script)
    return app


if __name__ == "__main__":
    serve(make_app(), "openai-standin")
