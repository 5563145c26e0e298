"""Incremental, pure decoders for Server-Sent Events and newline-delimited JSON.

Both decoders take raw bytes exactly as they come off the wire, in chunks of any size,
and return the complete items those bytes finish. They hold the unfinished tail between
calls, so a line (or a UTF-8 character) split across two network reads decodes the same
as one read. Nothing here does I/O: one decoder serves sync and async streams alike.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from langchain_fastpipe.errors import ProtocolViolationError

__all__ = [
    "DEFAULT_MAX_LINE_BYTES",
    "NDJSONDecoder",
    "SSEDecoder",
    "SSEEvent",
    "json_object",
]

#: Longest line either decoder buffers before it gives up (a runaway or hostile server).
DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024

_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"
#: ``_CR in data`` (an int) is a memchr; ``b"\r" in data`` first fails an int conversion.
_CR = ord("\r")
_LF = ord("\n")

#: The C scanner behind ``json.loads`` (the same settings as its default decoder), called
#: directly: ``json.loads`` adds two whitespace regex matches and three Python calls,
#: ~1 us on a 150-byte chunk. (``json.loads`` of bytes is slower still: it detects the
#: encoding in Python first.)
_scan_json: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def json_object(text: str) -> dict[str, Any] | None:
    """``json.loads(text)`` when ``text`` is exactly one JSON object, else None.

    The fast path of the stream parsers: None for anything else (surrounding whitespace,
    another JSON type, invalid JSON), which the caller then parses the general way, so
    errors keep their messages. For a JSON object with nothing around it the result is
    the one ``json.loads`` returns (the same scanner, with the same settings).
    """
    try:
        obj, end = _scan_json(text, 0)
    except (ValueError, StopIteration):
        return None
    return obj if end == len(text) and type(obj) is dict else None


@dataclass(frozen=True)
class SSEEvent:
    r"""One dispatched Server-Sent Event.

    Attributes:
        event: The event type (``"message"`` when the stream did not name one).
        data: The data lines joined with ``"\n"``.
        id: The last event id seen on the stream (``""`` if none).
        retry: The reconnection time in milliseconds, when this event set one.
    """

    event: str = "message"
    data: str = ""
    id: str = ""
    retry: int | None = None

    def json(self) -> Any:
        """Parse ``data`` as JSON.

        Raises:
            ProtocolViolationError: The data is not valid JSON.
        """
        try:
            return json.loads(self.data)
        except ValueError as exc:
            msg = f"SSE event data is not valid JSON: {self.data[:200]!r}"
            raise ProtocolViolationError(msg) from exc


def _decode_line(line: bytes, kind: str) -> str:
    """Decode one complete line as UTF-8, mapping bad bytes to a protocol error."""
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        msg = f"{kind} line is not valid UTF-8: {line[:200]!r}"
        raise ProtocolViolationError(msg) from exc


class _LineSplitter:
    r"""Split a byte stream into lines at ``\r\n``, ``\n`` or ``\r``.

    A ``\r`` that ends one chunk while the next begins with ``\n`` counts as one line
    end. Lines are split as bytes, so a multi-byte UTF-8 character (whose bytes are never
    CR or LF) split across chunks stays whole.
    """

    __slots__ = ("_buf", "_kind", "_max_line", "_scan_from", "_skip_lf")

    def __init__(self, *, kind: str, max_line_bytes: int) -> None:
        self._buf = bytearray()
        self._skip_lf = False
        self._scan_from = 0
        self._max_line = max_line_bytes
        self._kind = kind

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes and return the lines they complete (without line ends)."""
        if not data:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if data[:1] == b"\n":
                data = data[1:]
        self._buf += data
        lines: list[bytes] = []
        start = 0
        buf = self._buf
        pos = self._scan_from
        while True:
            match = _LINE_END.search(buf, pos)
            if match is None:
                break
            lines.append(bytes(buf[start : match.start()]))
            start = pos = match.end()
            if match.group() == b"\r" and start == len(buf):
                # A lone CR at the end: a following LF belongs to this line end.
                self._skip_lf = True
        if start:
            del buf[:start]
        self._scan_from = len(buf)
        if len(buf) > self._max_line:
            msg = f"{self._kind} line longer than {self._max_line} bytes"
            raise ProtocolViolationError(msg)
        return lines

    def idle(self) -> bool:
        """Whether no partial line is buffered (the next byte starts a new line)."""
        return not self._buf and not self._skip_lf

    def flush(self) -> bytes | None:
        """Return the unterminated last line, if any, and reset."""
        rest = bytes(self._buf) if self._buf else None
        self._buf.clear()
        self._scan_from = 0
        self._skip_lf = False
        return rest


