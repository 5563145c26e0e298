"""The emulator's ASGI application: OpenAI- and Ollama-compatible endpoints, knobs and faults.

A plain ASGI 3 callable (no web framework). The pure parts -- answer generation, limits,
tool choice, JSON-schema instances, payload builders -- are module functions; only
:class:`EmulatorApp` does I/O. Time is injectable (``clock`` and ``sleep``) so tests of the
timing knobs never really wait.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from langchain_fastpipe.errors import ConfigError

__all__ = [
    "DEFAULT_MODEL_NAME",
    "EmulatorApp",
    "EmulatorConfig",
    "Fault",
    "FaultKind",
    "ModelProfile",
    "RecordedRequest",
    "Reply",
    "apply_limits",
    "choose_tool",
    "instance_from_schema",
    "prompt_token_count",
    "split_tokens",
]

#: Name listed by ``/v1/models`` and ``/api/tags`` besides the configured models.
DEFAULT_MODEL_NAME = "emulator"

FaultKind = Literal[
    "status",
    "rate_limit",
    "reset_mid_stream",
    "hang_before_first_byte",
    "malformed_chunk",
    "truncated_json",
    "slow_drip",
    "reset_before_headers",
]

Scope = Mapping[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
#: Called by the app to break the connection of ``client`` (host, port); returns True if done.
ResetHook = Callable[[tuple[str, int] | None], Awaitable[bool]]

_CHAT_PATHS = ("/v1/chat/completions", "/api/chat", "/api/generate")
_HISTORY = 256
_WORDS = (
    "amber", "bright", "cedar", "delta", "ember", "fable", "garden", "harbor", "island",
    "jasper", "kettle", "lantern", "meadow", "nectar", "orbit", "pepper", "quartz", "river",
    "saffron", "timber", "umber", "velvet", "willow", "xenon", "yonder", "zephyr", "anchor",
    "breeze", "canyon", "drift", "echo", "falcon", "glacier", "horizon", "ivory", "jungle",
    "kernel", "lagoon", "marble", "nimbus", "opal", "prairie", "quiver", "ripple", "summit",
    "tundra", "upland", "vertex", "wander", "yarrow", "zenith", "bloom", "cobalt", "dune",
)  # fmt: skip


# --------------------------------------------------------------------------- knobs


@dataclass(frozen=True, kw_only=True)
class Fault:
    """A failure the emulator plays instead of (or in the middle of) a normal reply.

    Build one with the class constructors, e.g. ``Fault.status(503)`` or
    ``Fault.reset_mid_stream(after_chunks=3)``.

    Attributes:
        kind: Which failure.
        status_code: HTTP status for ``status`` and ``rate_limit``.
        retry_after: ``Retry-After`` header value (seconds or an HTTP date) for ``rate_limit``.
        retry_after_ms: Optional ``retry-after-ms`` header value for ``rate_limit``.
        after_chunks: Good chunks sent before a reset or a malformed chunk.
        seconds: Delay of ``hang_before_first_byte``, or per chunk of ``slow_drip``.
        message: Error message put in the body of ``status`` and ``rate_limit`` replies.
    """

    kind: FaultKind
    status_code: int = 500
    retry_after: str | None = None
    retry_after_ms: int | None = None
    after_chunks: int = 0
    seconds: float = 0.0
    message: str = "emulated failure"

    @classmethod
    def status(cls, status_code: int = 500, *, message: str | None = None) -> Fault:
        """Answer with ``status_code`` and an error body (OpenAI or Ollama shaped)."""
        if not 400 <= status_code <= 599:
            raise ConfigError(f"Fault.status: status_code must be 400..599, got {status_code}")
        return cls(kind="status", status_code=status_code, message=message or "emulated failure")

    @classmethod
    def rate_limit(
        cls, *, retry_after: str | float | None = "1", retry_after_ms: int | None = None
    ) -> Fault:
        """Answer 429 with ``Retry-After`` (seconds or HTTP date), optional ``retry-after-ms``."""
        value = None if retry_after is None else str(retry_after)
        return cls(
            kind="rate_limit",
            status_code=429,
            retry_after=value,
            retry_after_ms=retry_after_ms,
            message="rate limit exceeded",
        )

    @classmethod
    def reset_mid_stream(cls, *, after_chunks: int = 3) -> Fault:
        """Send headers and ``after_chunks`` chunks, then reset the TCP connection."""
        count = _non_negative("after_chunks", after_chunks)
        return cls(kind="reset_mid_stream", after_chunks=count)

    @classmethod
    def hang_before_first_byte(cls, seconds: float) -> Fault:
        """Wait ``seconds`` before sending anything, then answer normally."""
        return cls(kind="hang_before_first_byte", seconds=_non_negative("seconds", seconds))

    @classmethod
    def malformed_chunk(cls, *, after_chunks: int = 2) -> Fault:
        """After ``after_chunks`` good chunks, send one that is not valid JSON, then finish."""
        return cls(kind="malformed_chunk", after_chunks=_non_negative("after_chunks", after_chunks))

    @classmethod
    def truncated_json(cls) -> Fault:
        """Send a JSON reply cut in half (with a matching Content-Length), or a cut stream chunk."""
        return cls(kind="truncated_json")

    @classmethod
    def slow_drip(cls, seconds_per_chunk: float) -> Fault:
        """Stream normally but wait ``seconds_per_chunk`` before every chunk."""
        return cls(kind="slow_drip", seconds=_non_negative("seconds_per_chunk", seconds_per_chunk))

    @classmethod
    def reset_before_headers(cls) -> Fault:
        """Reset the TCP connection before any response byte."""
        return cls(kind="reset_before_headers")


def _non_negative(name: str, value: float) -> Any:
    if value < 0:
        raise ConfigError(f"Fault: {name} must be >= 0, got {value}")
    return value


@dataclass(kw_only=True)
class ModelProfile:
    """The knobs of one emulated model.

    Attributes:
        load_seconds: Cold start paid by the first request per model; concurrent first
            requests wait on the same load.
        first_token_seconds: Delay before the first token (after any load).
        inter_token_seconds: Delay between tokens.
        answer_tokens: Tokens (words) in a generated text answer.
        ttft_tail_rate: Probability (seeded) that a request's first token is late.
        ttft_tail_seconds: Extra first-token delay of such a late request (the heavy tail).
        fail_rate: Probability (seeded) that a request fails with ``fail_fault``.
        fail_fault: The random fault; ``Fault.status(500)`` when None.
        context_tokens: Prompt tokens over this answer 400 "maximum context length".
    """

    load_seconds: float = 0.0
    first_token_seconds: float = 0.0
    inter_token_seconds: float = 0.0
    answer_tokens: int = 12
    ttft_tail_rate: float = 0.0
    ttft_tail_seconds: float = 0.0
    fail_rate: float = 0.0
    fail_fault: Fault | None = None
    context_tokens: int | None = None

    def __post_init__(self) -> None:
        """Validate the knobs."""
        for name in ("load_seconds", "first_token_seconds", "inter_token_seconds",
                     "ttft_tail_seconds"):  # fmt: skip
            if getattr(self, name) < 0:
                raise ConfigError(f"ModelProfile.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("ttft_tail_rate", "fail_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"ModelProfile.{name} must be in 0..1, got {getattr(self, name)}")
        if self.answer_tokens < 1:
            raise ConfigError(f"ModelProfile.answer_tokens must be >= 1, got {self.answer_tokens}")


@dataclass(kw_only=True)
class EmulatorConfig:
    """Configuration of the whole emulator.

    Attributes:
        default: Profile of any model not named in ``models``.
        models: Profiles by model name.
        seed: Seed of the RNG behind random faults and the first-token tail.
        goaway_after: Graceful close (HTTP/2 GOAWAY, HTTP/1.1 ``Connection: close``) after
            this many requests per connection; None for never. (hypercorn's own default is
            1000, like nginx's, but on HTTP/2 it then drops the streams it had accepted, so
            the emulator only closes connections when asked to.)
        api_key: When set, requests must carry ``Authorization: Bearer <api_key>`` (else 401).
        strict_models: When True, unknown model names answer 404.
    """

    default: ModelProfile = field(default_factory=ModelProfile)
    models: dict[str, ModelProfile] = field(default_factory=dict)
    seed: int = 0
    goaway_after: int | None = None
    api_key: str | None = field(default=None, repr=False)
    strict_models: bool = False

    def profile_for(self, model: str) -> ModelProfile:
        """The profile of ``model``, or the default one."""
        return self.models.get(model, self.default)

    def model_names(self) -> list[str]:
        """Every listed model name, sorted."""
        return sorted({DEFAULT_MODEL_NAME, *self.models})


@dataclass(frozen=True)
class RecordedRequest:
    """One request the emulator received (for tests).

    Attributes:
        path: The request path.
        body: The decoded JSON body ({} when none or not JSON).
        headers: Request headers, lower-case names; ``authorization`` is redacted.
    """

    path: str
    body: dict[str, Any]
    headers: dict[str, str]


# --------------------------------------------------------------------------- pure helpers


def _digest(*parts: Any) -> int:
    raw = json.dumps(parts, sort_keys=True, default=str).encode()
    return int.from_bytes(hashlib.sha256(raw).digest()[:8], "big")


def split_tokens(text: str) -> list[str]:
    """Split ``text`` into word tokens, each with its leading whitespace.

    ``"".join(split_tokens(text)) == text`` always holds.
    """
    return re.findall(r"\s*\S+|\s+$", text)


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", "")) if isinstance(part, dict) else str(part) for part in content
        )
    return "" if content is None else str(content)


def prompt_token_count(messages: Iterable[Mapping[str, Any]]) -> int:
    """Prompt tokens of ``messages``: the words in their contents (at least 1 per message)."""
    total = 0
    for message in messages:
        total += max(1, len(_message_text(message.get("content")).split()))
    return total


def answer_tokens(seed: int, count: int) -> list[str]:
    """A deterministic answer of ``count`` word tokens for ``seed``, ending with a period."""
    rng = random.Random(seed)
    words = [rng.choice(_WORDS) for _ in range(count)]
    words[0] = words[0].capitalize()
    words[-1] += "."
    return [words[0]] + [" " + w for w in words[1:]]


def apply_limits(
    tokens: Sequence[str], *, max_tokens: int | None, stop: Sequence[str]
) -> tuple[list[str], str]:
    """Cut ``tokens`` at the first stop sequence and at ``max_tokens``.

    Args:
        tokens: The full answer's tokens.
        max_tokens: At most this many tokens (None: no limit).
        stop: Stop sequences; the text ends right before the first one found.

    Returns:
        The tokens to emit and the finish reason (``"stop"`` or ``"length"``).
    """
    limited = list(tokens if max_tokens is None else tokens[: max(0, max_tokens)])
    text = "".join(limited)
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    if cut >= 0:
        out: list[str] = []
        used = 0
        for token in limited:
            if used + len(token) > cut:
                if cut > used:
                    out.append(token[: cut - used])
                break
            out.append(token)
            used += len(token)
        return out, "stop"
    if max_tokens is not None and len(limited) < len(tokens):
        return limited, "length"
    return limited, "stop"


def _tool_function(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    fn = tool.get("function")
    return fn if isinstance(fn, Mapping) else tool


def choose_tool(
    tools: Sequence[Mapping[str, Any]] | None,
    tool_choice: Any,
    messages: Sequence[Mapping[str, Any]],
) -> Mapping[str, Any] | None:
    """The tool (its ``function`` object) to call, or None for a text answer.

    A named ``tool_choice`` picks that tool, ``"required"``/``"any"`` the first tool (or
    the one named in the last user message), ``"none"`` no tool. ``"auto"`` (or no
    choice) calls a tool only when the last message is not a tool result, so agent loops
    end: the tool named in the last user message, else the first one.
    """
    if not tools or tool_choice == "none":
        return None
    functions = [_tool_function(t) for t in tools]
    if isinstance(tool_choice, Mapping):
        wanted = _tool_function(tool_choice).get("name") or tool_choice.get("name")
        return next((f for f in functions if f.get("name") == wanted), functions[0])
    if isinstance(tool_choice, str) and tool_choice not in ("auto", "required", "any", ""):
        return next((f for f in functions if f.get("name") == tool_choice), functions[0])
    last = messages[-1] if messages else {}
    if tool_choice in (None, "auto", "") and last.get("role") in ("tool", "function"):
        return None
    user_text = _last_user_text(messages).lower()
    return next(
        (f for f in functions if str(f.get("name", "")).lower() in user_text and f.get("name")),
        functions[0],
    )


_QUOTED = re.compile(r"'([^']+)'|\"([^\"]+)\"")
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")


def _coerce(text: str, kind: Any) -> Any:
    """``text`` as a value of JSON-schema type ``kind``, or None when it is not one."""
    text = text.strip().strip("'\"")
    try:
        if kind == "integer":
            return int(text)
        if kind == "number":
            return float(text) if "." in text else int(text)
    except ValueError:
        return None
    if kind == "boolean":
        return {"true": True, "false": False}.get(text.lower())
    return text if kind == "string" and text else None


_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def _last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    return next(
        (_message_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"),
        "",
    )


def prompt_json_keys(user_text: str) -> list[str]:
    """The JSON keys a prompt asks for in quotes (``'setup' and 'punchline'``), in order."""
    keys = [a or b for a, b in _QUOTED.findall(user_text)]
    return list(dict.fromkeys(k for k in keys if _IDENTIFIER.match(k)))


def prompt_arguments(tool: Mapping[str, Any], user_text: str) -> dict[str, Any]:
    """Tool arguments the user's message states, like a model reading the prompt would.

    ``magic_function(3)`` written in the message fills the tool's parameters in order;
    otherwise quoted text fills its string parameters and bare numbers its numeric ones,
    in order. Only top-level parameters of a plain type are filled; the caller generates
    the rest from the schema.
    """
    params = tool.get("parameters") or {}
    props = params.get("properties") if isinstance(params, Mapping) else None
    if not isinstance(props, Mapping) or not props:
        return {}
    kinds = {name: spec.get("type") for name, spec in props.items() if isinstance(spec, Mapping)}
    name = re.escape(str(tool.get("name", "")))
    call = re.search(rf"{name}\(([^)]*)\)", user_text) if name else None
    found: dict[str, Any] = {}
    if call is not None:
        values = [v for v in call.group(1).split(",") if v.strip()]
        for (param, kind), raw in zip(kinds.items(), values, strict=False):
            value = _coerce(raw, kind)
            if value is not None:
                found[param] = value
        return found
    quoted = iter(a or b for a, b in _QUOTED.findall(user_text))
    numbers = iter(_NUMBER.findall(user_text))
    for param, kind in kinds.items():
        source = quoted if kind == "string" else numbers if kind in ("integer", "number") else None
        raw = next(source, None) if source is not None else None
        value = _coerce(raw, kind) if raw is not None else None
        if value is not None:
            found[param] = value
    return found


def _resolve_ref(ref: str, root: Mapping[str, Any]) -> Mapping[str, Any]:
    node: Any = root
    for part in ref.lstrip("#/").split("/"):
        if not part:
            continue
        node = (
            node.get(part.replace("~1", "/").replace("~0", "~"), {})
            if isinstance(node, Mapping)
            else {}
        )
    return node if isinstance(node, Mapping) else {}


def instance_from_schema(
    schema: Mapping[str, Any],
    rng: random.Random,
    *,
    root: Mapping[str, Any] | None = None,
    depth: int = 0,
) -> Any:
    """Generate a value valid against a JSON schema (the subset LLM tools use).

    Handles ``$ref`` (local), ``allOf``/``anyOf``/``oneOf``, ``const``, ``enum``, type
    lists, objects (all properties, nested), arrays (``minItems``/``maxItems``), strings
    (``minLength``/``maxLength``, common formats), numbers and integers (bounds,
    ``multipleOf``), booleans and null.

    Args:
        schema: The schema.
        rng: Source of the (deterministic) choices.
        root: The root schema for ``$ref`` resolution (defaults to ``schema``).
        depth: Recursion depth (deep recursive schemas stop with minimal values).

    Returns:
        A JSON-serializable value.
    """
    root = schema if root is None else root
    if "$ref" in schema:
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        target = {**_resolve_ref(str(schema["$ref"]), root), **rest}
        return instance_from_schema(target, rng, root=root, depth=depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return rng.choice(list(schema["enum"]))
    if "allOf" in schema:
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for sub in schema["allOf"]:
            sub = _resolve_ref(sub["$ref"], root) if "$ref" in sub else sub
            for key, value in sub.items():
                if key == "properties":
                    merged["properties"] = {**merged.get("properties", {}), **value}
                elif key == "required":
                    merged["required"] = [*merged.get("required", []), *value]
                else:
                    merged.setdefault(key, value)
        return instance_from_schema(merged, rng, root=root, depth=depth + 1)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [o for o in schema[key] if o.get("type") != "null"] or schema[key]
            return instance_from_schema(options[0], rng, root=root, depth=depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    return _instance_of_type(str(kind), schema, rng, root, depth)


def _instance_of_type(
    kind: str, schema: Mapping[str, Any], rng: random.Random, root: Mapping[str, Any], depth: int
) -> Any:
    if kind == "object":
        props: Mapping[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", []))
        return {
            name: instance_from_schema(sub, rng, root=root, depth=depth + 1)
            for name, sub in props.items()
            if depth < 8 or name in required
        }
    if kind == "array":
        low = int(schema.get("minItems", 1 if depth < 8 else 0))
        high = int(schema.get("maxItems", max(low, 2)))
        count = min(max(low, min(2, high)), high)
        items = schema.get("items", {})
        if isinstance(items, list):  # tuple form
            return [instance_from_schema(s, rng, root=root, depth=depth + 1) for s in items]
        values = [
            instance_from_schema(items, rng, root=root, depth=depth + 1) for _ in range(count)
        ]
        if schema.get("uniqueItems") and len({json.dumps(v, sort_keys=True) for v in values}) < len(
            values
        ):
            values = values[:1]
        return values
    if kind in ("integer", "number"):
        return _number(kind, schema, rng)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return _string(schema, rng)


def _number(kind: str, schema: Mapping[str, Any], rng: random.Random) -> int | float:
    low = schema.get("minimum")
    high = schema.get("maximum")
    ex_low = schema.get("exclusiveMinimum")
    ex_high = schema.get("exclusiveMaximum")
    step = 1 if kind == "integer" else 0.5
    if isinstance(ex_low, (int, float)) and not isinstance(ex_low, bool):
        low = ex_low + step if low is None else max(low, ex_low + step)
    if isinstance(ex_high, (int, float)) and not isinstance(ex_high, bool):
        high = ex_high - step if high is None else min(high, ex_high - step)
    low = 0 if low is None else low
    high = low + 100 if high is None else high
    multiple = schema.get("multipleOf")
    if kind == "integer":
        import math

        lo, hi = math.ceil(low), math.floor(high)
        value: int | float = rng.randint(lo, hi) if lo <= hi else lo
        if multiple:
            value = int(math.ceil(lo / multiple) * multiple)
        return int(value)
    if multiple:
        import math

        return float(math.ceil(low / multiple) * multiple)
    return round(low + (high - low) * rng.random(), 3) if high > low else float(low)


_FORMATS = {
    "date-time": "2026-01-02T03:04:05Z",
    "date": "2026-01-02",
    "time": "03:04:05Z",
    "email": "user@example.com",
    "uri": "https://example.com/item",
    "url": "https://example.com/item",
    "uuid": "123e4567-e89b-42d3-a456-426614174000",
    "ipv4": "127.0.0.1",
    "hostname": "example.com",
}


def _string(schema: Mapping[str, Any], rng: random.Random) -> str:
    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt in _FORMATS:
        return _FORMATS[fmt]
    low = int(schema.get("minLength", 0))
    high = int(schema.get("maxLength", max(low, 24)))
    text = rng.choice(_WORDS)
    while len(text) < low:
        text += " " + rng.choice(_WORDS)
    return text[:high] if high >= low else text


def _tool_call_id(seed: int) -> str:
    return f"call_{seed:016x}"[:29]


def _schema_of_format(response_format: Any) -> tuple[bool, Mapping[str, Any] | None]:
    """(wants JSON, schema or None) from an OpenAI ``response_format`` or Ollama ``format``."""
    if response_format == "json":
        return True, None
    if not isinstance(response_format, Mapping):
        return False, None
    kind = response_format.get("type")
    if kind == "json_schema":
        spec = response_format.get("json_schema", {})
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        return True, schema if isinstance(schema, Mapping) else {"type": "object"}
    if kind == "json_object":
        return True, None
    if "properties" in response_format or kind == "object" or "$ref" in response_format:
        return True, response_format
    return False, None


def _stop_list(stop: Any) -> list[str]:
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list):
        return [str(s) for s in stop if s]
    return []


def _int_or_none(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return None if number < 0 else number


@dataclass
class Reply:
    """What the emulated model answers to one request (pure, before any timing).

    Attributes:
        tokens: Content tokens (concatenate to the content).
        finish_reason: ``stop``, ``length`` or ``tool_calls``.
        tool_name: Name of the called tool, if any.
        tool_arguments: Arguments of the tool call.
        tool_call_id: Deterministic id of the tool call.
        prompt_tokens: Words in the messages.
    """

    tokens: list[str]
    finish_reason: str
    tool_name: str | None = None
    tool_arguments: dict[str, Any] = field(default_factory=dict)
    tool_call_id: str = ""
    prompt_tokens: int = 0

    @property
    def content(self) -> str:
        """The content text."""
        return "".join(self.tokens)

    @property
    def argument_pieces(self) -> list[str]:
        """The tool call's JSON arguments split in streaming pieces."""
        text = json.dumps(self.tool_arguments)
        return [text[i : i + 8] for i in range(0, len(text), 8)] or [""]

    @property
    def completion_tokens(self) -> int:
        """Tokens emitted: content tokens plus argument pieces of a tool call."""
        return len(self.tokens) + (len(self.argument_pieces) if self.tool_name else 0)


