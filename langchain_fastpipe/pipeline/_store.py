"""What the pipeline learned about each strategy, behind a small store protocol.

A :class:`StrategyStats` record holds lifetime counters plus a bounded window of the
most recent attempts (outcome, latency, time to first chunk). Three stores keep them:

* :class:`MemoryStore`: one process, the default.
* :class:`SQLiteStore`: a file that survives restarts (stdlib ``sqlite3``).
* :class:`RedisStore`: several processes or replicas sharing what they learned
  (counters by atomic ``HINCRBY``, the window as a trimmed list, both in one
  ``MULTI`` transaction).

:func:`apply_outcome` is the one pure rule every store follows.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from langchain_fastpipe.errors import ConfigError
from langchain_fastpipe.stats import quantile

__all__ = [
    "DEFAULT_SQLITE_PATH",
    "DEFAULT_WINDOW",
    "MemoryStore",
    "Outcome",
    "RedisStore",
    "SQLiteStore",
    "StatsStore",
    "StrategyStats",
    "apply_outcome",
    "make_store",
]

#: The SQLite file used when ``pipeline.store = "sqlite"`` names no ``store_url``.
DEFAULT_SQLITE_PATH = "fastpipe-strategies.sqlite3"

#: How many recent attempts a store keeps per strategy.
DEFAULT_WINDOW = 100


@dataclass(frozen=True)
class Outcome:
    """The result of one attempt of one strategy.

    Attributes:
        success: True when the attempt produced a valid answer.
        latency: Seconds from the start of the attempt to its end (success or failure).
        ttfc: Seconds to the first chunk, when a chunk arrived.
        reason: ``"ok"``, ``"error"``, ``"invalid"``, ``"first_chunk_timeout"``,
            ``"timeout"`` or ``"cancelled"``. A cancelled attempt (a hedge's loser) is
            neither a success nor a failure: only its ``ttfc`` (the time it had waited
            without a first chunk, a lower bound) is kept, so the learned quantiles stay
            honest about slow first chunks.
    """

    success: bool
    latency: float
    ttfc: float | None = None
    reason: str = "ok"

    @property
    def cancelled(self) -> bool:
        """True for a hedge's loser (not counted as success or failure)."""
        return self.reason == "cancelled"


@dataclass(frozen=True)
class StrategyStats:
    """Lifetime counters and the recent window of one strategy.

    Attributes:
        name: The strategy name.
        successes: Successful attempts, ever.
        failures: Failed attempts, ever.
        recent: Outcomes of the most recent attempts, oldest first.
        latencies: Latencies (seconds) of the same attempts, oldest first.
        ttfcs: Times to first chunk (seconds) of recent attempts that had one.
    """

    name: str
    successes: int = 0
    failures: int = 0
    recent: tuple[bool, ...] = ()
    latencies: tuple[float, ...] = ()
    ttfcs: tuple[float, ...] = field(default=())

    @property
    def attempts(self) -> int:
        """Attempts ever made."""
        return self.successes + self.failures

    @property
    def success_rate(self) -> float | None:
        """Success rate over the recent window, or None without data."""
        if not self.recent:
            return None
        return sum(self.recent) / len(self.recent)

    @property
    def latency_mean(self) -> float | None:
        """Mean latency of the recent attempts, or None without data."""
        if not self.latencies:
            return None
        return sum(self.latencies) / len(self.latencies)

    def ttfc_quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1) of recent times to first chunk, or None without data."""
        return quantile(self.ttfcs, q)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-serializable summary."""
        return {
            "successes": self.successes,
            "failures": self.failures,
            "window": len(self.recent),
            "success_rate": self.success_rate,
            "latency_mean": self.latency_mean,
            "ttfc_p50": self.ttfc_quantile(0.5),
            "ttfc_p95": self.ttfc_quantile(0.95),
        }


