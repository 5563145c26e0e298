"""Pure conversions between LangChain messages and tools and the OpenAI / Ollama wire shapes.

Nothing here does I/O. Errors about what the caller passed (an empty conversation, an
unknown message type, content a provider cannot carry) are :class:`ConfigError`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    InvalidToolCall,
    SystemMessage,
    ToolCall,
    ToolMessage,
)
from langchain_core.messages.content import is_data_content_block
from langchain_core.output_parsers.openai_tools import make_invalid_tool_call, parse_tool_call
from langchain_core.utils.function_calling import convert_to_openai_tool

from langchain_fastpipe.errors import ConfigError

__all__ = [
    "convert_tools",
    "messages_to_ollama",
    "messages_to_openai",
    "ollama_tool_calls",
    "openai_tool_calls",
    "parse_ollama_tool_calls",
    "parse_openai_tool_calls",
    "tool_choice_to_openai",
]

_OPENAI_DROPPED_BLOCKS = frozenset(
    {"tool_use", "thinking", "reasoning", "reasoning_content", "tool_call", "function_call"}
)


#: Roles a ``ChatMessage`` may carry on each wire format.
_OPENAI_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_OLLAMA_ROLES = frozenset({"system", "user", "assistant", "tool"})


def _check_chat_role(role: str, allowed: frozenset[str]) -> None:
    """Raise ConfigError for a ChatMessage role the wire format does not know."""
    if role not in allowed:
        msg = f"unsupported ChatMessage role {role!r}: use one of {', '.join(sorted(allowed))}"
        raise ConfigError(msg)


def _require_messages(messages: Sequence[BaseMessage]) -> None:
    if not messages:
        msg = "messages must not be empty: pass at least one message to the chat model"
        raise ConfigError(msg)


def _image_url(block: Mapping[str, Any]) -> str:
    """The URL (http(s) or data:) of an image block, in any LangChain or OpenAI shape."""
    btype = block.get("type")
    if btype == "image_url":
        image = block.get("image_url")
        url = image.get("url") if isinstance(image, Mapping) else image
        if isinstance(url, str) and url:
            return url
    elif btype == "image":
        if isinstance(block.get("url"), str):
            return str(block["url"])
        data = block.get("base64") or (
            block.get("data") if block.get("source_type") == "base64" else None
        )
        mime = block.get("mime_type")
        if isinstance(data, str) and isinstance(mime, str):
            return f"data:{mime};base64,{data}"
        source = block.get("source")
        if isinstance(source, Mapping):  # Anthropic-style block
            if source.get("type") == "base64" and source.get("data"):
                return f"data:{source.get('media_type')};base64,{source['data']}"
            if source.get("type") == "url" and source.get("url"):
                return str(source["url"])
    msg = f"unsupported image content block: {_describe_block(block)}"
    raise ConfigError(msg)


def _describe_block(block: Mapping[str, Any]) -> str:
    """A short, data-free description of a block for error messages."""
    return "{" + ", ".join(f"{k!r}: ..." for k in list(block)[:6]) + "}"


def _openai_content(content: str | list[Any], *, role: str) -> str | list[Any]:
    """Format message content for Chat Completions."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        msg = f"{role} message content must be a string or a list of blocks, got {type(content)}"
        raise ConfigError(msg)
    blocks: list[Any] = []
    for block in content:
        if isinstance(block, str):
            blocks.append({"type": "text", "text": block})
            continue
        if not isinstance(block, Mapping):
            msg = f"{role} message content block must be a string or dict, got {type(block)}"
            raise ConfigError(msg)
        btype = block.get("type")
        if btype in _OPENAI_DROPPED_BLOCKS:
            continue
        if btype == "text":
            blocks.append({"type": "text", "text": block.get("text", "")})
        elif btype in ("image", "image_url"):
            blocks.append({"type": "image_url", "image_url": {"url": _image_url(block)}})
        elif is_data_content_block(dict(block)):
            msg = f"content block type {btype!r} is not supported by this chat model"
            raise ConfigError(msg)
        else:
            blocks.append(dict(block))
    return blocks


def _text_of(content: str | list[Any]) -> str:
    """The text of message content, joining text blocks with newlines."""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, Mapping) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
    return "\n".join(parts)


def openai_tool_calls(message: AIMessage) -> list[dict[str, Any]]:
    """An AIMessage's tool calls (valid and invalid) as Chat Completions ``tool_calls``."""
    calls: list[dict[str, Any]] = [
        {
            "type": "function",
            "id": tc["id"],
            "function": {"name": tc["name"], "arguments": json.dumps(tc["args"])},
        }
        for tc in message.tool_calls
    ]
    calls.extend(
        {
            "type": "function",
            "id": itc.get("id"),
            "function": {"name": itc.get("name"), "arguments": itc.get("args")},
        }
        for itc in message.invalid_tool_calls
    )
    return calls


