"""The SSE and NDJSON decoders give the same items however the bytes are split."""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from langchain_fastpipe.errors import ProtocolViolationError
from langchain_fastpipe.providers._decoders import NDJSONDecoder, SSEDecoder, SSEEvent

OPENAI_STREAM = (
    b": keep-alive comment\n"
    b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n'
    b'data: {"choices":[{"delta":{"content":"h\xc3\xa9llo \xe4\xb8\x96\xe7\x95\x8c"}}]}\n\n'
    b'data: {"choices":[{"delta":{"content":" \xf0\x9f\x9a\x80"}}]}\n\n'
    b"data: [DONE]\n\n"
)

MIXED_STREAM = (
    b"\xef\xbb\xbf"  # BOM
    b"event: first\r\nid: 7\r\ndata: line one\r\ndata: line two\r\n\r\n"
    b":comment\r"
    b"data:no-space\rretry: 1500\r\r"
    b"data\n\n"  # a field with no colon: empty data
    b"event: caf\xc3\xa9\nretry: x1\ndata:  two spaces\n\n"
    b"id: bad\x00id\ndata: after\n\n"
    b"data: unterminated"  # no final blank line: flush() dispatches it
)

MIXED_EXPECTED = [
    SSEEvent(event="first", data="line one\nline two", id="7"),
    SSEEvent(data="no-space", id="7", retry=1500),
    SSEEvent(data="", id="7"),
    SSEEvent(event="caf\u00e9", data=" two spaces", id="7"),
    SSEEvent(data="after", id="7"),
    SSEEvent(data="unterminated", id="7"),
]

NDJSON_STREAM = (
    b'{"message":{"content":"h\xc3\xa9"},"done":false}\n'
    b"\n"
    b'{"message":{"content":"\xf0\x9f\x9a\x80"},"done":false}\r\n'
    b'{"done":true,"eval_count":3}'
)

NDJSON_EXPECTED = [
    {"message": {"content": "h\u00e9"}, "done": False},
    {"message": {"content": "\U0001f680"}, "done": False},
    {"done": True, "eval_count": 3},
]


def _run(factory: Callable[[], Any], pieces: Sequence[bytes]) -> list[Any]:
    decoder = factory()
    out: list[Any] = []
    for piece in pieces:
        out.extend(decoder.feed(piece))
    out.extend(decoder.flush())
    return out


def _all_splits(data: bytes) -> list[list[bytes]]:
    splits = [[data[:i], data[i:]] for i in range(len(data) + 1)]
    splits.append([data[i : i + 1] for i in range(len(data))])
    rng = random.Random(1234)
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, len(data)), 5))
        bounds = [0, *cuts, len(data)]
        splits.append([data[a:b] for a, b in itertools.pairwise(bounds)])
    return splits


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (
            OPENAI_STREAM,
            [
                '{"choices":[{"delta":{"role":"assistant","content":""}}]}',
                '{"choices":[{"delta":{"content":"h\u00e9llo \u4e16\u754c"}}]}',
                '{"choices":[{"delta":{"content":" \U0001f680"}}]}',
                "[DONE]",
            ],
        ),
    ],
)
def test_sse_every_split_gives_same_data(stream: bytes, expected: list[str]) -> None:
    for pieces in _all_splits(stream):
        events = _run(SSEDecoder, pieces)
        assert [e.data for e in events] == expected, pieces


def test_sse_mixed_line_endings_every_split() -> None:
    whole = _run(SSEDecoder, [MIXED_STREAM])
    assert whole == MIXED_EXPECTED
    for pieces in _all_splits(MIXED_STREAM):
        assert _run(SSEDecoder, pieces) == MIXED_EXPECTED, pieces


def test_sse_crlf_split_between_cr_and_lf_is_one_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    # The LF completing "\r\n" must not be read as a second (blank) line.
    assert decoder.feed(b"\ndata: b\r\n\r\n") == [SSEEvent(data="a\nb")]


