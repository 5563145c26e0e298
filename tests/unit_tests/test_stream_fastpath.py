"""The stream parsers' fast paths give exactly what the general path gives.

Every stream is fed to two parsers, split at every byte boundary, byte by byte, at
random cuts and at event boundaries (the reads the fast paths see): the parser as
shipped, and a reference whose fast paths are off (whole-event decoding disabled, every
chunk from the validated pydantic constructors). The chunks (types, values, set fields,
text), the end-marker state and any error (type, message, endpoint) must be identical.
"""

from __future__ import annotations

import gc
import itertools
import json
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from langchain_core.messages import AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk

from langchain_fastpipe.errors import HTTPStatusError, ProtocolViolationError
from langchain_fastpipe.providers import _decoders, _ollama, _openai
from langchain_fastpipe.providers._base import StreamParserBase
from langchain_fastpipe.providers._decoders import NDJSONDecoder, SSEDecoder, json_object
from langchain_fastpipe.providers._fastchunk import validated_text_chunk
from langchain_fastpipe.providers._ollama import OllamaStreamParser
from langchain_fastpipe.providers._openai import OpenAIStreamParser

ENDPOINT = "http://127.0.0.1:9/v1"

# --- streams -----------------------------------------------------------------------------


def _sse(obj: Any, *, sep: str = "\n", prefix: str = "data: ") -> bytes:
    text = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return f"{prefix}{text}{sep}{sep}".encode()


def _delta(delta: dict[str, Any], finish: str | None = None, **top: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"id": "chatcmpl-7", "object": "chat.completion.chunk", "model": "m"}
    return {**base, **top, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


USAGE = {
    "id": "chatcmpl-7",
    "choices": [],
    "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
}

OPENAI_TEXT = b"".join(
    [
        _sse(_delta({"role": "assistant", "content": ""})),
        _sse(_delta({"content": "h\u00e9llo"})),
        _sse(_delta({"content": " \u4e16\u754c \U0001f680"})),
        _sse(_delta({"content": None})),
        _sse(_delta({})),
        _sse(_delta({"content": '\\n"quoted"\t'})),
        _sse(_delta({}, "stop", system_fingerprint="fp_1")),
        _sse(USAGE),
        b"data: [DONE]\n\n",
    ]
)

OPENAI_TOOLS = b"".join(
    [
        _sse(_delta({"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": ""}}]})),
        _sse(_delta({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]})),
        _sse(_delta({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]})),
        _sse(_delta({"reasoning_content": "thinking..."})),
        _sse(_delta({"content": "", "refusal": "no"})),
        _sse(_delta({"content": "text"}, usage=None)),
        _sse(_delta({"content": "x"}, id=17)),  # a non-string id: None
        _sse(_delta({"content": 5})),  # a non-string content: the general path
        _sse({"id": "c", "choices": [{"delta": {"content": "a"}}, {"delta": {"content": "b"}}]}),
        _sse({"id": "c", "choices": ["not an object"]}),
        _sse({"id": "c", "choices": []}),
        _sse({"id": "c"}),
        _sse(_delta({"content": "with usage"}, usage={"prompt_tokens": 1})),
        _sse(_delta({}, "tool_calls")),
        b"data: [DONE]\n\n",
    ]
)  # fmt: skip

OPENAI_FRAMING = (
    b"\xef\xbb\xbf"  # BOM
    + _sse(_delta({"content": "after bom"}))
    + b": keep-alive\n\n"
    + _sse(_delta({"content": "crlf"}), sep="\r\n")
    + _sse(_delta({"content": "cr"}), sep="\r")
    + _sse(_delta({"content": "cr before a plain event"}), sep="\r")
    + _sse(_delta({"content": "plain after cr"}))
    + b"event: message\n"
    + _sse(_delta({"content": "named event"}))
    + b"id: 42\nretry: 100\n"
    + _sse(_delta({"content": "with id"}))
    + b'data: {"id":"m","choices":[{"delta":\ndata: {"content":"multi-line"}}]}\n\n'
    + _sse(_delta({"content": "no space"}), prefix="data:")
    + _sse(_delta({"content": "two spaces"}), prefix="data:  ")
    + b'data: {"id":"t","choices":[{"delta":{"content":"trailing"}}]}  \n\n'
    + b"data: \n\n"
    + b"data:\n\n"
    + b"\n\n"
    + b"data: [DONE]  \n\n"
    + _sse(_delta({"content": "after done"}))
    + b"data: [DONE]"  # no final blank line: flush() dispatches it
)