def build_reply(
    *,
    model: str,
    messages: Sequence[Mapping[str, Any]],
    profile: ModelProfile,
    max_tokens: int | None,
    stop: Sequence[str],
    tools: Sequence[Mapping[str, Any]] | None,
    tool_choice: Any,
    response_format: Any,
) -> Reply:
    """Compute the deterministic reply to one chat request.

    Args:
        model: Requested model name.
        messages: The chat messages.
        profile: The model's profile (``answer_tokens``).
        max_tokens: Token limit, if any.
        stop: Stop sequences.
        tools: Offered tools (OpenAI/Ollama shape).
        tool_choice: OpenAI ``tool_choice`` (None for Ollama).
        response_format: OpenAI ``response_format`` or Ollama ``format``.

    Returns:
        The reply.
    """
    seed = _digest(model, list(messages), tools, tool_choice, response_format)
    prompt = prompt_token_count(messages)
    tool = choose_tool(tools, tool_choice, messages)
    if tool is not None:
        params = tool.get("parameters") or {"type": "object", "properties": {}}
        args = instance_from_schema(params, random.Random(seed))
        if isinstance(args, dict):
            args.update(prompt_arguments(tool, _last_user_text(messages)))
        return Reply(
            tokens=[],
            finish_reason="tool_calls",
            tool_name=str(tool.get("name", "tool")),
            tool_arguments=args if isinstance(args, dict) else {"value": args},
            tool_call_id=_tool_call_id(seed),
            prompt_tokens=prompt,
        )
    wants_json, schema = _schema_of_format(response_format)
    if wants_json:
        if schema is not None:
            value = instance_from_schema(schema, random.Random(seed))
        else:
            # JSON mode has no schema: use the keys the prompt asks for ('setup' and
            # 'punchline'), else one "answer" key.
            keys = prompt_json_keys(_last_user_text(messages)) or ["answer"]
            words = min(profile.answer_tokens, 6)
            value = {
                key: "".join(answer_tokens(seed + n, words)).strip() for n, key in enumerate(keys)
            }
        full = split_tokens(json.dumps(value))
    else:
        full = answer_tokens(seed, profile.answer_tokens)
    tokens, reason = apply_limits(full, max_tokens=max_tokens, stop=stop)
    return Reply(tokens=tokens, finish_reason=reason, prompt_tokens=prompt)


