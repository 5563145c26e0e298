"""Time to first token of every chat model inside any chain: :class:`TimeToFirstTokenHandler`."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk, GenerationChunk, LLMResult

from langchain_fastpipe.streaming._chunk import UNKNOWN_MODEL, content_text
from langchain_fastpipe.streaming._stats import Clock, StreamStatsCollector, default_collector

__all__ = ["TimeToFirstTokenHandler", "TokenTiming"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenTiming:
    """Time to first token of one chat model (or LLM) run.

    Attributes:
        run_id: The LangChain run id of the model call.
        parent_run_id: The enclosing run (the chain), if any.
        model: The model name (``ls_model_name``, invocation params, or the class name).
        time_to_first_token: Seconds from the model start to its first non-empty token, or
            None when the run did not stream (``invoke`` without streaming).
        total_time: Seconds from the model start to its end (or error).
        tokens: How many ``on_llm_new_token`` calls the run made.
        error: True when the run ended with an error.
    """

    run_id: UUID
    parent_run_id: UUID | None
    model: str
    time_to_first_token: float | None
    total_time: float
    tokens: int
    error: bool = False


@dataclass(slots=True)
class _RunState:
    model: str
    parent_run_id: UUID | None
    started: float
    first_token_at: float | None = None
    tokens: int = 0


def _model_from_run(
    serialized: Mapping[str, Any] | None,
    metadata: Mapping[str, Any] | None,
    invocation_params: Mapping[str, Any] | None,
) -> str:
    """The model name of a run from its callback arguments (pure)."""
    if metadata:
        value = metadata.get("ls_model_name")
        if isinstance(value, str) and value:
            return value
    for source in (invocation_params, (serialized or {}).get("kwargs")):
        if isinstance(source, Mapping):
            for key in ("model_name", "model"):
                value = source.get(key)
                if isinstance(value, str) and value:
                    return value
    if serialized:
        name = serialized.get("name")
        if isinstance(name, str) and name:
            return name
        ident = serialized.get("id")
        if isinstance(ident, list) and ident and isinstance(ident[-1], str):
            return ident[-1]
    if invocation_params:
        kind = invocation_params.get("_type")
        if isinstance(kind, str) and kind:
            return kind
    return UNKNOWN_MODEL


def _is_token(token: str | list[str | dict[str, Any]], chunk: Any) -> bool:
    """True for a token that the user sees: non-empty text or a tool-call fragment."""
    if isinstance(token, str) and token:
        return True
    if isinstance(token, list) and content_text(token):
        return True
    message = getattr(chunk, "message", None)
    return bool(getattr(message, "tool_call_chunks", None))


class TimeToFirstTokenHandler(BaseCallbackHandler):
    """Records the time to first token of every chat model or LLM run it sees.

    Attach it through ``config={"callbacks": [handler]}`` to any runnable; it follows every
    model inside chains, and works under ``stream``/``astream``/``astream_events`` (token
    callbacks only fire when the model streams). It runs inline on the event loop
    (``run_inline``) so its timestamps are not delayed by a thread pool, and keys runs by
    ``run_id`` so concurrent runs do not mix.

    Attributes:
        timings: The most recent :class:`TokenTiming` records (bounded).
    """

    run_inline = True

    def __init__(
        self,
        *,
        clock: Clock = time.monotonic,
        collector: StreamStatsCollector | None = default_collector,
        max_records: int = 1000,
    ) -> None:
        """Create a handler.

        Args:
            clock: Monotonic clock.
            collector: Where each time to first token is aggregated per model; None for none.
            max_records: How many recent :class:`TokenTiming` records to keep.
        """
        super().__init__()
        self._clock = clock
        self._collector = collector
        self._lock = threading.Lock()
        self._runs: dict[UUID, _RunState] = {}
        self.timings: deque[TokenTiming] = deque(maxlen=max_records)

    def _start(
        self,
        serialized: dict[str, Any] | None,
        run_id: UUID,
        parent_run_id: UUID | None,
        metadata: dict[str, Any] | None,
        kwargs: dict[str, Any],
    ) -> None:
        model = _model_from_run(serialized, metadata, kwargs.get("invocation_params"))
        state = _RunState(model=model, parent_run_id=parent_run_id, started=self._clock())
        with self._lock:
            self._runs[run_id] = state

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Start timing a chat model run."""
        self._start(serialized, run_id, parent_run_id, metadata, kwargs)

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Start timing a (completion) LLM run."""
        self._start(serialized, run_id, parent_run_id, metadata, kwargs)

    def on_llm_new_token(
        self,
        token: str | list[str | dict[str, Any]],
        *,
        chunk: GenerationChunk | ChatGenerationChunk | None = None,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """Note the first visible token of the run."""
        now = self._clock()
        with self._lock:
            state = self._runs.get(run_id)
            if state is None:
                return
            state.tokens += 1
            if state.first_token_at is None and _is_token(token, chunk):
                state.first_token_at = now

    def _end(self, run_id: UUID, *, error: bool) -> None:
        now = self._clock()
        with self._lock:
            state = self._runs.pop(run_id, None)
        if state is None:
            return
        ttft = None if state.first_token_at is None else state.first_token_at - state.started
        self.timings.append(
            TokenTiming(
                run_id=run_id,
                parent_run_id=state.parent_run_id,
                model=state.model,
                time_to_first_token=ttft,
                total_time=now - state.started,
                tokens=state.tokens,
                error=error,
            )
        )
        if ttft is not None and self._collector is not None:
            self._collector.record_ttft(state.model, ttft)

    def on_llm_end(
        self,
        response: LLMResult,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """Finish timing the run and record its time to first token."""
        self._end(run_id, error=False)

    def on_llm_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """Finish timing a failed run (its first token, if any, is still recorded)."""
        self._end(run_id, error=True)

    def get(self, run_id: UUID) -> TokenTiming | None:
        """The timing of a finished run, if still among the kept records."""
        for timing in reversed(self.timings):
            if timing.run_id == run_id:
                return timing
        return None

    @property
    def in_progress(self) -> int:
        """How many model runs have started and not ended."""
        with self._lock:
            return len(self._runs)
