"""The provider protocol: what the chat model needs from a wire format.

A provider is pure. It turns a :class:`ChatRequest` into a JSON payload, a JSON reply
into a ``ChatResult``, and, through a :class:`StreamParser`, raw stream bytes into
``ChatGenerationChunk`` objects. The chat model does the I/O; the same parser object
serves sync and async streams.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from langchain_fastpipe.errors import HTTPStatusError, ProtocolViolationError, status_error

__all__ = [
    "ChatRequest",
    "Provider",
    "ProviderBase",
    "ProviderName",
    "StreamParser",
    "StreamParserBase",
    "WarmupRequest",
    "chat_result",
    "env_api_key",
    "env_base_url",
    "raise_reply_error",
    "reply_metadata",
    "require_mapping",
    "stream_error",
    "usage_metadata",
]

ItemT = TypeVar("ItemT")

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
        """The base URL used when none is configured (and no environment variable is set)."""
        ...

    @property
    def base_url_env(self) -> tuple[str, ...]:
        """Environment variables naming the base URL, first set wins (may be empty)."""
        ...

    @property
    def api_key_env(self) -> tuple[str, ...]:
        """Environment variables holding the API key for this provider, first set wins."""
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


class ProviderBase:
    """The fixed settings of a built-in provider, as read-only class data.

    Subclasses assign these class attributes (and keep ``__slots__ = ()``, so an instance
    cannot shadow them); together with the methods they implement :class:`Provider`.

    Attributes:
        name: The provider's name, also reported as ``model_provider``.
        chat_path: The chat path relative to the base URL.
        default_base_url: The base URL used when none is configured.
        base_url_env: Environment variables naming the base URL, first set wins.
        api_key_env: Environment variables holding the API key, first set wins.
    """

    __slots__ = ()

    name: ClassVar[ProviderName]
    chat_path: ClassVar[str]
    default_base_url: ClassVar[str]
    base_url_env: ClassVar[tuple[str, ...]]
    api_key_env: ClassVar[tuple[str, ...]]


def chat_result(message: AIMessage, finish_reason: Any, llm_output: dict[str, Any]) -> ChatResult:
    """The ``ChatResult`` of a non-streamed reply: one generation with its finish reason."""
    generation = ChatGeneration(message=message, generation_info={"finish_reason": finish_reason})
    return ChatResult(generations=[generation], llm_output=llm_output)


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


def raise_reply_error(body: Mapping[str, Any], *, endpoint: str) -> None:
    """Raise the typed error of a 2xx reply body that carries an ``error`` (else nothing).

    Raises:
        HTTPStatusError: The body's ``error`` mapped by :func:`stream_error`.
    """
    if body.get("error"):
        raise stream_error(body["error"], endpoint=endpoint)


def reply_metadata(
    provider: str,
    body: Mapping[str, Any],
    *,
    finish_reason: Any = None,
    keys: Sequence[str] = (),
) -> dict[str, Any]:
    """The ``response_metadata`` of a finished reply (JSON or last stream chunk).

    Args:
        provider: The ``model_provider`` value.
        body: The reply (or final chunk) object.
        finish_reason: Set as ``finish_reason`` unless None.
        keys: More keys of ``body`` copied when they hold an int or a non-empty string
            (``system_fingerprint``, Ollama's durations).

    Returns:
        ``{"model_provider", "finish_reason"?, "model_name"?, *keys?}``.
    """
    meta: dict[str, Any] = {"model_provider": provider}
    if finish_reason is not None:
        meta["finish_reason"] = finish_reason
    if body.get("model"):
        meta["model_name"] = body["model"]
    for key in keys:
        value = body.get(key)
        if (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, str) and value
        ):
            meta[key] = value
    return meta


def env_base_url(provider: Provider, env: Mapping[str, str] | None = None) -> str:
    """The base URL of ``provider`` when none is given: its env variables, else its default.

    The one place resolving the default URL (used by ChatFastpipe and FastpipeConfig).

    Args:
        provider: The provider adapter.
        env: The environment; None reads ``os.environ``.

    Returns:
        The first non-empty of ``provider.base_url_env``, else ``provider.default_base_url``.
    """
    source = os.environ if env is None else env
    for name in provider.base_url_env:
        value = source.get(name)
        if value:
            return value
    return provider.default_base_url


def env_api_key(provider: Provider, env: Mapping[str, str] | None = None) -> str | None:
    """The API key of ``provider`` from the environment, or None.

    Only the provider's own variables are read: ``OPENAI_API_KEY`` is never sent to an
    Ollama (or any non-OpenAI) endpoint.

    Args:
        provider: The provider adapter.
        env: The environment; None reads ``os.environ``.

    Returns:
        The first non-empty of ``provider.api_key_env``, else None.
    """
    source = os.environ if env is None else env
    for name in provider.api_key_env:
        value = source.get(name)
        if value:
            return value
    return None


class _Decoder(Protocol[ItemT]):
    """What :class:`StreamParserBase` needs of a decoder (SSE or NDJSON)."""

    def feed(self, data: bytes) -> list[ItemT]: ...

    def flush(self) -> list[ItemT]: ...


class StreamParserBase(ABC, Generic[ItemT]):
    """The shared core of the OpenAI and Ollama stream parsers.

    Feeds bytes to a decoder, hands its items to :meth:`_handle`, raises on a stream
    that ended before its end marker, and gives every ProtocolViolationError (from the
    decoder or the subclass) the endpoint it came from.

    Subclasses set :attr:`end_marker` (named in the truncation error), implement
    :meth:`_handle` and set ``self._done`` when the end marker arrives.
    """

    #: What a complete stream ends with, for the truncation message.
    end_marker: ClassVar[str] = "its end marker"

    def __init__(self, decoder: _Decoder[ItemT], *, endpoint: str = "") -> None:
        """Create a parser for one stream from ``endpoint`` (named in errors)."""
        self._decoder = decoder
        self._endpoint = endpoint
        self._done = False

    @property
    def done(self) -> bool:
        """Whether the stream's end marker was seen."""
        return self._done

    def feed(self, data: bytes) -> list[ChatGenerationChunk]:
        """Decode bytes and return the chunks they complete.

        Raises:
            ProtocolViolationError: Malformed data (naming the endpoint).
            HTTPStatusError: The server reported an error inside the stream.
        """
        try:
            return self._feed(data)
        except ProtocolViolationError as exc:
            if exc.endpoint or not self._endpoint:
                raise
            raise self._located(exc) from exc

    def _feed(self, data: bytes) -> list[ChatGenerationChunk]:
        """Decode bytes into chunks (subclasses may add a fast path here)."""
        return self._handle(self._decoder.feed(data))

    def finish(self) -> list[ChatGenerationChunk]:
        """End of body: return pending chunks.

        Raises:
            ProtocolViolationError: The stream ended before its end marker (truncated).
        """
        try:
            chunks = self._handle(self._decoder.flush())
        except ProtocolViolationError as exc:
            if exc.endpoint or not self._endpoint:
                raise
            raise self._located(exc) from exc
        if not self.done:
            where = f" from {self._endpoint}" if self._endpoint else ""
            msg = f"stream{where} ended before {self.end_marker} (truncated reply)"
            raise ProtocolViolationError(msg, endpoint=self._endpoint)
        return chunks

    @abstractmethod
    def _handle(self, items: list[ItemT]) -> list[ChatGenerationChunk]:
        """Turn decoded items into chunks, updating ``self._done``."""

    def _located(self, exc: ProtocolViolationError) -> ProtocolViolationError:
        """A copy of ``exc`` (same type) naming this parser's endpoint."""
        return type(exc)(f"{exc} (from {self._endpoint})", endpoint=self._endpoint)