def _openai_message(message: BaseMessage) -> dict[str, Any]:
    if isinstance(message, ToolMessage):
        content = message.content
        return {
            "role": "tool",
            "tool_call_id": message.tool_call_id,
            "content": content if isinstance(content, str) else _tool_content(content),
        }
    out: dict[str, Any]
    if isinstance(message, HumanMessage):
        out = {"role": "user", "content": _openai_content(message.content, role="user")}
    elif isinstance(message, SystemMessage):
        role = message.additional_kwargs.get("__openai_role__", "system")
        out = {"role": role, "content": _openai_content(message.content, role="system")}
    elif isinstance(message, AIMessage):
        out = {"role": "assistant", "content": _openai_content(message.content, role="ai")}
        if message.tool_calls or message.invalid_tool_calls:
            out["tool_calls"] = openai_tool_calls(message)
        elif "tool_calls" in message.additional_kwargs:
            out["tool_calls"] = [
                {k: v for k, v in tc.items() if k in ("id", "type", "function")}
                for tc in message.additional_kwargs["tool_calls"]
            ]
        if "tool_calls" in out:
            out["content"] = out["content"] or None
    elif isinstance(message, FunctionMessage):
        out = {"role": "function", "content": _text_of(message.content)}
    elif isinstance(message, ChatMessage):
        _check_chat_role(message.role, _OPENAI_ROLES)
        out = {"role": message.role, "content": _openai_content(message.content, role="chat")}
    else:
        msg = f"unsupported message type {type(message).__name__} (type={message.type!r})"
        raise ConfigError(msg)
    if message.name is not None:
        out["name"] = message.name
    return out


def _tool_content(content: list[Any]) -> str | list[Any]:
    """Tool results: text blocks only become a string; anything else stays a list."""
    if all(
        isinstance(b, str) or (isinstance(b, Mapping) and b.get("type") == "text") for b in content
    ):
        return _text_of(content)
    return _openai_content(content, role="tool")