class SSEDecoder:
    r"""Decode a ``text/event-stream`` body incrementally (WHATWG HTML, section 9.2.6).

    Handles every line ending (``\r\n``, ``\n``, ``\r``), comments (``:`` lines),
    multi-line ``data``, a leading byte-order mark and chunks that split lines or UTF-8
    characters anywhere.

    Example:
        >>> decoder = SSEDecoder()
        >>> decoder.feed(b"data: hel")
        []
        >>> decoder.feed(b"lo\n\n")
        [SSEEvent(event='message', data='hello', id='', retry=None)]
    """

    def __init__(self, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        """Create a decoder.

        Args:
            max_line_bytes: Longest line buffered before raising ProtocolViolationError.
        """
        self._lines = _LineSplitter(kind="SSE", max_line_bytes=max_line_bytes)
        self._started = False
        self._bom_buf = b""
        self._event = ""
        self._data: list[str] = []
        self._last_id = ""
        self._retry: int | None = None
        self._dirty = False

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Decode the next bytes of the stream.

        Args:
            data: Any number of bytes (possibly none, possibly a partial line).

        Returns:
            The events completed by these bytes, in order.

        Raises:
            ProtocolViolationError: A line is not UTF-8 or exceeds the line limit.
        """
        texts = self.plain_data(data)
        if texts is not None:
            last_id = self._last_id
            return [SSEEvent("message", text, last_id, None) for text in texts]
        return self.feed_general(data)

    def feed_general(self, data: bytes) -> list[SSEEvent]:
        """:meth:`feed` without the fast path: for a read :meth:`plain_data` declined."""
        if not self._started:
            data = self._strip_bom(data)
            if not self._started:
                return []
        return self._feed_lines(data)

    def flush(self) -> list[SSEEvent]:
        r"""Finish the stream: decode a last unterminated line and any pending event.

        A body that ends without the final blank line still yields its last event:
        servers often close right after ``data: [DONE]\n``.

        Returns:
            The events still pending, in order.
        """
        events: list[SSEEvent] = []
        if not self._started:
            # Fewer bytes than a BOM arrived in all: they are plain content.
            self._started = True
            rest, self._bom_buf = self._bom_buf, b""
            events.extend(self._feed_lines(rest))
        tail = self._lines.flush()
        if tail is not None:
            event = self._process_line(_decode_line(tail, "SSE"))
            if event is not None:
                events.append(event)
        event = self._dispatch()
        if event is not None:
            events.append(event)
        return events

    def plain_data(self, data: bytes) -> list[str] | None:
        r"""Fast path: the data of ``data`` when it is whole plain ``data:`` events.

        The common shape of LLM streams: a read holds one or more complete single-line
        ``data: ...\n\n`` events and nothing else, and starts where the last one ended.
        Those are decoded like :meth:`feed` would (their events have type ``"message"``,
        the stream's last id and no retry) and their data returned, with no event
        object and no per-line work. Returns None, having changed nothing, for anything
        else: a pending partial line or event, comments, other fields, multi-line data,
        ``\r``, a possible byte-order mark, bad UTF-8; :meth:`feed` then takes the
        general line-by-line path (and raises its errors).

        Args:
            data: The next bytes of the stream.

        Returns:
            The data of each event, in order, or None.
        """
        lines = self._lines
        if self._dirty or lines._buf or lines._skip_lf or not data.endswith(b"\n\n"):
            return None  # a pending event or partial line (or not whole events)
        if not self._started and (self._bom_buf or data[:1] == _BOM[:1]):
            return None
        if _CR in data:
            return None
        end = len(data) - 2
        try:
            if data.find(b"\n") == end:  # one event: the usual read
                if not data.startswith(b"data:"):
                    return None
                texts = [data[6 if data[5] == 0x20 else 5 : end].decode()]
            else:
                texts = []
                for block in data[:end].split(b"\n\n"):
                    if not block.startswith(b"data:") or _LF in block:
                        return None
                    texts.append(block[6 if block[5:6] == b" " else 5 :].decode())
        except UnicodeDecodeError:
            return None
        self._started = True
        return texts

    def _feed_lines(self, data: bytes) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        for line in self._lines.feed(data):
            event = self._process_line(_decode_line(line, "SSE"))
            if event is not None:
                events.append(event)
        return events

    def _strip_bom(self, data: bytes) -> bytes:
        """Drop a UTF-8 BOM at the very start, even when it arrives split."""
        buf = self._bom_buf + data
        if len(buf) < len(_BOM) and _BOM.startswith(buf):
            self._bom_buf = buf
            return b""
        self._bom_buf = b""
        self._started = True
        return buf[len(_BOM) :] if buf.startswith(_BOM) else buf

    def _process_line(self, line: str) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
            self._dirty = True
        elif field == "event":
            self._event = value
            self._dirty = True
        elif field == "id":
            if "\0" not in value:
                self._last_id = value
                self._dirty = True
        elif field == "retry" and value.isdigit():
            self._retry = int(value)
            self._dirty = True
        return None

    def _dispatch(self) -> SSEEvent | None:
        if not self._dirty:
            return None
        event = SSEEvent(
            event=self._event or "message",
            data="\n".join(self._data),
            id=self._last_id,
            retry=self._retry,
        )
        self._event = ""
        self._data = []
        self._retry = None
        self._dirty = False
        return event


class NDJSONDecoder:
    r"""Decode newline-delimited JSON objects (Ollama's streaming format) incrementally.

    Blank lines are skipped; ``\r\n`` is accepted. Each non-blank line must be a JSON
    object.

    Example:
        >>> decoder = NDJSONDecoder()
        >>> decoder.feed(b'{"a": 1}\n{"b"')
        [{'a': 1}]
        >>> decoder.feed(b": 2}\n")
        [{'b': 2}]
    """

    def __init__(self, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        """Create a decoder.

        Args:
            max_line_bytes: Longest line buffered before raising ProtocolViolationError.
        """
        self._lines = _LineSplitter(kind="NDJSON", max_line_bytes=max_line_bytes)

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Decode the next bytes of the stream.

        Args:
            data: Any number of bytes.

        Returns:
            The JSON objects completed by these bytes, in order.

        Raises:
            ProtocolViolationError: A line is not UTF-8, not JSON, or not an object.
        """
        whole = self._feed_whole_lines(data)
        if whole is not None:
            return whole
        objs = (_parse_ndjson(line) for line in self._lines.feed(data))
        return [obj for obj in objs if obj is not None]

    def _feed_whole_lines(self, data: bytes) -> list[dict[str, Any]] | None:
        r"""Fast path: ``data`` is whole ``\n``-ended lines and starts a new line.

        The usual read. The lines are split at once, each parsed by
        :func:`json_object` when it is a bare JSON object, else the general way
        (blanks, whitespace, errors). Returns None, having changed nothing, for anything
        else (a pending partial line, ``\r``, bad UTF-8), which then takes the
        line splitter.
        """
        lines = self._lines
        if lines._buf or lines._skip_lf or not data.endswith(b"\n") or _CR in data:
            return None
        try:
            text = data.decode()
        except UnicodeDecodeError:
            return None  # the general path names the line
        objs: list[dict[str, Any]] = []
        for line in text.split("\n"):
            if line:
                obj = json_object(line)
                if obj is None:
                    obj = _parse_ndjson_text(line)
                    if obj is None:
                        continue
                objs.append(obj)
        return objs

    def flush(self) -> list[dict[str, Any]]:
        """Finish the stream and decode a last line that had no newline.

        Raises:
            ProtocolViolationError: The last line is not a JSON object.
        """
        tail = self._lines.flush()
        if tail is None:
            return []
        obj = _parse_ndjson(tail)
        return [obj] if obj is not None else []


def _parse_ndjson(line: bytes) -> dict[str, Any] | None:
    """Parse one NDJSON line; ``None`` for a blank line."""
    return _parse_ndjson_text(_decode_line(line, "NDJSON"))


def _parse_ndjson_text(line: str) -> dict[str, Any] | None:
    """Parse one decoded NDJSON line; ``None`` for a blank line."""
    text = line.strip()
    if not text:
        return None
    try:
        obj = json.loads(text)
    except ValueError as exc:
        msg = f"NDJSON line is not valid JSON: {text[:200]!r}"
        raise ProtocolViolationError(msg) from exc
    if not isinstance(obj, dict):
        msg = f"NDJSON line is not a JSON object: {text[:200]!r}"
        raise ProtocolViolationError(msg)
    return obj
