"""OpenAI Chat Completions and compatible servers (llama.cpp, vLLM): pure payloads, parsing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.messages.ai import InputTokenDetails, OutputTokenDetails, UsageMetadata
from langchain_core.messages.tool import ToolCallChunk, tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk, ChatResult

from langchain_fastpipe.errors import ProtocolViolationError
from langchain_fastpipe.providers._base import (
    ChatRequest,
    ProviderBase,
    ProviderName,
    StreamParserBase,
    WarmupRequest,
    chat_result,
    raise_reply_error,
    reply_metadata,
    require_mapping,
    stream_error,
    usage_metadata,
)
from langchain_fastpipe.providers._convert import messages_to_openai, parse_openai_tool_calls
from langchain_fastpipe.providers._decoders import SSEDecoder, SSEEvent, json_object
from langchain_fastpipe.providers._fastchunk import text_chunk_builder

__all__ = [
    "OpenAIProvider",
    "OpenAIStreamParser",
    "openai_stream_chunk",
    "openai_usage",
]

_PROVIDER = "openai"


def openai_usage(usage: Mapping[str, Any]) -> UsageMetadata:
    """Convert an OpenAI ``usage`` object to ``UsageMetadata`` (with cache/reasoning details)."""
    meta = usage_metadata(
        usage.get("prompt_tokens"), usage.get("completion_tokens"), usage.get("total_tokens")
    )
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    if isinstance(prompt_details, Mapping) and isinstance(prompt_details.get("cached_tokens"), int):
        meta["input_token_details"] = InputTokenDetails(cache_read=prompt_details["cached_tokens"])
    if isinstance(completion_details, Mapping) and isinstance(
        completion_details.get("reasoning_tokens"), int
    ):
        meta["output_token_details"] = OutputTokenDetails(
            reasoning=completion_details["reasoning_tokens"]
        )
    return meta


_FINISH_KEYS = ("system_fingerprint",)


def _tool_call_chunks(raw_calls: Sequence[Any]) -> list[ToolCallChunk]:
    chunks: list[ToolCallChunk] = []
    for position, raw in enumerate(raw_calls):
        if not isinstance(raw, Mapping):
            continue
        function = raw.get("function") or {}
        index = raw.get("index")
        chunks.append(
            tool_call_chunk(
                name=function.get("name"),
                args=function.get("arguments"),
                id=raw.get("id"),
                index=index if isinstance(index, int) else position,
            )
        )
    return chunks


def _plain_text(obj: dict[str, Any]) -> str | None:
    """The text of a chunk that is nothing but a text delta, else None.

    A plain text delta: no usage, exactly one choice, no finish reason, and a delta
    holding at most ``role`` and ``content`` (a ``str`` or null: ``""``). Anything else
    (tool calls, reasoning, refusal, usage, a finish) is None: the general conversion.
    The error check is the caller's.
    """
    choices = obj.get("choices")
    if type(choices) is not list or len(choices) != 1 or obj.get("usage") is not None:
        return None
    choice = choices[0]
    if type(choice) is not dict or choice.get("finish_reason") is not None:
        return None
    delta = choice.get("delta")
    # Its keys are among {"role", "content"}: counted, with no key view or set built.
    if type(delta) is not dict or len(delta) != ("content" in delta) + ("role" in delta):
        return None
    content = delta.get("content")
    if content is None:
        return ""
    return content if type(content) is str else None


def openai_stream_chunk(
    obj: Mapping[str, Any], *, endpoint: str = ""
) -> ChatGenerationChunk | None:
    """Convert one decoded ``chat.completion.chunk`` into a generation chunk.

    Args:
        obj: The JSON of one SSE ``data:`` line.
        endpoint: Named in errors.

    Returns:
        The chunk: content delta, ``tool_call_chunks`` (with ``index``), usage on the
        usage chunk, ``finish_reason`` and ``model_name`` in ``response_metadata`` on the
        chunk that finishes the choice; None for an event carrying nothing.
    """
    msg_id = obj.get("id")
    if type(msg_id) is not str:
        msg_id = None
    if type(obj) is dict:
        text = _plain_text(obj)
        if text is not None:  # the common case: a plain text delta
            return text_chunk_builder()(text, {"model_provider": _PROVIDER}, msg_id)
    usage = obj.get("usage")
    choices = obj.get("choices") or []
    usage_meta = openai_usage(usage) if isinstance(usage, Mapping) else None
    if not choices:
        if usage_meta is None:
            return None
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata=usage_meta,
                response_metadata={"model_provider": _PROVIDER},
                id=msg_id,
            )
        )
    choice = choices[0] if isinstance(choices[0], Mapping) else {}
    delta = require_mapping(choice.get("delta") or {}, "choices[0].delta", endpoint=endpoint)
    content = delta.get("content") or ""
    additional: dict[str, Any] = {}
    if isinstance(delta.get("reasoning_content"), str) and delta["reasoning_content"]:
        additional["reasoning_content"] = delta["reasoning_content"]
    if isinstance(delta.get("refusal"), str) and delta["refusal"]:
        additional["refusal"] = delta["refusal"]
    response_metadata: dict[str, Any] = {"model_provider": _PROVIDER}
    generation_info: dict[str, Any] | None = None
    finish_reason = choice.get("finish_reason")
    if finish_reason:
        response_metadata = reply_metadata(
            _PROVIDER, obj, finish_reason=finish_reason, keys=_FINISH_KEYS
        )
        generation_info = {"finish_reason": finish_reason}
    message = AIMessageChunk(
        content=content if isinstance(content, str) else "",
        additional_kwargs=additional,
        tool_call_chunks=_tool_call_chunks(delta.get("tool_calls") or []),
        usage_metadata=usage_meta,
        response_metadata=response_metadata,
        id=msg_id,
    )
    return ChatGenerationChunk(message=message, generation_info=generation_info)


class OpenAIStreamParser(StreamParserBase[SSEEvent]):
    """Bytes of one Chat Completions SSE stream in, ``ChatGenerationChunk`` objects out.

    The stream counts as complete (:attr:`done`) when ``data: [DONE]`` or a
    ``finish_reason`` arrived; :meth:`finish` raises ProtocolViolationError otherwise (a
    truncated stream).
    """

    end_marker = "[DONE] or a finish_reason"

    def __init__(self, *, endpoint: str = "") -> None:
        """Create a parser for one stream from ``endpoint`` (named in errors)."""
        self._sse = SSEDecoder()
        super().__init__(self._sse, endpoint=endpoint)
        self._text_chunk = text_chunk_builder()

    def _feed(self, data: bytes) -> list[ChatGenerationChunk]:
        """Decode bytes; whole plain ``data:`` events skip the general path.

        The fast path (the usual read: whole events, each a JSON object with a plain text
        delta) goes from the event's data straight to a template-built chunk: no event
        object, ``json.loads``'s scanner called directly, one check of the chunk's shape.
        Every other read or event takes the general path, which decides and raises
        exactly as before.
        """
        texts = self._sse.plain_data(data)
        if texts is None:  # declined, nothing consumed: straight to the general path
            return self._handle(self._sse.feed_general(data))
        chunks: list[ChatGenerationChunk] = []
        build = self._text_chunk
        for text in texts:
            obj = json_object(text)
            if obj is None:  # [DONE], blank, not an object, bad JSON: the general path
                chunk = self._event_chunk(SSEEvent("message", text))
            elif obj.get("error") or (content := _plain_text(obj)) is None:
                chunk = self._object_chunk(obj, "message")
            else:
                msg_id = obj.get("id")
                chunk = build(
                    content,
                    {"model_provider": _PROVIDER},
                    msg_id if type(msg_id) is str else None,
                )
            if chunk is not None:
                chunks.append(chunk)
        return chunks

    def _handle(self, events: list[SSEEvent]) -> list[ChatGenerationChunk]:
        chunks: list[ChatGenerationChunk] = []
        for event in events:
            chunk = self._event_chunk(event)
            if chunk is not None:
                chunks.append(chunk)
        return chunks

    def _event_chunk(self, event: SSEEvent) -> ChatGenerationChunk | None:
        """The chunk of one event (None for blanks, ``[DONE]`` and empty events)."""
        data = event.data.strip()
        if not data:
            return None
        if data == "[DONE]":
            self._done = True
            return None
        obj = require_mapping(event.json(), "stream event", endpoint=self._endpoint)
        return self._object_chunk(obj, event.event)

    def _object_chunk(self, obj: Mapping[str, Any], event: str) -> ChatGenerationChunk | None:
        """The chunk of one decoded event object; raises the error it reports."""
        if event == "error" or obj.get("error"):
            raise stream_error(obj.get("error", obj), endpoint=self._endpoint)
        chunk = openai_stream_chunk(obj, endpoint=self._endpoint)
        if (
            chunk is not None
            and chunk.generation_info
            and chunk.generation_info.get("finish_reason")
        ):
            self._done = True
        return chunk


class OpenAIProvider(ProviderBase):
    """The OpenAI Chat Completions wire format (``POST {base_url}/chat/completions``).

    The base URL carries ``/v1`` and defaults to OpenAI's public API; it is read from
    ``FASTPIPE_BASE_URL`` then ``OPENAI_BASE_URL``, the key from ``FASTPIPE_API_KEY`` then
    ``OPENAI_API_KEY``.
    """

    __slots__ = ()

    name: ClassVar[ProviderName] = "openai"
    chat_path = "/chat/completions"
    default_base_url = "https://api.openai.com/v1"
    base_url_env = ("FASTPIPE_BASE_URL", "OPENAI_BASE_URL")
    api_key_env = ("FASTPIPE_API_KEY", "OPENAI_API_KEY")

    def build_payload(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        """The Chat Completions body.

        ``extra`` keys go in first, so the explicit fields win; ``stream_options``
        asks for usage on the final chunk of a stream.
        """
        payload: dict[str, Any] = dict(request.extra)
        payload["model"] = request.model
        payload["messages"] = messages_to_openai(request.messages)
        payload["stream"] = stream
        if stream:
            options = dict(payload.get("stream_options") or {})
            options.setdefault("include_usage", True)
            payload["stream_options"] = options
        else:
            payload.pop("stream_options", None)
        if request.temperature is not None:
            payload["temperature"] = request.temperature
        if request.max_tokens is not None:
            payload["max_tokens"] = request.max_tokens
        if request.stop:
            payload["stop"] = list(request.stop)
        if request.tools:
            payload["tools"] = [dict(tool) for tool in request.tools]
            if request.tool_choice is not None:
                payload["tool_choice"] = (
                    request.tool_choice
                    if isinstance(request.tool_choice, str)
                    else dict(request.tool_choice)
                )
        if request.response_format is not None:
            payload["response_format"] = dict(request.response_format)
        return payload

    def parse_response(self, body: Mapping[str, Any], *, endpoint: str = "") -> ChatResult:
        """Parse a ``chat.completion`` reply into a ChatResult.

        Raises:
            ProtocolViolationError: No ``choices`` or no ``message``.
            HTTPStatusError: The body carries an ``error`` object.
        """
        raise_reply_error(body, endpoint=endpoint)
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices:
            msg = f"reply from {endpoint or 'endpoint'} has no choices (keys: {sorted(body)})"
            raise ProtocolViolationError(msg, endpoint=endpoint)
        choice = require_mapping(choices[0], "choices[0]", endpoint=endpoint)
        raw = require_mapping(choice.get("message"), "choices[0].message", endpoint=endpoint)
        usage = body.get("usage")
        usage_meta = openai_usage(usage) if isinstance(usage, Mapping) else None
        tool_calls, invalid = parse_openai_tool_calls(raw.get("tool_calls") or [])
        additional: dict[str, Any] = {}
        for key in ("reasoning_content", "refusal"):
            if isinstance(raw.get(key), str) and raw[key]:
                additional[key] = raw[key]
        finish_reason = choice.get("finish_reason")
        response_metadata = reply_metadata(
            _PROVIDER, body, finish_reason=finish_reason, keys=_FINISH_KEYS
        )
        content = raw.get("content")
        message = AIMessage(
            content=content if isinstance(content, str) else "",
            additional_kwargs=additional,
            tool_calls=tool_calls,
            invalid_tool_calls=invalid,
            usage_metadata=usage_meta,
            response_metadata=response_metadata,
            id=body.get("id") if isinstance(body.get("id"), str) else None,
        )
        llm_output = {
            "token_usage": dict(usage) if isinstance(usage, Mapping) else None,
            "model_name": body.get("model"),
            "model_provider": _PROVIDER,
        }
        return chat_result(message, finish_reason, llm_output)

    def stream_parser(self, *, endpoint: str = "") -> OpenAIStreamParser:
        """A fresh SSE parser for one streamed reply."""
        return OpenAIStreamParser(endpoint=endpoint)

    def warmup_payload(self, request: ChatRequest) -> WarmupRequest:
        """A one-token, non-streamed completion of ``request.model``.

        OpenAI-compatible servers have no load-only call; a 1-token reply loads the
        model (llama.cpp, vLLM) and warms the connection at the cost of one token.
        """
        payload: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 1,
            "stream": False,
        }
        if request.temperature is not None:
            payload["temperature"] = request.temperature
        return WarmupRequest(path=self.chat_path, payload=payload)