OPENAI_ERROR_EVENT = (
    _sse(_delta({"content": "partial"}))
    + b'event: error\ndata: {"message": "overloaded", "code": 503}\n\n'
    + b"data: [DONE]\n\n"
)
OPENAI_ERROR_FIELD = (
    _sse(_delta({"content": "partial"}))
    + _sse({"error": {"message": "rate limited", "code": 429}, **_delta({"content": "x"})})
    + b"data: [DONE]\n\n"
)
OPENAI_BAD_JSON = _sse(_delta({"content": "ok"})) + b'data: {"choices": [\n\ndata: [DONE]\n\n'
OPENAI_NOT_OBJECT = _sse(_delta({"content": "ok"})) + b"data: [1, 2]\n\ndata: [DONE]\n\n"
OPENAI_EXTRA_DATA = _sse(_delta({"content": "ok"})) + b'data: {"a": 1} {"b": 2}\n\n'
OPENAI_BAD_UTF8 = _sse(_delta({"content": "ok"})) + b'data: {"choices": "\xff\xfe"}\n\n'
OPENAI_DELTA_NOT_OBJECT = _sse(_delta({"content": "ok"})) + _sse({"choices": [{"delta": "x"}]})
OPENAI_TRUNCATED = _sse(_delta({"content": "ok"})) + _sse(_delta({"content": "no end"}))
OPENAI_NAN = _sse(_delta({"content": "ok"}, temperature=float("nan"))) + b"data: [DONE]\n\n"

OPENAI_STREAMS = {
    "text": OPENAI_TEXT,
    "tools": OPENAI_TOOLS,
    "framing": OPENAI_FRAMING,
    "error event": OPENAI_ERROR_EVENT,
    "error field": OPENAI_ERROR_FIELD,
    "bad json": OPENAI_BAD_JSON,
    "not an object": OPENAI_NOT_OBJECT,
    "extra data": OPENAI_EXTRA_DATA,
    "bad utf-8": OPENAI_BAD_UTF8,
    "truncated": OPENAI_TRUNCATED,
    "delta not an object": OPENAI_DELTA_NOT_OBJECT,
    "nan": OPENAI_NAN,
}


def _nd(obj: Any, *, end: str = "\n") -> bytes:
    return (obj if isinstance(obj, str) else json.dumps(obj)).encode() + end.encode()


def _line(content: Any, **message: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "created_at": "2024-01-01T00:00:00Z",
        "message": {"role": "assistant", "content": content, **message},
        "done": False,
    }


DONE_LINE = {
    "model": "m",
    "created_at": "2024-01-01T00:00:01Z",
    "message": {"role": "assistant", "content": ""},
    "done": True,
    "done_reason": "stop",
    "total_duration": 123,
    "load_duration": 4,
    "prompt_eval_count": 5,
    "eval_count": 6,
    "eval_duration": 7,
}

OLLAMA_TEXT = b"".join(
    [
        _nd(_line("h\u00e9llo")),
        _nd(_line(" \u4e16\u754c \U0001f680")),
        _nd(_line("")),
        _nd(_line(None)),
        _nd(_line(7)),
        _nd(_line('\\n"q"')),
        _nd(DONE_LINE),
    ]
)

OLLAMA_MIXED = b"".join(
    [
        _nd(_line("", thinking="hmm")),
        _nd(_line("a", thinking="")),
        _nd(_line("", tool_calls=[{"id": "call_a", "function": {
            "name": "get_weather", "arguments": {"city": "Paris"}}}])),
        _nd(_line("b", tool_calls=[])),
        _nd({"model": "m", "done": False}),  # no message
        _nd({"model": "m", "message": {}, "done": False}),
        _nd({"model": "m", "message": None, "done": False}),
        _nd(_line("c"), end="\r\n"),
        b"\n",
        b"   \n",
        _nd("  " + json.dumps(_line("padded")) + "  "),
        _nd({**_line("done as int"), "done": 0}),
        _nd({**_line("last"), "done": 1, "done_reason": "length"}),
        json.dumps(_line("after done, no newline")).encode(),
    ]
)  # fmt: skip

