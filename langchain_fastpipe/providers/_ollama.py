"""Ollama's native chat API (``/api/chat``, NDJSON streams): pure payloads and parsing."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.messages.tool import ToolCallChunk, tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk, ChatResult

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
from langchain_fastpipe.providers._convert import messages_to_ollama, parse_ollama_tool_calls
from langchain_fastpipe.providers._decoders import NDJSONDecoder
from langchain_fastpipe.providers._fastchunk import text_chunk_builder

__all__ = [
    "OLLAMA_OPTION_KEYS",
    "OllamaProvider",
    "OllamaStreamParser",
    "ollama_options",
    "ollama_stream_chunk",
]

_PROVIDER = "ollama"

#: Keys of ``extra``/``model_kwargs`` that go into Ollama's ``options`` object.
OLLAMA_OPTION_KEYS = frozenset(
    {
        "num_keep", "seed", "num_predict", "top_k", "top_p", "min_p", "typical_p",
        "repeat_last_n", "temperature", "repeat_penalty", "presence_penalty",
        "frequency_penalty", "stop", "num_ctx", "num_batch", "num_gpu", "main_gpu",
        "use_mmap", "num_thread", "mirostat", "mirostat_tau", "mirostat_eta", "tfs_z",
        "penalize_newline", "numa", "low_vram", "vocab_only", "use_mlock",
    }
)  # fmt: skip

#: OpenAI-only keys that make no sense to Ollama and are dropped from ``extra``.
_OPENAI_ONLY_KEYS = frozenset(
    {"parallel_tool_calls", "stream_options", "n", "logprobs", "top_logprobs", "user"}
)

#: Ollama's timing fields copied to ``response_metadata`` of the final message.
_TIMING_KEYS = (
    "total_duration", "load_duration", "prompt_eval_duration", "eval_duration",
)  # fmt: skip


def ollama_options(request: ChatRequest) -> dict[str, Any]:
    """The ``options`` object for ``request``: the same for a real call and its warm-up.

    ``extra["options"]`` and every option-named key of ``extra`` (``num_ctx``,
    ``top_k``, ...) are merged; the explicit fields (temperature, max_tokens as
    ``num_predict``, stop) win. Ollama reloads a model whose options change
    (ollama/ollama#8903), so warm-ups must use exactly this.
    """
    options: dict[str, Any] = {}
    nested = request.extra.get("options")
    if isinstance(nested, Mapping):
        options.update(nested)
    options.update({k: v for k, v in request.extra.items() if k in OLLAMA_OPTION_KEYS})
    if request.temperature is not None:
        options["temperature"] = request.temperature
    if request.max_tokens is not None:
        options["num_predict"] = request.max_tokens
    if request.stop:
        options["stop"] = list(request.stop)
    return options


def _ollama_format(response_format: Mapping[str, Any]) -> str | dict[str, Any]:
    """Map an OpenAI-style response format to Ollama's ``format`` (``"json"`` or a schema)."""
    kind = response_format.get("type")
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if isinstance(schema, Mapping):
            return dict(schema)
    return dict(response_format)


def _select_tools(request: ChatRequest) -> list[dict[str, Any]]:
    """Ollama has no ``tool_choice``: emulate it by choosing which tools to send.

    ``"none"`` sends no tools; a named function sends only that tool; ``"auto"`` and
    ``"required"`` send them all.
    """
    tools = [dict(t) for t in request.tools or ()]
    choice = request.tool_choice
    if choice == "none":
        return []
    if isinstance(choice, Mapping):
        name = (choice.get("function") or {}).get("name")
        chosen = [t for t in tools if (t.get("function") or {}).get("name") == name]
        return chosen or tools
    return tools


def _final_metadata(obj: Mapping[str, Any]) -> dict[str, Any]:
    finish_reason = obj.get("done_reason") or ("stop" if obj.get("done") else None)
    return reply_metadata(_PROVIDER, obj, finish_reason=finish_reason, keys=_TIMING_KEYS)


def _usage(obj: Mapping[str, Any]) -> Any:
    if "prompt_eval_count" in obj or "eval_count" in obj:
        return usage_metadata(obj.get("prompt_eval_count"), obj.get("eval_count"))
    return None


def _plain_text(obj: Mapping[str, Any]) -> str | None:
    """The text of a line that is nothing but a text delta, else None.

    A plain line: not the ``done`` line, and a ``message`` object with no ``thinking``
    and no ``tool_calls`` (its ``content`` is the text; not a ``str``: ``""``). Anything
    else is None: the general conversion. The error check is the caller's.
    """
    message = obj.get("message")
    if obj.get("done") or type(message) is not dict:
        return None
    if message.get("thinking") or message.get("tool_calls"):
        return None
    content = message.get("content") or ""
    return content if isinstance(content, str) else ""


def ollama_stream_chunk(
    obj: Mapping[str, Any],
    *,
    tool_index: int = 0,
    new_id: Callable[[], str] = lambda: f"call_{uuid.uuid4().hex[:24]}",
    endpoint: str = "",
) -> tuple[ChatGenerationChunk, int]:
    """Convert one NDJSON line of an ``/api/chat`` stream into a generation chunk.

    Args:
        obj: The decoded line.
        tool_index: The index the next tool call gets (Ollama sends whole calls).
        new_id: Makes an id for a tool call sent without one.
        endpoint: Named in errors.

    Returns:
        The chunk and the next free tool-call index. The ``done`` line carries
        ``usage_metadata`` and ``finish_reason``/``model_name`` in ``response_metadata``.
    """
    text = _plain_text(obj)
    if text is not None:  # the common case: a plain text delta
        return text_chunk_builder(with_id=False)(
            text, {"model_provider": _PROVIDER}, None
        ), tool_index
    message = require_mapping(obj.get("message") or {}, "message", endpoint=endpoint)
    content = message.get("content") or ""
    additional: dict[str, Any] = {}
    if isinstance(message.get("thinking"), str) and message["thinking"]:
        additional["reasoning_content"] = message["thinking"]
    chunks: list[ToolCallChunk] = []
    for call in parse_ollama_tool_calls(message.get("tool_calls") or [], new_id=new_id):
        chunks.append(
            tool_call_chunk(
                name=call["name"], args=json.dumps(call["args"]), id=call["id"], index=tool_index
            )
        )
        tool_index += 1
    done = bool(obj.get("done"))
    response_metadata = _final_metadata(obj) if done else {"model_provider": _PROVIDER}
    chunk = ChatGenerationChunk(
        message=AIMessageChunk(
            content=content if isinstance(content, str) else "",
            additional_kwargs=additional,
            tool_call_chunks=chunks,
            usage_metadata=_usage(obj) if done else None,
            response_metadata=response_metadata,
        ),
        generation_info={"finish_reason": response_metadata["finish_reason"]} if done else None,
    )
    return chunk, tool_index


class OllamaStreamParser(StreamParserBase[dict[str, Any]]):
    """Bytes of one ``/api/chat`` NDJSON stream in, ``ChatGenerationChunk`` objects out.

    The stream is complete (:attr:`done`) once a line with ``"done": true`` arrived;
    :meth:`finish` raises ProtocolViolationError otherwise.
    """

    end_marker = "its done line"

    def __init__(self, *, endpoint: str = "") -> None:
        """Create a parser for one stream from ``endpoint`` (named in errors)."""
        super().__init__(NDJSONDecoder(), endpoint=endpoint)
        self._tool_index = 0
        self._text_chunk = text_chunk_builder(with_id=False)

    def _handle(self, objs: list[dict[str, Any]]) -> list[ChatGenerationChunk]:
        chunks: list[ChatGenerationChunk] = []
        build = self._text_chunk
        for obj in objs:
            if obj.get("error"):
                raise stream_error(obj["error"], endpoint=self._endpoint)
            text = _plain_text(obj)
            if text is not None:  # the usual line: straight to a template-built chunk
                chunks.append(build(text, {"model_provider": _PROVIDER}, None))
                continue
            chunk, self._tool_index = ollama_stream_chunk(
                obj, tool_index=self._tool_index, endpoint=self._endpoint
            )
            if obj.get("done"):
                self._done = True
            chunks.append(chunk)
        return chunks


class OllamaProvider(ProviderBase):
    """Ollama's native API (``POST {base_url}/api/chat``), which honours ``keep_alive``.

    The base URL defaults to a local Ollama server and is never taken from the OpenAI
    variables; the key comes from ``FASTPIPE_API_KEY`` only (never ``OPENAI_API_KEY``).
    """

    __slots__ = ()

    name: ClassVar[ProviderName] = "ollama"
    chat_path = "/api/chat"
    default_base_url = "http://127.0.0.1:11434"
    base_url_env = ()
    api_key_env = ("FASTPIPE_API_KEY",)

    def build_payload(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        """The ``/api/chat`` body: options, keep_alive, tools and ``format``.

        Keys of ``extra`` that are Ollama options go into ``options``; OpenAI-only keys
        are dropped; the rest (``think``, ``format``, ...) stay top-level.
        """
        payload: dict[str, Any] = {
            k: v
            for k, v in request.extra.items()
            if k not in OLLAMA_OPTION_KEYS and k not in _OPENAI_ONLY_KEYS and k != "options"
        }
        payload["model"] = request.model
        payload["messages"] = messages_to_ollama(request.messages)
        payload["stream"] = stream
        options = ollama_options(request)
        if options:
            payload["options"] = options
        if request.keep_alive is not None:
            payload["keep_alive"] = request.keep_alive
        tools = _select_tools(request)
        if tools:
            payload["tools"] = tools
        if request.response_format is not None:
            payload["format"] = _ollama_format(request.response_format)
        return payload

    def parse_response(self, body: Mapping[str, Any], *, endpoint: str = "") -> ChatResult:
        """Parse a non-streamed ``/api/chat`` reply.

        Raises:
            ProtocolViolationError: No ``message`` object.
            HTTPStatusError: The body carries an ``error``.
        """
        raise_reply_error(body, endpoint=endpoint)
        raw = require_mapping(body.get("message"), "reply message", endpoint=endpoint)
        additional: dict[str, Any] = {}
        if isinstance(raw.get("thinking"), str) and raw["thinking"]:
            additional["reasoning_content"] = raw["thinking"]
        content = raw.get("content")
        response_metadata = _final_metadata({**body, "done": True})
        message = AIMessage(
            content=content if isinstance(content, str) else "",
            additional_kwargs=additional,
            tool_calls=parse_ollama_tool_calls(raw.get("tool_calls") or []),
            usage_metadata=_usage(body),
            response_metadata=response_metadata,
        )
        finish_reason = response_metadata.get("finish_reason")
        llm_output = {"model_name": body.get("model"), "model_provider": _PROVIDER}
        return chat_result(message, finish_reason, llm_output)

    def stream_parser(self, *, endpoint: str = "") -> OllamaStreamParser:
        """A fresh NDJSON parser for one streamed reply."""
        return OllamaStreamParser(endpoint=endpoint)

    def warmup_payload(self, request: ChatRequest) -> WarmupRequest:
        """``/api/generate`` with the model, no prompt, ``keep_alive`` and the real options.

        An empty generate only loads the model. Its ``options`` are exactly those of a
        real chat request (:func:`ollama_options`): different options would make
        Ollama load the model again on the first real call (ollama/ollama#8903).
        """
        payload: dict[str, Any] = {"model": request.model, "stream": False}
        options = ollama_options(request)
        if options:
            payload["options"] = options
        if request.keep_alive is not None:
            payload["keep_alive"] = request.keep_alive
        return WarmupRequest(path="/api/generate", payload=payload)