def apply_outcome(stats: StrategyStats, outcome: Outcome, window: int) -> StrategyStats:
    """Return ``stats`` updated with one more attempt, keeping the last ``window`` attempts.

    Args:
        stats: The record before the attempt.
        outcome: The attempt's result.
        window: How many recent attempts to keep.

    Returns:
        A new record.
    """
    ttfcs = stats.ttfcs + ((outcome.ttfc,) if outcome.ttfc is not None else ())
    if outcome.cancelled:
        return replace(stats, ttfcs=ttfcs[-window:])
    return StrategyStats(
        name=stats.name,
        successes=stats.successes + int(outcome.success),
        failures=stats.failures + int(not outcome.success),
        recent=(*stats.recent, outcome.success)[-window:],
        latencies=(*stats.latencies, outcome.latency)[-window:],
        ttfcs=ttfcs[-window:],
    )


def _check_window(window: int) -> int:
    if window < 1:
        msg = f"window must be >= 1, got {window}"
        raise ConfigError(msg)
    return window


@runtime_checkable
class StatsStore(Protocol):
    """Where strategy statistics live. Sync and async variants of the same two calls."""

    def record(self, name: str, outcome: Outcome) -> None:
        """Add one attempt's outcome to strategy ``name``."""

    async def arecord(self, name: str, outcome: Outcome) -> None:
        """Async :meth:`record`."""

    def load(self, names: Sequence[str]) -> dict[str, StrategyStats]:
        """The current record of each strategy in ``names`` (empty records when unknown)."""

    async def aload(self, names: Sequence[str]) -> dict[str, StrategyStats]:
        """Async :meth:`load`."""

    def clear(self) -> None:
        """Forget everything this store holds."""


class MemoryStore:
    """Statistics in this process's memory (the default store).

    Args:
        window: How many recent attempts to keep per strategy.
    """

    def __init__(self, *, window: int = DEFAULT_WINDOW) -> None:
        """Create an empty store."""
        self.window = _check_window(window)
        self._stats: dict[str, StrategyStats] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        """Short description."""
        return f"MemoryStore(window={self.window}, strategies={len(self._stats)})"

    def record(self, name: str, outcome: Outcome) -> None:
        """Add one attempt's outcome to strategy ``name``."""
        with self._lock:
            current = self._stats.get(name) or StrategyStats(name=name)
            self._stats[name] = apply_outcome(current, outcome, self.window)

    async def arecord(self, name: str, outcome: Outcome) -> None:
        """Async :meth:`record` (no I/O: runs inline)."""
        self.record(name, outcome)

    def load(self, names: Sequence[str]) -> dict[str, StrategyStats]:
        """The current record of each strategy in ``names``."""
        with self._lock:
            return {n: self._stats.get(n) or StrategyStats(name=n) for n in names}

    async def aload(self, names: Sequence[str]) -> dict[str, StrategyStats]:
        """Async :meth:`load` (no I/O: runs inline)."""
        return self.load(names)

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._stats.clear()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS strategy_counts (
    name TEXT PRIMARY KEY, successes INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS strategy_samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, success INTEGER NOT NULL,
    latency REAL NOT NULL, ttfc REAL);