def test_sse_events_arrive_as_soon_as_complete() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: 1\n") == []
    assert decoder.feed(b"\n") == [SSEEvent(data="1")]
    assert decoder.flush() == []


def test_sse_comment_only_stream_has_no_events() -> None:
    assert _run(SSEDecoder, [b": ping\n\n: ping\n\n"]) == []


def test_sse_json_helper() -> None:
    assert SSEEvent(data='{"a": [1]}').json() == {"a": [1]}
    with pytest.raises(ProtocolViolationError, match="not valid JSON"):
        SSEEvent(data="{oops").json()


def test_sse_invalid_utf8_is_protocol_error() -> None:
    decoder = SSEDecoder()
    with pytest.raises(ProtocolViolationError, match="UTF-8"):
        decoder.feed(b"data: \xff\xfe\n\n")


def test_sse_line_limit() -> None:
    decoder = SSEDecoder(max_line_bytes=16)
    decoder.feed(b"data: 0123456789")
    with pytest.raises(ProtocolViolationError, match="longer than 16 bytes"):
        decoder.feed(b"abcdef")


def test_sse_short_stream_shorter_than_bom() -> None:
    assert _run(SSEDecoder, [b"\n"]) == []
    assert _run(SSEDecoder, [b"a"]) == []  # a field "a" with no meaning


def test_ndjson_every_split() -> None:
    for pieces in _all_splits(NDJSON_STREAM):
        assert _run(NDJSONDecoder, pieces) == NDJSON_EXPECTED, pieces


def test_ndjson_malformed_line() -> None:
    decoder = NDJSONDecoder()
    assert decoder.feed(b'{"ok": 1}\n') == [{"ok": 1}]
    with pytest.raises(ProtocolViolationError, match="not valid JSON"):
        decoder.feed(b'{"broken": \n')


def test_ndjson_non_object_line() -> None:
    with pytest.raises(ProtocolViolationError, match="not a JSON object"):
        NDJSONDecoder().feed(b"[1, 2]\n")


def test_ndjson_truncated_tail_is_error_on_flush() -> None:
    decoder = NDJSONDecoder()
    assert decoder.feed(b'{"a": 1}\n{"b": ') == [{"a": 1}]
    with pytest.raises(ProtocolViolationError):
        decoder.flush()


def test_ndjson_empty_object_is_kept() -> None:
    assert _run(NDJSONDecoder, [b"{}\n"]) == [{}]


# --- the whole-events fast path -------------------------------------------------------------

FAST_STREAM = (
    b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
    b"data:no-space\n\n"
    b"id: 42\ndata: sets the id\n\n"  # general path: id persists into later fast events
    b"data: caf\xc3\xa9\n\ndata: two in one read\n\n"
    b"data: \n\n"
    b": comment\n\ndata: after a comment\n\n"
    b"data: multi\ndata: line\n\n"
    b"data: crlf\r\n\r\n"
    b"data: [DONE]\n\n"
)


