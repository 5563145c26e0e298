"""The provider protocol: what the chat model needs from a wire format.

A provider is pure. It turns a :class:`ChatRequest` into a JSON payload, a JSON reply
into a ``ChatResult``, and, through a :class:`StreamParser`, raw stream bytes into
``ChatGenerationChunk`` objects. The chat model does the I/O; the same parser object
serves sync and async streams.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from langchain_core.messages import BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, ChatResult

from langchain_fastpipe.errors import HTTPStatusError, ProtocolViolationError, status_error

__all__ = [
    "ChatRequest",
    "Provider",
    "ProviderName",
    "StreamParser",
    "WarmupRequest",
    "stream_error",
]

#: The providers :func:`langchain_fastpipe.providers.get_provider` knows.
ProviderName = Literal["openai", "ollama"]


@dataclass(frozen=True, kw_only=True)
class ChatRequest:
    """Everything one chat call sends, independent of the wire format.

    Attributes:
        model: The model name.
        messages: The conversation (may be empty only for warm-up payloads).
        temperature: Sampling temperature, or None for the server's default.
        max_tokens: Most tokens to generate, or None for the server's default.
        stop: Stop sequences.
        tools: Tools already in OpenAI ``{"type": "function", ...}`` form.
        tool_choice: Normalized tool choice (``"auto"``, ``"none"``, ``"required"`` or a
            ``{"type": "function", "function": {"name": ...}}`` dict).
        response_format: OpenAI-style response format (``{"type": "json_object"}`` or
            ``{"type": "json_schema", "json_schema": {"name", "schema", ...}}``).
        keep_alive: Ollama's keep-alive (``"5m"``, seconds, ``-1``); ignored by OpenAI.
        extra: More top-level payload keys (``model_kwargs`` and call kwargs).
    """

    model: str
    messages: Sequence[BaseMessage] = ()
    temperature: float | None = None
    max_tokens: int | None = None
    stop: Sequence[str] | None = None
    tools: Sequence[Mapping[str, Any]] | None = None
    tool_choice: str | Mapping[str, Any] | None = None
    response_format: Mapping[str, Any] | None = None
    keep_alive: str | float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WarmupRequest:
    """A request that loads a model without doing real work.

    Attributes:
        path: The path to POST to, relative to the endpoint's base URL.
        payload: The JSON body.
    """

    path: str
    payload: dict[str, Any]


class StreamParser(Protocol):
    """Turns the raw bytes of one streamed reply into generation chunks.

    Feed every byte of the body (do not stop at ``[DONE]``), then call :meth:`finish`.
    """

    @property
    def done(self) -> bool:
        """Whether the stream's end marker (``[DONE]``, ``"done": true``) was seen."""
        ...

    def feed(self, data: bytes) -> list[ChatGenerationChunk]:
        """Decode bytes and return the chunks they complete.

        Raises:
            ProtocolViolationError: Malformed data.
            HTTPStatusError: The server reported an error inside the stream.
        """
        ...

    def finish(self) -> list[ChatGenerationChunk]:
        """End of body: return pending chunks.

        Raises:
            ProtocolViolationError: The stream ended before its end marker (truncated).
        """
        ...


class Provider(Protocol):
    """A wire format: OpenAI Chat Completions or Ollama's native chat API."""

    @property
    def name(self) -> ProviderName:
        """The provider's name, also reported as ``model_provider``."""
        ...

    @property
    def chat_path(self) -> str:
        """The chat path relative to the base URL (``/chat/completions``, ``/api/chat``)."""
        ...

    @property
    def default_base_url(self) -> str:
        """The base URL used when none is configured."""
        ...

    def build_payload(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        """The JSON body of a chat call.

        Raises:
            ConfigError: The messages, tools or options cannot be sent.
        """
        ...

    def parse_response(self, body: Mapping[str, Any], *, endpoint: str = "") -> ChatResult:
        """Parse a non-streamed JSON reply.

        Raises:
            ProtocolViolationError: The reply lacks what the protocol promises.
        """
        ...

    def stream_parser(self, *, endpoint: str = "") -> StreamParser:
        """A fresh parser for one streamed reply from ``endpoint`` (used in errors)."""
        ...

    def warmup_payload(self, request: ChatRequest) -> WarmupRequest:
        """A request that loads ``request.model`` as a real request would, cheaply."""
        ...


def usage_metadata(input_tokens: Any, output_tokens: Any, total: Any = None) -> UsageMetadata:
    """Build ``UsageMetadata`` from possibly missing counts (missing counts are 0)."""
    inp = input_tokens if isinstance(input_tokens, int) else 0
    out = output_tokens if isinstance(output_tokens, int) else 0
    tot = total if isinstance(total, int) else inp + out
    return UsageMetadata(input_tokens=inp, output_tokens=out, total_tokens=tot)


def stream_error(error: Any, *, endpoint: str) -> HTTPStatusError:
    """Map an error object sent inside a stream (or a 2xx body) to a typed error.

    Args:
        error: The ``error`` value: a string (Ollama) or an object with ``message`` and
            maybe ``code``/``type`` (OpenAI).
        endpoint: The redacted endpoint for the message.

    Returns:
        The most specific :class:`HTTPStatusError` (ServerError when no status is known).
    """
    status = 500
    if isinstance(error, Mapping):
        code = error.get("code")
        if isinstance(code, int) and 400 <= code <= 599:
            status = code
        elif isinstance(code, str) and code.isdigit() and 400 <= int(code) <= 599:
            status = int(code)
        text = str(error.get("message") or json.dumps(dict(error))[:500])
    else:
        text = str(error)
    return status_error(status, endpoint=endpoint or "endpoint", body=f"error in reply: {text}")


def require_mapping(value: Any, what: str, *, endpoint: str = "") -> Mapping[str, Any]:
    """Return ``value`` if it is a JSON object, else raise ProtocolViolationError."""
    if not isinstance(value, Mapping):
        where = f" from {endpoint}" if endpoint else ""
        msg = f"{what}{where} is not a JSON object: {str(value)[:200]!r}"
        raise ProtocolViolationError(msg, endpoint=endpoint)
    return value