OLLAMA_STREAMS = {
    "text": OLLAMA_TEXT,
    "mixed": OLLAMA_MIXED,
    "error": _nd(_line("partial")) + _nd({"error": "model not found"}) + _nd(DONE_LINE),
    "bad json": _nd(_line("ok")) + b'{"message": \n' + _nd(DONE_LINE),
    "not an object": _nd(_line("ok")) + b"[1, 2]\n" + _nd(DONE_LINE),
    "bad utf-8": _nd(_line("ok")) + b'{"message": "\xff"}\n' + _nd(DONE_LINE),
    "message not an object": _nd(_line("ok")) + _nd({"message": "hi", "done": False}),
    "truncated": _nd(_line("ok")) + _nd(_line("no done line")),
    "bad tail": _nd(_line("ok")) + b'{"done": tr',
}

# --- running the two parsers -------------------------------------------------------------


def _splits(data: bytes, *, reads: Sequence[bytes]) -> Iterator[list[bytes]]:
    """Every 2-way split, byte by byte, random cuts, and the event-aligned reads."""
    yield [data]
    yield list(reads)
    yield [b"".join(reads[i : i + 2]) for i in range(0, len(reads), 2)]
    for i in range(1, len(data)):
        yield [data[:i], data[i:]]
    yield [data[i : i + 1] for i in range(len(data))]
    rng = random.Random(2024)
    for _ in range(40):
        cuts = sorted(rng.sample(range(1, len(data)), min(6, len(data) - 1)))
        yield [data[a:b] for a, b in itertools.pairwise([0, *cuts, len(data)])]