# --------------------------------------------------------------------------- wire payloads


def openai_completion(reply: Reply, *, model: str, rid: str, created: int) -> dict[str, Any]:
    """The OpenAI ``chat.completion`` JSON object of ``reply``."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.content, "refusal": None}
    if reply.tool_name:
        message["content"] = None
        message["tool_calls"] = [
            {
                "id": reply.tool_call_id,
                "type": "function",
                "function": {
                    "name": reply.tool_name,
                    "arguments": json.dumps(reply.tool_arguments),
                },
            }
        ]
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": 0, "message": message, "finish_reason": reply.finish_reason, "logprobs": None}
        ],
        "usage": _openai_usage(reply),
        "system_fingerprint": "fp_emulator",
    }


def _openai_usage(reply: Reply) -> dict[str, int]:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }


def openai_chunks(
    reply: Reply, *, model: str, rid: str, created: int, include_usage: bool
) -> list[dict[str, Any]]:
    """Every ``chat.completion.chunk`` object of a streamed ``reply``, in order.

    The first carries the role, then one per token (or tool-call piece), then the
    finish reason, then (``include_usage``) a usage chunk with empty ``choices``.
    """
    base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "fp_emulator"}  # fmt: skip
    extra: dict[str, Any] = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {**base, "choices": [choice], **extra}

    out: list[dict[str, Any]] = []
    if reply.tool_name:
        out.append(chunk({"role": "assistant", "content": None, "tool_calls": [{
            "index": 0, "id": reply.tool_call_id, "type": "function",
            "function": {"name": reply.tool_name, "arguments": ""}}]}))  # fmt: skip
        out.extend(
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            for piece in reply.argument_pieces
        )
    else:
        out.append(chunk({"role": "assistant", "content": ""}))
        out.extend(chunk({"content": token}) for token in reply.tokens)
    out.append(chunk({}, reply.finish_reason))
    if include_usage:
        out.append({**base, "choices": [], "usage": _openai_usage(reply)})
    return out


def _iso_now(now: float) -> str:
    return datetime.fromtimestamp(now, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def ollama_final(
    reply: Reply | None,
    *,
    model: str,
    now: float,
    durations: Mapping[str, float],
    done_reason: str,
    key: str = "message",
) -> dict[str, Any]:
    """The final Ollama object (``done: true``) with counts and nanosecond durations."""
    final: dict[str, Any] = {"model": model, "created_at": _iso_now(now)}
    if key == "message":
        final["message"] = {"role": "assistant", "content": ""}
    else:
        final["response"] = ""
    final.update({"done": True, "done_reason": done_reason})
    ns = {k: int(v * 1e9) for k, v in durations.items()}
    final.update({
        "total_duration": ns.get("total", 0),
        "load_duration": ns.get("load", 0),
        "prompt_eval_count": reply.prompt_tokens if reply else 0,
        "prompt_eval_duration": ns.get("prompt_eval", 0),
        "eval_count": reply.completion_tokens if reply else 0,
        "eval_duration": ns.get("eval", 0),
    })  # fmt: skip
    return final


def ollama_tool_calls(reply: Reply) -> list[dict[str, Any]]:
    """Ollama ``message.tool_calls`` (arguments as an object)."""
    return [{"function": {"name": reply.tool_name, "arguments": reply.tool_arguments}}]


def error_body(path: str, status: int, message: str) -> dict[str, Any]:
    """An OpenAI-shaped (``/v1``) or Ollama-shaped (``/api``) error body."""
    if path.startswith("/api/"):
        return {"error": message}
    kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
            429: "rate_limit_error"}.get(status, "server_error")  # fmt: skip
    return {"error": {"message": message, "type": kind, "param": None, "code": str(status)}}


# --------------------------------------------------------------------------- the app


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _Plan:
    """How one request will be played: fault and timings."""

    fault: Fault | None = None
    tail_seconds: float = 0.0


class EmulatorApp:
    """The ASGI application of the emulator.

    Args:
        config: The emulator configuration.
        clock: Monotonic clock (seconds), injectable.
        wall_clock: Wall clock for ``created`` timestamps, injectable.
        sleep: Async sleep used for every delay, injectable.

    Attributes:
        config: The configuration.
        reset_hook: Set by the server: breaks a client's TCP connection. Without it a
            reset raises inside the app (the server then drops the stream).
        stats_hook: Set by the server: its counters, served at ``GET /_emulator/stats``
            (so a benchmark can read the connection count of an emulator in another process).
        requests: Requests received (all paths).
        active_requests: Requests in progress.
        chat_requests: Requests to the completion paths.
        load_counts: Cold loads performed, by model.
        disconnects: Streams the client closed before their end.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Create the app."""
        self.config = config or EmulatorConfig()
        self._clock = clock
        self._wall = wall_clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._rng = random.Random(self.config.seed)
        self._faults: deque[list[Any]] = deque()  # [fault, remaining, model]
        self._loaded: set[str] = set()
        self._loading: dict[str, asyncio.Future[None]] = {}
        self._history: dict[str, deque[RecordedRequest]] = {}
        self.reset_hook: ResetHook | None = None
        self.stats_hook: Callable[[], dict[str, Any]] | None = None
        self.requests = 0
        self.active_requests = 0
        self.chat_requests = 0
        self.load_counts: dict[str, int] = {}
        self.disconnects = 0

    # ---- control (thread-safe, called from test threads)

    def inject(self, fault: Fault, *, times: int = 1, model: str | None = None) -> None:
        """Apply ``fault`` to the next ``times`` completion requests (of ``model`` if given)."""
        if times < 1:
            raise ConfigError(f"inject: times must be >= 1, got {times}")
        with self._lock:
            self._faults.append([fault, times, model])

    def clear_faults(self) -> None:
        """Drop every injected fault not yet played."""
        with self._lock:
            self._faults.clear()

    @property
    def pending_faults(self) -> int:
        """Injected fault plays not yet used."""
        with self._lock:
            return sum(entry[1] for entry in self._faults)

    @property
    def loaded_models(self) -> set[str]:
        """Models currently loaded (a copy)."""
        with self._lock:
            return set(self._loaded)

    def unload(self, model: str | None = None) -> None:
        """Unload ``model`` (or every model) so its next request pays the cold start again."""
        with self._lock:
            if model is None:
                self._loaded.clear()
            else:
                self._loaded.discard(model)

    def bodies(self, path: str) -> list[dict[str, Any]]:
        """JSON bodies of the recent requests to ``path``, oldest first."""
        return [r.body for r in self.recorded(path)]

    def recorded(self, path: str) -> list[RecordedRequest]:
        """The recent requests to ``path``, oldest first."""
        with self._lock:
            return list(self._history.get(path, ()))

    def clear_history(self) -> None:
        """Forget recorded requests."""
        with self._lock:
            self._history.clear()

    def reset_state(self) -> None:
        """Clear faults and history (between tests); loaded models are kept."""
        self.clear_faults()
        self.clear_history()

    # ---- ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection scope."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        with self._lock:
            self.requests += 1
            self.active_requests += 1
        try:
            await self._http(scope, receive, send)
        finally:
            with self._lock:
                self.active_requests -= 1

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        raw = await _read_body(receive)
        headers = {k.decode("latin1").lower(): v.decode("latin1") for k, v in scope["headers"]}
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        self._record(path, body if isinstance(body, dict) else {}, headers)
        try:
            self._check_auth(path, headers)
            if method == "GET":
                await self._get(path, send)
            elif method == "POST" and path in _CHAT_PATHS:
                if not isinstance(body, dict) or (raw and not body):
                    raise _HTTPError(400, "request body must be a JSON object")
                await self._completion(scope, path, body, receive, send)
            else:
                raise _HTTPError(404, f"no route for {method} {path}")
        except _HTTPError as exc:
            await _send_json(send, exc.status, error_body(path, exc.status, exc.message))

    def _record(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> None:
        safe = {k: ("<redacted>" if k in ("authorization", "api-key", "x-api-key") else v)
                for k, v in headers.items()}  # fmt: skip
        with self._lock:
            self._history.setdefault(path, deque(maxlen=_HISTORY)).append(
                RecordedRequest(path, body, safe)
            )

    def _check_auth(self, path: str, headers: Mapping[str, str]) -> None:
        key = self.config.api_key
        if key is None or path == "/health":
            return
        if headers.get("authorization", "") != f"Bearer {key}":
            raise _HTTPError(401, "invalid or missing API key")

    async def _get(self, path: str, send: Send) -> None:
        now = self._wall()
        names = self.config.model_names()
        if path == "/health":
            await _send_json(send, 200, {"status": "ok"})
        elif path == "/v1/models":
            data = [{"id": n, "object": "model", "created": 0, "owned_by": "emulator"}
                    for n in names]  # fmt: skip
            await _send_json(send, 200, {"object": "list", "data": data})
        elif path == "/api/tags":
            await _send_json(send, 200, {"models": [_ollama_model(n) for n in names]})
        elif path == "/_emulator/stats" and self.stats_hook is not None:
            await _send_json(send, 200, self.stats_hook())
        elif path == "/api/ps":
            loaded = sorted(self.loaded_models)
            models = [{**_ollama_model(n), "expires_at": _iso_now(now + 300), "size_vram": 0}
                      for n in loaded]  # fmt: skip
            await _send_json(send, 200, {"models": models})
        else:
            raise _HTTPError(404, f"no route for GET {path}")

    # ---- completions

    def _next_plan(self, model: str, profile: ModelProfile) -> _Plan:
        with self._lock:
            plan = _Plan()
            for entry in self._faults:
                if entry[2] is None or entry[2] == model:
                    plan.fault = entry[0]
                    entry[1] -= 1
                    if entry[1] <= 0:
                        self._faults.remove(entry)
                    break
            if plan.fault is None and profile.fail_rate and self._rng.random() < profile.fail_rate:
                plan.fault = profile.fail_fault or Fault.status(500)
            if profile.ttft_tail_rate and self._rng.random() < profile.ttft_tail_rate:
                plan.tail_seconds = profile.ttft_tail_seconds
        return plan

    async def _ensure_loaded(self, model: str, profile: ModelProfile) -> float:
        """Load ``model`` if cold (once, shared by concurrent callers); returns seconds waited."""
        start = self._clock()
        while True:
            with self._lock:
                if model in self._loaded:
                    return self._clock() - start
                pending = self._loading.get(model)
                if pending is None:
                    pending = asyncio.get_running_loop().create_future()
                    self._loading[model] = pending
                    self.load_counts[model] = self.load_counts.get(model, 0) + 1
                    owner = True
                else:
                    owner = False
            if not owner:
                await asyncio.shield(pending)
                continue
            try:
                if profile.load_seconds:
                    await self._sleep(profile.load_seconds)
                with self._lock:
                    self._loaded.add(model)
            finally:
                with self._lock:
                    del self._loading[model]
                if not pending.done():
                    pending.set_result(None)
            return self._clock() - start

    async def _completion(
        self, scope: Scope, path: str, body: dict[str, Any], receive: Receive, send: Send
    ) -> None:
        with self._lock:
            self.chat_requests += 1
        start = self._clock()
        model = str(body.get("model") or DEFAULT_MODEL_NAME)
        if self.config.strict_models and model not in self.config.model_names():
            raise _HTTPError(404, f"model {model!r} not found")
        profile = self.config.profile_for(model)
        plan = self._next_plan(model, profile)
        fault = plan.fault
        client = scope.get("client")
        if fault is not None:
            if fault.kind == "reset_before_headers":
                await self._reset(client)
                return
            if fault.kind == "hang_before_first_byte":
                await self._sleep(fault.seconds)
            elif fault.kind in ("status", "rate_limit"):
                await self._send_fault_status(path, fault, send)
                return
        is_ollama = path.startswith("/api/")
        raw_options = body.get("options")
        options: dict[str, Any] = raw_options if isinstance(raw_options, dict) else {}
        if path == "/api/generate":
            prompt = body.get("prompt") or ""
            messages = [{"role": "user", "content": prompt}] if prompt else []
            if body.get("system"):
                messages.insert(0, {"role": "system", "content": body["system"]})
        else:
            messages = body.get("messages") or []
            if not isinstance(messages, list):
                raise _HTTPError(400, "'messages' must be a list")
        load_seconds = await self._ensure_loaded(model, profile)
        if is_ollama and not messages:  # Ollama: empty prompt/messages = load (or unload)
            await self._ollama_load_only(path, body, model, start, load_seconds, send)
            return
        if profile.context_tokens is not None and prompt_token_count(messages) > (
            profile.context_tokens
        ):
            raise _HTTPError(400, f"This model's maximum context length is "
                             f"{profile.context_tokens} tokens; the prompt is longer")  # fmt: skip
        if is_ollama:
            max_tokens = _int_or_none(options.get("num_predict"))
            stop = _stop_list(options.get("stop"))
            response_format = body.get("format")
            stream = body.get("stream", True) is not False
        else:
            max_tokens = _int_or_none(body.get("max_completion_tokens"))
            if max_tokens is None:
                max_tokens = _int_or_none(body.get("max_tokens"))
            stop = _stop_list(body.get("stop"))
            response_format = body.get("response_format")
            stream = bool(body.get("stream", False))
        reply = build_reply(
            model=model,
            messages=messages,
            profile=profile,
            max_tokens=max_tokens,
            stop=stop,
            tools=body.get("tools"),
            tool_choice=None if is_ollama else body.get("tool_choice"),
            response_format=response_format,
        )
        first_delay = profile.first_token_seconds + plan.tail_seconds
        ctx = _Ctx(path, model, reply, start, load_seconds, first_delay, fault, client)
        if is_ollama:
            await self._ollama(ctx, body, stream, receive, send)
            keep = body.get("keep_alive")
            if keep in (0, "0", "0s", "0m"):
                self.unload(model)
        else:
            await self._openai(ctx, body, stream, receive, send)

    async def _send_fault_status(self, path: str, fault: Fault, send: Send) -> None:
        headers: list[tuple[bytes, bytes]] = []
        if fault.kind == "rate_limit":
            if fault.retry_after is not None:
                headers.append((b"retry-after", fault.retry_after.encode()))
            if fault.retry_after_ms is not None:
                headers.append((b"retry-after-ms", str(fault.retry_after_ms).encode()))
        await _send_json(send, fault.status_code,
                         error_body(path, fault.status_code, fault.message), headers)  # fmt: skip

    async def _reset(self, client: Any) -> None:
        hook = self.reset_hook
        if hook is not None and await hook(tuple(client) if client else None):
            return
        raise ConnectionResetError("emulated connection reset")

    async def _ollama_load_only(
        self,
        path: str,
        body: dict[str, Any],
        model: str,
        start: float,
        load_seconds: float,
        send: Send,
    ) -> None:
        reason = "load"
        if body.get("keep_alive") in (0, "0", "0s", "0m"):
            self.unload(model)
            reason = "unload"
        key = "response" if path == "/api/generate" else "message"
        final = ollama_final(
            None,
            model=model,
            now=self._wall(),
            done_reason=reason,
            key=key,
            durations={"total": self._clock() - start, "load": load_seconds},
        )
        if body.get("stream", True) is not False:
            await _send_stream(send, [json.dumps(final).encode() + b"\n"], "application/x-ndjson")
        else:
            await _send_json(send, 200, final)

    async def _openai(
        self, ctx: _Ctx, body: dict[str, Any], stream: bool, receive: Receive, send: Send
    ) -> None:
        rid = f"chatcmpl-{_digest(ctx.model, ctx.reply.content, ctx.reply.tool_call_id):x}"
        created = int(self._wall())
        if not stream:
            await self._sleep_generation(ctx)
            payload = json.dumps(openai_completion(ctx.reply, model=ctx.model, rid=rid,
                                                   created=created)).encode()  # fmt: skip
            await self._send_whole(ctx, payload, send)
            return
        options = body.get("stream_options") or {}
        include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
        chunks = openai_chunks(ctx.reply, model=ctx.model, rid=rid, created=created,
                               include_usage=include_usage)  # fmt: skip
        frames = [b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks]
        frames.append(b"data: [DONE]\n\n")
        # chunk 0 is the role (with the first token's timing), then one chunk per token
        pieces = len(ctx.reply.argument_pieces) if ctx.reply.tool_name else len(ctx.reply.tokens)
        gaps = [False, False, *([True] * (pieces - 1))]
        await self._play_stream(ctx, frames, "text/event-stream", receive, send, gaps=gaps)

    async def _ollama(
        self, ctx: _Ctx, body: dict[str, Any], stream: bool, receive: Receive, send: Send
    ) -> None:
        key = "response" if ctx.path == "/api/generate" else "message"
        reply = ctx.reply
        if not stream:
            eval_start = self._clock()
            await self._sleep_generation(ctx)
            final = self._ollama_done(ctx, eval_start, key)
            if key == "message":
                final["message"]["content"] = reply.content
                if reply.tool_name:
                    final["message"]["tool_calls"] = ollama_tool_calls(reply)
            else:
                final["response"] = reply.content
            await self._send_whole(ctx, json.dumps(final).encode(), send)
            return
        now_iso = _iso_now(self._wall())
        lines: list[bytes] = []
        if reply.tool_name and key == "message":
            message = {"role": "assistant", "content": "", "tool_calls": ollama_tool_calls(reply)}
            lines.append(_ndjson({"model": ctx.model, "created_at": now_iso, "message": message,
                                  "done": False}))  # fmt: skip
        for token in reply.tokens:
            part: dict[str, Any] = {"model": ctx.model, "created_at": now_iso}
            part[key] = {"role": "assistant", "content": token} if key == "message" else token
            part["done"] = False
            lines.append(_ndjson(part))
        eval_marker: list[float] = []

        def final_line() -> bytes:
            return _ndjson(self._ollama_done(ctx, eval_marker[0] if eval_marker else ctx.start,
                                             key))  # fmt: skip

        gaps = [False, *([True] * (len(lines) - 1))]
        await self._play_stream(ctx, lines, "application/x-ndjson", receive, send,
                                final=final_line, marker=eval_marker, gaps=gaps)  # fmt: skip

    def _ollama_done(self, ctx: _Ctx, eval_start: float, key: str) -> dict[str, Any]:
        now = self._clock()
        reason = "length" if ctx.reply.finish_reason == "length" else "stop"
        durations = {
            "total": now - ctx.start,
            "load": ctx.load_seconds,
            "prompt_eval": max(0.0, eval_start - ctx.start - ctx.load_seconds),
            "eval": max(0.0, now - eval_start),
        }
        return ollama_final(ctx.reply, model=ctx.model, now=self._wall(), durations=durations,
                            done_reason=reason, key=key)  # fmt: skip

    async def _sleep_generation(self, ctx: _Ctx) -> None:
        total = ctx.first_delay + ctx.reply.completion_tokens * self.config.profile_for(
            ctx.model).inter_token_seconds  # fmt: skip
        if total > 0:
            await self._sleep(total)

    async def _send_whole(self, ctx: _Ctx, payload: bytes, send: Send) -> None:
        fault = ctx.fault
        kind = fault.kind if fault else None
        content_type = b"application/json"
        if kind == "truncated_json":
            payload = payload[: len(payload) // 2]
        elif kind == "malformed_chunk":
            payload = b"{not json" + payload[:20]
        if kind == "reset_mid_stream":
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(payload)).encode())]})  # fmt: skip
            await send({"type": "http.response.body", "body": payload[: len(payload) // 2],
                        "more_body": True})  # fmt: skip
            await self._reset(ctx.client)
            return
        await _send_bytes(send, 200, payload, content_type)

    async def _play_stream(
        self,
        ctx: _Ctx,
        frames: list[bytes],
        content_type: str,
        receive: Receive,
        send: Send,
        *,
        final: Callable[[], bytes] | None = None,
        marker: list[float] | None = None,
        gaps: Sequence[bool] = (),
    ) -> None:
        """Send ``frames`` (then ``final()``) with the inter-token delay where ``gaps`` says.

        A slow drip waits before every frame but the first.
        """
        fault = ctx.fault
        kind = fault.kind if fault else None
        inter = self.config.profile_for(ctx.model).inter_token_seconds
        drip = kind == "slow_drip" and fault is not None
        if drip and fault is not None:
            inter = fault.seconds
        if kind == "truncated_json":
            cut = frames[min(1, len(frames) - 1)]
            frames = [*frames[:1], cut[: max(8, len(cut) // 2)] + b"\n\n"]
            final = None
        disconnected = asyncio.Event()
        watcher = asyncio.ensure_future(_watch_disconnect(receive, disconnected))
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", content_type.encode()),
                        (b"cache-control", b"no-cache"),
                    ],
                }
            )
            if ctx.first_delay > 0:
                await self._sleep(ctx.first_delay)
            if marker is not None:
                marker.append(self._clock())
            for sent, frame in enumerate(_with_final(frames, final)):
                if disconnected.is_set():
                    with self._lock:
                        self.disconnects += 1
                    return
                if kind == "reset_mid_stream" and fault is not None and sent >= fault.after_chunks:
                    await self._reset(ctx.client)
                    return
                if kind == "malformed_chunk" and fault is not None and sent == fault.after_chunks:
                    bad = b"data: {\"choices\": [{\"delta\": \n\n" if content_type.startswith(
                        "text/") else b"{\"message\": {\"content\": \n"  # fmt: skip
                    await send({"type": "http.response.body", "body": bad, "more_body": True})
                gap = drip if sent > 0 else False
                if not drip and sent < len(gaps):
                    gap = gaps[sent]
                if gap and inter > 0:
                    await self._sleep(inter)
                await send({"type": "http.response.body", "body": frame, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()


@dataclass
class _Ctx:
    path: str
    model: str
    reply: Reply
    start: float
    load_seconds: float
    first_delay: float
    fault: Fault | None
    client: Any


def _with_final(frames: list[bytes], final: Callable[[], bytes] | None) -> Iterable[bytes]:
    yield from frames
    if final is not None:
        yield final()


def _ndjson(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def _ollama_model(name: str) -> dict[str, Any]:
    digest = hashlib.sha256(name.encode()).hexdigest()
    return {
        "name": name,
        "model": name,
        "modified_at": "2026-01-01T00:00:00Z",
        "size": 1_000_000,
        "digest": digest,
        "details": {
            "format": "gguf",
            "family": "emulator",
            "parameter_size": "1M",
            "quantization_level": "Q4_K_M",
        },
    }


async def _read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(parts)


async def _watch_disconnect(receive: Receive, event: asyncio.Event) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            event.set()
            return


async def _send_bytes(
    send: Send,
    status: int,
    payload: bytes,
    content_type: bytes,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", content_type), (b"content-length", str(len(payload)).encode()),
        *headers]})  # fmt: skip
    await send({"type": "http.response.body", "body": payload, "more_body": False})


async def _send_json(
    send: Send, status: int, obj: Any, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    await _send_bytes(send, status, json.dumps(obj).encode(), b"application/json", headers)


async def _send_stream(send: Send, frames: Iterable[bytes], content_type: str) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", content_type.encode())]})  # fmt: skip
    for frame in frames:
        await send({"type": "http.response.body", "body": frame, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
