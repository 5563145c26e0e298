"""The ``"h2"`` engine's replies: :class:`H2Reply` and its :class:`ReplyHeaders`.

What the pool reads of a reply (the ``Reply`` protocol of :mod:`._attempt`), over a
:class:`~._h2native.Stream` whose response headers arrived.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from langchain_fastpipe.transport._h2native import Stream

__all__ = ["H2Reply", "ReplyHeaders"]


def _decode(value: bytes) -> str:
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        return value.decode("utf-8", "replace")


class ReplyHeaders(Mapping[str, str]):
    """Response headers: a case-insensitive read-only mapping (repeats joined by ", ")."""

    __slots__ = ("_items", "raw")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        """Headers of ``raw`` (lower-case names, pseudo-headers already removed)."""
        self.raw = raw
        items: dict[str, str] = {}
        for name, value in raw:
            key = _decode(name)
            text = _decode(value)
            previous = items.get(key)
            items[key] = text if previous is None else f"{previous}, {text}"
        self._items = items

    def __getitem__(self, key: str) -> str:
        return self._items[key.lower()]

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` (any case), or ``default``."""
        return self._items.get(key.lower(), default)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"ReplyHeaders({self._items!r})"


class H2Reply:
    """An HTTP/2 response of the engine, with the members of ``httpx.Response`` the pool reads."""

    __slots__ = ("__weakref__", "_stream", "_timeout", "headers", "status_code")

    http_version = "HTTP/2"
    is_stream_consumed = False  # the body is only ever read through the iterators below

    def __init__(self, stream: Stream, status: int, timeout: float | None) -> None:
        """The reply of ``stream``, whose headers arrived; ``timeout``: per body read."""
        self._stream = stream
        self._timeout = timeout
        self.status_code = status
        self.headers = ReplyHeaders(stream.headers)

    def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body as sent, chunk by chunk (at most one pass)."""
        return self._stream.body(self._timeout)

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body, content encoding removed (httpx's decoders)."""
        encoding = self.headers.get("content-encoding")
        if encoding is None or encoding.strip().lower() in ("", "identity"):
            async for chunk in self.aiter_raw():
                yield chunk
            return
        decoder = _decoder(encoding)
        try:
            async for chunk in self.aiter_raw():
                decoded = decoder.decode(chunk)
                if decoded:
                    yield decoded
            tail = decoder.flush()
        except httpx.DecodingError:
            self._stream.close()
            raise
        if tail:
            yield tail

    async def aclose(self) -> None:
        """Release the stream (reset when its body was not read to its end)."""
        self._stream.close()


def _decoder(encoding: str) -> Any:
    """The httpx decoder of a ``content-encoding`` value (several: applied in reverse)."""
    from httpx._decoders import SUPPORTED_DECODERS, IdentityDecoder, MultiDecoder

    names = [part.strip().lower() for part in encoding.split(",") if part.strip()]
    decoders = [SUPPORTED_DECODERS.get(name, IdentityDecoder)() for name in names]
    return decoders[0] if len(decoders) == 1 else MultiDecoder(children=decoders)