def _reads(data: bytes, sep: bytes) -> list[bytes]:
    parts = data.split(sep)
    return [part + sep for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _describe(chunk: ChatGenerationChunk) -> tuple[Any, ...]:
    message = chunk.message
    return (
        type(chunk),
        type(message),
        chunk,
        dict(chunk.__dict__),
        dict(message.__dict__),
        list(message.__dict__),
        set(chunk.model_fields_set),
        set(message.model_fields_set),
        chunk.__pydantic_extra__,
        message.__pydantic_extra__,
        str(chunk.text),
    )


def _outcome(parser: StreamParserBase[Any], pieces: Sequence[bytes]) -> tuple[Any, ...]:
    chunks: list[ChatGenerationChunk] = []
    error: tuple[Any, ...] | None = None
    try:
        for piece in pieces:
            chunks.extend(parser.feed(piece))
        chunks.extend(parser.finish())
    except (ProtocolViolationError, HTTPStatusError) as exc:
        endpoint = getattr(exc, "endpoint", None)
        error = (type(exc), str(exc), endpoint)
    return [_describe(c) for c in chunks], parser.done, error


def _validated(with_id: bool) -> Callable[[str, dict[str, Any], str | None], ChatGenerationChunk]:
    def build(content: str, meta: dict[str, Any], msg_id: str | None) -> ChatGenerationChunk:
        return validated_text_chunk(content, meta, msg_id, with_id=with_id)

    return build


def _reference_outcome(provider: str, pieces: Sequence[bytes]) -> tuple[Any, ...]:
    """The outcome of a parser with every fast path off (the general path alone)."""
    with pytest.MonkeyPatch.context() as patch:
        parser: StreamParserBase[Any]
        if provider == "openai":
            parser = OpenAIStreamParser(endpoint=ENDPOINT)
            patch.setattr(parser._sse, "plain_data", lambda data: None)
            patch.setattr(parser, "_text_chunk", _validated(True))
            patch.setattr(_openai, "text_chunk_builder", lambda: _validated(True))
            patch.setattr(_openai, "_plain_text", lambda obj: None)
        else:
            parser = OllamaStreamParser(endpoint=ENDPOINT)
            patch.setattr(parser._decoder, "_feed_whole_lines", lambda data: None)
            patch.setattr(parser, "_text_chunk", _validated(False))
            patch.setattr(_ollama, "text_chunk_builder", lambda *, with_id: _validated(with_id))
            patch.setattr(_ollama, "_plain_text", lambda obj: None)
        return _outcome(parser, pieces)


def _compare(provider: str, data: bytes) -> int:
    """Compare the shipped parser with the reference at every split; the fast reads' count."""
    factory = OpenAIStreamParser if provider == "openai" else OllamaStreamParser
    reads = _reads(data, b"\n\n" if provider == "openai" else b"\n")
    runs = 0
    for pieces in _splits(data, reads=reads):
        expected = _reference_outcome(provider, pieces)
        got = _outcome(factory(endpoint=ENDPOINT), pieces)
        assert got == expected, pieces
        runs += 1
    return runs


@pytest.mark.parametrize("name", sorted(OPENAI_STREAMS))
def test_openai_fast_path_equals_general_path_at_every_split(name: str) -> None:
    assert _compare("openai", OPENAI_STREAMS[name]) > len(OPENAI_STREAMS[name])


@pytest.mark.parametrize("name", sorted(OLLAMA_STREAMS))
def test_ollama_fast_path_equals_general_path_at_every_split(name: str) -> None:
    assert _compare("ollama", OLLAMA_STREAMS[name]) > len(OLLAMA_STREAMS[name])


def test_the_reference_really_is_the_general_path() -> None:
    # Validated chunks carry a TextAccessor text; template-built ones the str itself.
    chunks = OpenAIStreamParser().feed(OPENAI_TEXT)
    assert type(chunks[1].text) is str
    with pytest.MonkeyPatch.context() as patch:
        parser = OpenAIStreamParser()
        patch.setattr(parser._sse, "plain_data", lambda data: None)
        patch.setattr(_openai, "text_chunk_builder", lambda: _validated(True))
        ref = parser.feed(OPENAI_TEXT)
    assert type(ref[1].text) is not str
    assert ref == chunks


# --- the fast paths are taken ------------------------------------------------------------


def test_openai_plain_events_skip_event_objects_and_validation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parser = OpenAIStreamParser()

    def general(*args: Any) -> Any:
        raise AssertionError("general path used")

    monkeypatch.setattr(parser, "_event_chunk", general)
    monkeypatch.setattr(parser, "_handle", general)
    monkeypatch.setattr(_openai, "openai_stream_chunk", general)
    chunks: list[ChatGenerationChunk] = []
    for read in _reads(OPENAI_TEXT, b"\n\n")[:6]:
        chunks.extend(parser.feed(read))
    assert [c.text for c in chunks] == [
        "",
        "h\u00e9llo",
        " \u4e16\u754c \U0001f680",
        "",
        "",
        '\\n"quoted"\t',
    ]
    assert all(type(c.text) is str for c in chunks)  # template-built (validation: TextAccessor)
    assert {c.message.id for c in chunks} == {"chatcmpl-7"}


def test_ollama_plain_lines_skip_the_splitter_and_validation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parser = OllamaStreamParser()

    def general(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("general path used")

    monkeypatch.setattr(_decoders._LineSplitter, "feed", general)
    monkeypatch.setattr(_ollama, "ollama_stream_chunk", general)
    chunks: list[ChatGenerationChunk] = []
    for read in _reads(OLLAMA_TEXT, b"\n")[:5]:
        chunks.extend(parser.feed(read))
    assert [c.text for c in chunks] == ["h\u00e9llo", " \u4e16\u754c \U0001f680", "", "", ""]
    assert all(type(c.text) is str for c in chunks)
    assert all(isinstance(c.message, AIMessageChunk) for c in chunks)
    assert all("id" not in c.message.model_fields_set for c in chunks)


def test_ollama_stream_chunk_plain_line_equals_validated() -> None:
    chunk, index = _ollama.ollama_stream_chunk(_line("hi"), tool_index=3)
    ref = validated_text_chunk("hi", {"model_provider": "ollama"}, None, with_id=False)
    assert index == 3
    assert _describe(chunk)[2:] == _describe(ref)[2:]


def test_parsed_chunks_hold_no_parser_objects() -> None:
    # What stays alive per chunk is the chunk itself (9 tracked containers), not events,
    # decoded JSON or lists from the parser.
    parser = OpenAIStreamParser()
    reads = _reads(OPENAI_TEXT, b"\n\n")
    parser.feed(reads[1])
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects(generation=0))
        kept: list[ChatGenerationChunk] = []
        for _ in range(50):
            kept.extend(parser.feed(reads[1]))
        tracked = len(gc.get_objects(generation=0)) - before
    finally:
        gc.enable()
    assert len(kept) == 50
    assert tracked <= 9 * 50 + 5


# --- decoder fast paths ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"a": [1, {"b": null}], "c": "\\u00e9\\n"}',
        "{}",
        '{"x": 1.5e3, "y": -0, "z": true}',
        '{"n": NaN, "i": Infinity}',
    ],
)
def test_json_object_equals_json_loads(text: str) -> None:
    got = json_object(text)
    assert got is not None
    assert json.dumps(got) == json.dumps(json.loads(text))


