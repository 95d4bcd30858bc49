"""A scripted LLM for conversation tests: no network, deterministic, and it records what it saw.

Each `chat()` call consumes the next step of the script. A step is either a `Reply` or a
callable `(chat_ctx) -> Reply`, so a step can react to what the tools returned (for example,
book the id that the previous lookup listed). When the script runs out, the LLM answers
"Okay." so a stray extra turn does not hang a test.

    fake = ScriptedLLM([
        Reply(tool_calls=[call("look_up_equipment", category="excavator")]),
        Reply("We have a mini excavator."),
    ])
    session = AgentSession(llm=fake, vad=None, turn_handling={"turn_detection": None})
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from livekit.agents import llm
from livekit.agents.llm import ChatChunk, ChoiceDelta, FunctionToolCall
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, APIConnectOptions, NotGivenOr

_ids = itertools.count(1)


def call(tool: str, /, **arguments: Any) -> FunctionToolCall:
    """A tool call the scripted model makes."""
    return FunctionToolCall(name=tool, arguments=json.dumps(arguments), call_id=f"call_{next(_ids)}")


@dataclass
class Reply:
    content: str = ""
    tool_calls: list[FunctionToolCall] = field(default_factory=list)


Step = Reply | Callable[[llm.ChatContext], Reply]


class ScriptedLLM(llm.LLM):
    def __init__(self, script: list[Step] | None = None) -> None:
        super().__init__()
        self.script: list[Step] = list(script or [])
        self.requests: list[llm.ChatContext] = []  # every chat context the agent sent
        self.tool_names: list[list[str]] = []  # the tools offered on each request

    def add(self, *steps: Step) -> None:
        self.script.extend(steps)

    @property
    def model(self) -> str:
        return "scripted"

    @property
    def provider(self) -> str:
        return "tests"

    def next_reply(self, chat_ctx: llm.ChatContext) -> Reply:
        if not self.script:
            return Reply("Okay.")
        step = self.script.pop(0)
        reply = step(chat_ctx) if callable(step) else step
        # fresh call ids each time a step is used, so a reused Reply does not collide
        reply.tool_calls = [
            FunctionToolCall(name=c.name, arguments=c.arguments, call_id=f"call_{next(_ids)}")
            for c in reply.tool_calls
        ]
        return reply

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> ScriptedStream:
        self.requests.append(chat_ctx.copy())
        self.tool_names.append([getattr(t, "id", getattr(t, "name", "?")) for t in (tools or [])])
        return ScriptedStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options,
                              reply=self.next_reply(chat_ctx))


class ScriptedStream(llm.LLMStream):
    def __init__(self, fake: ScriptedLLM, *, chat_ctx: llm.ChatContext, tools: list[llm.Tool],
                 conn_options: APIConnectOptions, reply: Reply) -> None:
        super().__init__(fake, chat_ctx=chat_ctx, tools=tools, conn_options=conn_options)
        self._reply = reply

    async def _run(self) -> None:
        request_id = f"req_{next(_ids)}"
        if self._reply.content:
            self._event_ch.send_nowait(
                ChatChunk(id=request_id,
                          delta=ChoiceDelta(role="assistant", content=self._reply.content))
            )
        if self._reply.tool_calls:
            self._event_ch.send_nowait(
                ChatChunk(id=request_id,
                          delta=ChoiceDelta(role="assistant", tool_calls=self._reply.tool_calls))
            )


def last_tool_output(chat_ctx: llm.ChatContext) -> str:
    """The output of the most recent tool call in a chat context ('' if none)."""
    for item in reversed(chat_ctx.items):
        if item.type == "function_call_output":
            return item.output
    return ""