CREATE INDEX IF NOT EXISTS strategy_samples_name ON strategy_samples (name, id);
"""


class SQLiteStore:
    """Statistics in a SQLite file: they survive restarts and are shared by processes.

    The async methods run the blocking calls in a worker thread (another process may
    hold the file's lock for up to the 10 s busy timeout), never on the event loop.

    Args:
        path: The database file (created if missing); ``":memory:"`` for a throwaway one.
        window: How many recent attempts to keep per strategy.
    """

    def __init__(self, path: str, *, window: int = DEFAULT_WINDOW) -> None:
        """Open (or create) the database at ``path``."""
        self.path = str(path)
        self.window = _check_window(window)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=10.0)
        with self._lock, self._conn:
            self._conn.executescript(_SCHEMA)

    def __repr__(self) -> str:
        """Short description."""
        return f"SQLiteStore(path={self.path!r}, window={self.window})"

    def record(self, name: str, outcome: Outcome) -> None:
        """Add one attempt's outcome to strategy ``name`` in one transaction."""
        column = "successes" if outcome.success else "failures"
        with self._lock, self._conn:
            if not outcome.cancelled:
                self._conn.execute(
                    "INSERT INTO strategy_counts (name) VALUES (?) ON CONFLICT(name) DO NOTHING",
                    (name,),
                )
                self._conn.execute(
                    f"UPDATE strategy_counts SET {column} = {column} + 1 "  # noqa: S608
                    "WHERE name = ?",
                    (name,),
                )
            if outcome.cancelled and outcome.ttfc is None:
                return  # nothing of it is kept (see apply_outcome)
            self._conn.execute(
                "INSERT INTO strategy_samples (name, success, latency, ttfc) VALUES (?, ?, ?, ?)",
                (name, _status(outcome), outcome.latency, outcome.ttfc),
            )
            self._conn.execute(_SQLITE_TRIM, (name, name, self.window, name, self.window))

    async def arecord(self, name: str, outcome: Outcome) -> None:
        """Async :meth:`record` (in a worker thread)."""
        await asyncio.to_thread(self.record, name, outcome)

    def load(self, names: Sequence[str]) -> dict[str, StrategyStats]:
        """The current record of each strategy in ``names``."""
        result: dict[str, StrategyStats] = {}
        with self._lock:
            for name in names:
                row = self._conn.execute(
                    "SELECT successes, failures FROM strategy_counts WHERE name = ?", (name,)
                ).fetchone()
                samples = self._conn.execute(
                    "SELECT success, latency, ttfc FROM strategy_samples WHERE name = ? "
                    "ORDER BY id",
                    (name,),
                ).fetchall()
                result[name] = _stats_from_samples(
                    name,
                    (row[0], row[1]) if row else (0, 0),
                    [(s, lat) for s, lat, _ in samples],
                    [t for _, _, t in samples if t is not None],
                    self.window,
                )
        return result

    async def aload(self, names: Sequence[str]) -> dict[str, StrategyStats]:
        """Async :meth:`load` (in a worker thread)."""
        return await asyncio.to_thread(self.load, names)

    def clear(self) -> None:
        """Forget everything in the file."""
        with self._lock, self._conn:
            self._conn.execute("DELETE FROM strategy_counts")
            self._conn.execute("DELETE FROM strategy_samples")

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()


_CANCELLED = 2

# The window rule of apply_outcome, in SQL: a sample row goes once it is neither among the
# last ``window`` non-cancelled outcomes nor among the last ``window`` times to first chunk
# (so cancelled hedge losers never push real outcomes out of the window).
_SQLITE_TRIM = """
DELETE FROM strategy_samples WHERE name = ?
  AND (success = 2 OR id <= COALESCE((SELECT id FROM strategy_samples
        WHERE name = ? AND success != 2 ORDER BY id DESC LIMIT 1 OFFSET ?), -1))
  AND (ttfc IS NULL OR id <= COALESCE((SELECT id FROM strategy_samples
        WHERE name = ? AND ttfc IS NOT NULL ORDER BY id DESC LIMIT 1 OFFSET ?), -1))
"""


def _status(outcome: Outcome) -> int:
    """A sample's stored status: 1 success, 0 failure, 2 cancelled (pure)."""
    return _CANCELLED if outcome.cancelled else int(outcome.success)


def _stats_from_samples(
    name: str,
    counts: tuple[int, int],
    outcomes: Sequence[tuple[Any, Any]],
    ttfcs: Sequence[Any],
    window: int,
) -> StrategyStats:
    """Build a record the way :func:`apply_outcome` keeps one (pure).

    Args:
        name: The strategy.
        counts: Lifetime ``(successes, failures)``.
        outcomes: ``(status, latency)`` of stored samples, oldest first; cancelled ones
            (status 2) are skipped, the last ``window`` others kept.
        ttfcs: Stored times to first chunk, oldest first; the last ``window`` are kept.
        window: The store's window.
    """
    kept = [(int(s), float(lat)) for s, lat in outcomes if int(s) != _CANCELLED][-window:]
    return StrategyStats(
        name=name,
        successes=int(counts[0]),
        failures=int(counts[1]),
        recent=tuple(bool(s) for s, _ in kept),
        latencies=tuple(lat for _, lat in kept),
        ttfcs=tuple(float(t) for t in ttfcs)[-window:],
    )


def encode_sample(outcome: Outcome) -> str:
    """The list entry a :class:`RedisStore` keeps for one attempt (pure)."""
    ttfc = "" if outcome.ttfc is None else repr(outcome.ttfc)
    return f"{_status(outcome)}|{outcome.latency!r}|{ttfc}"


def decode_sample(raw: str | bytes) -> tuple[int, float, float | None]:
    """Parse an entry written by :func:`encode_sample` (pure)."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    success, latency, ttfc = text.split("|")
    return int(success), float(latency), float(ttfc) if ttfc else None


def _counts_from_hash(raw: Mapping[Any, Any]) -> tuple[int, int]:
    values = {(k.decode() if isinstance(k, bytes) else str(k)): int(v) for k, v in raw.items()}
    return values.get("successes", 0), values.get("failures", 0)


class RedisStore:
    """Statistics in Redis, shared by every process and replica that uses the same prefix.

    Each strategy has a hash ``{prefix}:{name}:counts`` (``HINCRBY``), a list
    ``{prefix}:{name}:recent`` of outcomes and a list ``{prefix}:{name}:ttfc`` of times to
    first chunk, each trimmed to the window (a cancelled hedge loser adds only its ttfc,
    as in :func:`apply_outcome`); one attempt is written in one ``MULTI``/``EXEC``
    transaction, so concurrent writers never lose an update. Given only a sync
    ``client``, the async methods run it in a worker thread.

    Args:
        url: A ``redis://`` URL; clients (sync, and one async client per event loop)
            are created lazily from it.
        client: An existing ``redis.Redis`` client to use for the sync calls.
        aclient: An existing ``redis.asyncio.Redis`` client to use for the async calls.
        prefix: Key prefix.
        window: How many recent attempts to keep per strategy.

    Raises:
        ConfigError: When neither a URL nor a client is given.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        aclient: Any = None,
        prefix: str = "fastpipe:strategies",
        window: int = DEFAULT_WINDOW,
    ) -> None:
        """Create the store; no connection is opened until the first call."""
        if url is None and client is None and aclient is None:
            msg = "RedisStore needs a url, a client or an aclient"
            raise ConfigError(msg)
        self._url = url
        self._client = client
        self._aclient = aclient
        self._aclients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )
        self.prefix = prefix
        self.window = _check_window(window)

    def __repr__(self) -> str:
        """Short description; the URL is not shown (it may hold a password)."""
        return f"RedisStore(prefix={self.prefix!r}, window={self.window})"

    def _sync(self) -> Any:
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(self._url or "")
        return self._client

    def _async(self) -> Any:
        if self._aclient is not None:
            return self._aclient
        if self._url is None:
            return None
        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            import redis.asyncio

            client = redis.asyncio.Redis.from_url(self._url)
            self._aclients[loop] = client
        return client

    def _keys(self, name: str) -> tuple[str, str, str]:
        base = f"{self.prefix}:{name}"
        return f"{base}:counts", f"{base}:recent", f"{base}:ttfc"

    def _queue_record(self, pipe: Any, name: str, outcome: Outcome) -> None:
        counts, recent, ttfc = self._keys(name)
        if not outcome.cancelled:
            pipe.hincrby(counts, "successes" if outcome.success else "failures", 1)
            pipe.rpush(recent, encode_sample(outcome))
            pipe.ltrim(recent, -self.window, -1)
        if outcome.ttfc is not None:
            pipe.rpush(ttfc, repr(outcome.ttfc))
            pipe.ltrim(ttfc, -self.window, -1)

    def _queue_load(self, pipe: Any, names: Sequence[str]) -> None:
        for name in names:
            counts, recent, ttfc = self._keys(name)
            pipe.hgetall(counts)
            pipe.lrange(recent, 0, -1)
            pipe.lrange(ttfc, 0, -1)

    def _parse_load(self, names: Sequence[str], replies: Sequence[Any]) -> dict[str, StrategyStats]:
        result: dict[str, StrategyStats] = {}
        for i, name in enumerate(names):
            counts = _counts_from_hash(replies[3 * i] or {})
            samples = [decode_sample(raw) for raw in replies[3 * i + 1] or []]
            ttfcs = [float(raw) for raw in replies[3 * i + 2] or []]
            outcomes = [(status, latency) for status, latency, _ in samples]
            result[name] = _stats_from_samples(name, counts, outcomes, ttfcs, self.window)
        return result

    def record(self, name: str, outcome: Outcome) -> None:
        """Add one attempt's outcome to strategy ``name`` (one transaction)."""
        pipe = self._sync().pipeline(transaction=True)
        self._queue_record(pipe, name, outcome)
        pipe.execute()

    async def arecord(self, name: str, outcome: Outcome) -> None:
        """Async :meth:`record` (the sync client in a worker thread when only it was given)."""
        client = self._async()
        if client is None:
            await asyncio.to_thread(self.record, name, outcome)
            return
        pipe = client.pipeline(transaction=True)
        self._queue_record(pipe, name, outcome)
        await pipe.execute()

    def load(self, names: Sequence[str]) -> dict[str, StrategyStats]:
        """The current record of each strategy in ``names`` (one round trip)."""
        pipe = self._sync().pipeline(transaction=False)
        self._queue_load(pipe, names)
        return self._parse_load(names, pipe.execute())

    async def aload(self, names: Sequence[str]) -> dict[str, StrategyStats]:
        """Async :meth:`load` (one round trip; in a worker thread when only sync)."""
        client = self._async()
        if client is None:
            return await asyncio.to_thread(self.load, names)
        pipe = client.pipeline(transaction=False)
        self._queue_load(pipe, names)
        return self._parse_load(names, await pipe.execute())

    def clear(self) -> None:
        """Delete every key under this store's prefix."""
        client = self._sync()
        keys = list(client.scan_iter(match=f"{self.prefix}:*"))
        if keys:
            client.delete(*keys)

    def close(self) -> None:
        """Close the sync client if this store created it."""
        if self._client is not None and self._url is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        """Close the async client of the running loop if this store created it."""
        if self._url is None:
            return
        loop = asyncio.get_running_loop()
        client = self._aclients.pop(loop, None)
        if client is not None:
            await client.aclose()


def make_store(
    kind: str, url: str | None = None, *, window: int = DEFAULT_WINDOW
) -> MemoryStore | SQLiteStore | RedisStore:
    """The store a configuration names (``pipeline.store`` and ``pipeline.store_url``).

    Args:
        kind: ``"memory"``, ``"sqlite"`` or ``"redis"``.
        url: The SQLite file (default :data:`DEFAULT_SQLITE_PATH`, in the working
            directory) or the Redis URL (required).
        window: How many recent attempts to keep per strategy.

    Returns:
        The store; nothing is connected until its first use (SQLite opens its file).

    Raises:
        ConfigError: Unknown kind, or redis without a URL.
    """
    if kind == "memory":
        return MemoryStore(window=window)
    if kind == "sqlite":
        return SQLiteStore(url or DEFAULT_SQLITE_PATH, window=window)
    if kind == "redis":
        if not url:
            msg = "pipeline.store = 'redis' needs pipeline.store_url (redis://host:port/db)"
            raise ConfigError(msg)
        return RedisStore(url, window=window)
    msg = f"pipeline.store must be 'memory', 'sqlite' or 'redis', got {kind!r}"
    raise ConfigError(msg)