def messages_to_openai(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """Convert LangChain messages to Chat Completions ``messages``.

    Args:
        messages: The conversation, oldest first.

    Returns:
        One wire dict per message.

    Raises:
        ConfigError: The list is empty, or a message or content block cannot be sent.
    """
    _require_messages(messages)
    return [_openai_message(m) for m in messages]


def _base64_of(url: str) -> str:
    """The base64 payload of a ``data:`` URL (Ollama takes images only inline)."""
    if not url.startswith("data:") or ";base64," not in url:
        msg = (
            "Ollama accepts images only as base64 data (a data: URL or a base64 image block), "
            "not as remote URLs"
        )
        raise ConfigError(msg)
    return url.split(";base64,", 1)[1]


def ollama_tool_calls(message: AIMessage) -> list[dict[str, Any]]:
    """An AIMessage's tool calls in Ollama's shape (arguments as an object)."""
    return [
        {
            "id": tc["id"],
            "type": "function",
            "function": {"name": tc["name"], "arguments": tc["args"]},
        }
        if tc.get("id")
        else {"type": "function", "function": {"name": tc["name"], "arguments": tc["args"]}}
        for tc in message.tool_calls
    ]


def _ollama_message(message: BaseMessage) -> dict[str, Any]:
    content = message.content
    images: list[str] = []
    if isinstance(content, list):
        for block in content:
            if isinstance(block, Mapping) and block.get("type") in ("image", "image_url"):
                images.append(_base64_of(_image_url(block)))
            elif isinstance(block, Mapping) and block.get("type") not in ("text", None):
                if block.get("type") in _OPENAI_DROPPED_BLOCKS:
                    continue
                msg = f"content block type {block.get('type')!r} is not supported by Ollama"
                raise ConfigError(msg)
    elif not isinstance(content, str):
        msg = f"message content must be a string or a list of blocks, got {type(content)}"
        raise ConfigError(msg)
    out: dict[str, Any]
    if isinstance(message, HumanMessage):
        out = {"role": "user", "content": _text_of(content)}
    elif isinstance(message, SystemMessage):
        out = {"role": "system", "content": _text_of(content)}
    elif isinstance(message, AIMessage):
        out = {"role": "assistant", "content": _text_of(content)}
        if message.tool_calls:
            out["tool_calls"] = ollama_tool_calls(message)
    elif isinstance(message, ToolMessage):
        out = {"role": "tool", "content": _text_of(content), "tool_call_id": message.tool_call_id}
        if message.name:
            out["tool_name"] = message.name
    elif isinstance(message, FunctionMessage):
        out = {"role": "tool", "content": _text_of(content), "tool_name": message.name}
    elif isinstance(message, ChatMessage):
        _check_chat_role(message.role, _OLLAMA_ROLES)
        out = {"role": message.role, "content": _text_of(content)}
    else:
        msg = f"unsupported message type {type(message).__name__} (type={message.type!r})"
        raise ConfigError(msg)
    if images:
        out["images"] = images
    return out


def messages_to_ollama(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """Convert LangChain messages to Ollama ``/api/chat`` ``messages``.

    Content becomes plain text (text blocks joined by newlines); images go to the
    message's ``images`` list as base64.

    Args:
        messages: The conversation, oldest first.

    Returns:
        One wire dict per message.

    Raises:
        ConfigError: The list is empty, or a message or content block cannot be sent.
    """
    _require_messages(messages)
    return [_ollama_message(m) for m in messages]


def convert_tools(tools: Sequence[Any], *, strict: bool | None = None) -> list[dict[str, Any]]:
    """Convert tools (BaseTool, functions, pydantic models, dicts) to OpenAI tool dicts.

    Args:
        tools: Anything ``convert_to_openai_tool`` accepts.
        strict: Ask for strict schema adherence (OpenAI structured outputs).

    Returns:
        ``{"type": "function", "function": {...}}`` dicts.

    Raises:
        ConfigError: A tool could not be converted.
    """
    out: list[dict[str, Any]] = []
    for tool in tools:
        try:
            converted = convert_to_openai_tool(tool, strict=strict)
        except (ValueError, TypeError) as exc:
            msg = f"cannot convert tool {tool!r:.80} to an OpenAI tool: {exc}"
            raise ConfigError(msg) from exc
        function = converted.get("function")
        if isinstance(function, Mapping) and not isinstance(function.get("name"), str):
            msg = f"cannot convert tool {tool!r:.80} to an OpenAI tool: its name is not a string"
            raise ConfigError(msg)
        out.append(converted)
    return out


def tool_choice_to_openai(
    tool_choice: str | bool | Mapping[str, Any] | None, tool_names: Sequence[str]
) -> str | dict[str, Any] | None:
    """Normalize ``tool_choice`` to the Chat Completions form.

    Args:
        tool_choice: ``"auto"``, ``"none"``, ``"required"``/``"any"``/``True``, a tool name,
            a dict (passed through) or None.
        tool_names: The names of the bound tools.

    Returns:
        ``"auto"``, ``"none"``, ``"required"``, ``{"type": "function", "function":
        {"name": ...}}`` or None.

    Raises:
        ConfigError: A name that is not one of the bound tools, or an unknown type.
    """
    if tool_choice is None or tool_choice is False:
        return None
    if tool_choice is True or tool_choice in ("any", "required"):
        return "required"
    if tool_choice in ("auto", "none"):
        return str(tool_choice)
    if isinstance(tool_choice, str):
        if tool_choice in tool_names:
            return {"type": "function", "function": {"name": tool_choice}}
        msg = (
            f"tool_choice {tool_choice!r} is neither 'auto', 'none', 'required', 'any' "
            f"nor the name of a bound tool ({', '.join(tool_names) or 'no tools bound'})"
        )
        raise ConfigError(msg)
    if isinstance(tool_choice, Mapping):
        return dict(tool_choice)
    msg = f"tool_choice must be a str, bool or dict, got {type(tool_choice).__name__}"
    raise ConfigError(msg)


def parse_openai_tool_calls(
    raw_calls: Sequence[Mapping[str, Any]],
) -> tuple[list[ToolCall], list[InvalidToolCall]]:
    """Parse Chat Completions ``tool_calls`` into valid and invalid LangChain tool calls."""
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for raw in raw_calls:
        raw_dict = dict(raw)
        try:
            parsed = parse_tool_call(raw_dict, return_id=True)
        except Exception as exc:
            invalid.append(make_invalid_tool_call(raw_dict, str(exc)))
            continue
        if parsed is not None:
            calls.append(
                ToolCall(
                    name=parsed["name"], args=parsed["args"], id=parsed["id"], type="tool_call"
                )
            )
    return calls, invalid


def parse_ollama_tool_calls(
    raw_calls: Sequence[Mapping[str, Any]],
    *,
    new_id: Callable[[], str] = lambda: f"call_{uuid.uuid4().hex[:24]}",
) -> list[ToolCall]:
    """Parse Ollama ``tool_calls`` (arguments already an object) into LangChain tool calls.

    Args:
        raw_calls: The ``message.tool_calls`` of a reply.
        new_id: Makes an id for a call the server sent without one.
    """
    calls: list[ToolCall] = []
    for raw in raw_calls:
        function = raw.get("function") or {}
        args = function.get("arguments") or {}
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                args = {"__raw__": args}
        calls.append(
            ToolCall(
                name=str(function.get("name") or ""),
                args=args if isinstance(args, dict) else {"value": args},
                id=str(raw.get("id") or new_id()),
                type="tool_call",
            )
        )
    return calls