def _event_reads(stream: bytes) -> list[bytes]:
    """``stream`` cut after every blank line: the reads the fast path sees."""
    parts = stream.split(b"\n\n")
    return [part + b"\n\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _slow_decoder() -> SSEDecoder:
    """A decoder whose fast path never applies (the reference behaviour)."""
    decoder = SSEDecoder()
    decoder.plain_data = lambda data: None  # type: ignore[method-assign]
    return decoder


def test_sse_fast_path_matches_general_path() -> None:
    reads = _event_reads(FAST_STREAM)
    expected = _run(_slow_decoder, [FAST_STREAM])
    assert _run(SSEDecoder, reads) == expected
    assert _run(SSEDecoder, [FAST_STREAM]) == expected
    for pieces in _all_splits(FAST_STREAM):
        assert _run(SSEDecoder, pieces) == expected
    assert SSEEvent(data="sets the id", id="42") in expected
    assert SSEEvent(data="two in one read", id="42") in expected
    assert SSEEvent(data="no-space") in expected


def test_sse_fast_path_is_taken_for_whole_data_events(monkeypatch: pytest.MonkeyPatch) -> None:
    decoder = SSEDecoder()

    def general(data: bytes) -> list[SSEEvent]:
        raise AssertionError("general path used")

    monkeypatch.setattr(decoder, "_feed_lines", general)
    assert decoder.feed(b"data: a\n\ndata:b\n\n") == [SSEEvent(data="a"), SSEEvent(data="b")]


@pytest.mark.parametrize(
    "read",
    [
        b": comment\n\n",
        b"event: x\ndata: a\n\n",
        b"data: a\r\n\r\n",
        b"data: a\ndata: b\n\n",
        b"data: \xff\n\n",
        b"data: a\n\n\n\n",
    ],
)
def test_sse_fast_path_declines_other_shapes(read: bytes) -> None:
    assert SSEDecoder().plain_data(read) is None


def test_sse_fast_path_waits_for_a_pending_partial_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: hel") == []
    assert decoder.feed(b"lo\n\n") == [SSEEvent(data="hello")]
    assert decoder.feed(b"event: e\n") == []  # a pending event field: the general path
    assert decoder.feed(b"data: x\n\n") == [SSEEvent(event="e", data="x")]


def test_sse_bad_utf8_still_raises_on_fast_shaped_read() -> None:
    with pytest.raises(ProtocolViolationError, match="UTF-8"):
        SSEDecoder().feed(b"data: \xff\n\n")


# ---------------------------------------------------------------- parsers name the endpoint

ENDPOINT = "http://127.0.0.1:9/v1"


@pytest.mark.parametrize(
    ("provider", "body", "message"),
    [
        ("openai", b"data: {not json\n\n", "not valid JSON"),
        ("openai", b"data: \xff\xfe\n\n", "not valid UTF-8"),
        ("openai", b"data: [1, 2]\n\n", "not a JSON object"),
        ("ollama", b"{not json\n", "not valid JSON"),
        ("ollama", b"[1]\n", "not a JSON object"),
        ("ollama", b"\xff\n", "not valid UTF-8"),
    ],
)
def test_stream_parsers_put_the_endpoint_on_decoder_errors(
    provider: str, body: bytes, message: str
) -> None:
    from langchain_fastpipe.providers import get_provider

    parser = get_provider(provider).stream_parser(endpoint=ENDPOINT)
    with pytest.raises(ProtocolViolationError, match=message) as info:
        parser.feed(body)
    assert info.value.endpoint == ENDPOINT
    assert ENDPOINT in str(info.value)


@pytest.mark.parametrize("provider", ["openai", "ollama"])
def test_unterminated_last_line_error_names_the_endpoint(provider: str) -> None:
    from langchain_fastpipe.providers import get_provider

    parser = get_provider(provider).stream_parser(endpoint=ENDPOINT)
    parser.feed(b"data: {oops" if provider == "openai" else b"{oops")
    with pytest.raises(ProtocolViolationError) as info:
        parser.finish()
    assert info.value.endpoint == ENDPOINT


@pytest.mark.parametrize(
    ("provider", "marker"), [("openai", "[DONE] or a finish_reason"), ("ollama", "its done line")]
)
def test_shared_parser_base_reports_truncation(provider: str, marker: str) -> None:
    from langchain_fastpipe.providers import get_provider
    from langchain_fastpipe.providers._base import StreamParserBase

    parser = get_provider(provider).stream_parser(endpoint=ENDPOINT)
    assert isinstance(parser, StreamParserBase)
    assert not parser.done
    with pytest.raises(ProtocolViolationError, match=re.escape(f"ended before {marker}")) as info:
        parser.finish()
    assert info.value.endpoint == ENDPOINT


def test_parsers_without_an_endpoint_keep_the_decoder_error() -> None:
    from langchain_fastpipe.providers import get_provider

    with pytest.raises(ProtocolViolationError, match="not valid JSON") as info:
        get_provider("ollama").stream_parser().feed(b"{x\n")
    assert info.value.endpoint == ""
    assert info.value.__cause__ is not info.value