@pytest.mark.parametrize(
    "text",
    [" {}", "{} ", "{}\n", "[1]", '"s"', "1", "", "[DONE]", "{", '{"a": 1} {"b": 2}', "\ufeff{}"],
)
def test_json_object_leaves_everything_else_to_the_general_path(text: str) -> None:
    assert json_object(text) is None


def test_json_object_does_not_hide_deep_nesting_errors() -> None:
    deep = '{"a": ' * 100_000 + "1" + "}" * 100_000
    with pytest.raises(RecursionError):
        json.loads(deep)
    with pytest.raises(RecursionError):
        json_object(deep)


def test_sse_plain_data_returns_the_data_of_whole_events() -> None:
    decoder = SSEDecoder()
    assert decoder.plain_data(b"data: a\n\ndata:b\n\ndata:  c\n\n") == ["a", "b", " c"]
    assert decoder.plain_data(b"data: \xc3\xa9\n\n") == ["\u00e9"]
    assert decoder.plain_data(b"data:\n\n") == [""]


@pytest.mark.parametrize(
    "read",
    [
        b"\xef\xbb\xbfdata: a\n\n",  # a BOM at the very start
        b"data: a\n",
        b"data: a",
        b"\n\n",
        b"id: 1\n\n",
        b"retry: 5\n\n",
        b"data: a\r\n\r\n",
        b"data: a\rdata: b\n\n",
        b"data: a\r\rdata: b\n\n",
        b"data: a\n\ndata: b\r\n\r\n",
        b"data: a\n\nevent: x\ndata: b\n\n",
        b"data: \xe4\xb8\n\n",
    ],
)
def test_sse_plain_data_declines_and_changes_nothing(read: bytes) -> None:
    decoder = SSEDecoder()
    state = dict(decoder.__dict__)
    assert decoder.plain_data(read) is None
    assert decoder.__dict__ == state
    assert decoder._lines.idle()


def test_sse_plain_data_after_a_partial_bom_read() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"\xef\xbb") == []
    assert decoder.plain_data(b"\xbfdata: a\n\n") is None
    assert [e.data for e in decoder.feed(b"\xbfdata: a\n\n")] == ["a"]
    assert decoder.plain_data(b"data: b\n\n") == ["b"]


def _slow_ndjson() -> NDJSONDecoder:
    decoder = NDJSONDecoder()
    decoder._feed_whole_lines = lambda data: None  # type: ignore[method-assign]
    return decoder


@pytest.mark.parametrize("name", sorted(OLLAMA_STREAMS))
def test_ndjson_fast_path_equals_line_splitter(name: str) -> None:
    data = OLLAMA_STREAMS[name]

    def run(factory: Callable[[], NDJSONDecoder], pieces: Sequence[bytes]) -> Any:
        decoder = factory()
        out: list[Any] = []
        try:
            for piece in pieces:
                out.extend(decoder.feed(piece))
            out.extend(decoder.flush())
        except ProtocolViolationError as exc:
            return out, str(exc)
        return json.dumps(out), None

    for pieces in _splits(data, reads=_reads(data, b"\n")):
        assert run(NDJSONDecoder, pieces) == run(_slow_ndjson, pieces), pieces


def test_ndjson_fast_path_is_taken_for_whole_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    decoder = NDJSONDecoder()

    def general(data: bytes) -> list[bytes]:
        raise AssertionError("line splitter used")

    monkeypatch.setattr(_decoders._LineSplitter, "feed", general)
    assert decoder.feed(b'{"a": 1}\n\n {"b": 2} \n{}\n') == [{"a": 1}, {"b": 2}, {}]


def test_decoder_module_keeps_json_loads_semantics() -> None:
    # The scanner is json's own, with json.loads's default settings.
    assert _decoders._scan_json('{"a": 1}', 0) == ({"a": 1}, 8)


@pytest.mark.parametrize(
    ("parser", "line"),
    [
        (OpenAIStreamParser, b'data: {"choices": [{"delta": "oops"}]}\n\n'),
        (OllamaStreamParser, b'{"message": "oops", "done": false}\n'),
    ],
)
def test_a_non_object_delta_is_a_protocol_error_naming_the_endpoint(
    parser: Callable[..., StreamParserBase[Any]], line: bytes
) -> None:
    with pytest.raises(ProtocolViolationError, match="is not a JSON object") as info:
        parser(endpoint="http://h:1/v1").feed(line)
    assert info.value.endpoint == "http://h:1/v1"
    assert "oops" in str(info.value)  # the message quotes what the server sent
