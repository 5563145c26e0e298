"""The one pure core of ChatFastpipe's sync and async streams: bytes in, chunks out."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from langchain_core.outputs import ChatGenerationChunk

    from langchain_fastpipe.providers._base import StreamParser
    from langchain_fastpipe.transport import ResponseInfo

__all__ = ["ChunkParser"]


class ChunkParser:
    """The one pure core of sync and async streams: bytes in, finished chunks out.

    Wraps the provider's stream parser and adds, on the first chunk, the HTTP version
    and ``time_to_first_chunk_ms`` (measured with the injected ``clock`` from creation,
    which is just before the request is sent).
    """

    def __init__(
        self,
        parser: StreamParser,
        *,
        info: ResponseInfo,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """Wrap ``parser`` for one reply whose response details land in ``info``."""
        self._parser = parser
        self._info = info
        self._clock = clock
        self._started = clock()
        self.chunks = 0
        self.time_to_first_chunk: float | None = None

    def feed(self, data: bytes) -> list[ChatGenerationChunk]:
        """Decode bytes into chunks (annotating the first one)."""
        return self._annotate(self._parser.feed(data))

    def finish(self) -> list[ChatGenerationChunk]:
        """End of body; raises ProtocolViolationError when the reply was truncated."""
        return self._annotate(self._parser.finish())

    def _annotate(self, chunks: list[ChatGenerationChunk]) -> list[ChatGenerationChunk]:
        if chunks and self.chunks == 0:
            self.time_to_first_chunk = self._clock() - self._started
            meta = chunks[0].message.response_metadata
            meta["time_to_first_chunk_ms"] = round(self.time_to_first_chunk * 1000.0, 3)
            if self._info.http_version:
                meta["http_version"] = self._info.http_version
        self.chunks += len(chunks)
        return chunks
