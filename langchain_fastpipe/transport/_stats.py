"""Per-endpoint statistics of the pooled transport, and the per-request trace hook.

Counters are ints changed only under a small lock (one pool serves sync callers in many
threads and async callers on several event loops at once, and ``x += 1`` is not atomic);
latency distributions are :class:`~langchain_fastpipe.stats.Histogram` (locked too).

``connections_opened`` and ``pool_wait`` come from httpcore's ``trace`` request
extension: one small callback per trace event (a handful per request), nothing per body
chunk. ``pool_wait`` is approximate: the time from the start of the request until its
headers start being sent, minus the time spent opening a connection (TCP connect, TLS
handshake and the HTTP/2 preface) when this request opened one. It therefore contains
the wait for a free connection or HTTP/2 stream slot, plus a few microseconds of
client-side work.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from langchain_fastpipe import _metrics as m
from langchain_fastpipe._metrics import Node
from langchain_fastpipe.stats import Histogram

__all__ = ["EndpointStats", "RequestTrace"]

_CONNECT_STARTED = "connection.connect_tcp.started"
_CONNECT_DONE = "connection.connect_tcp.complete"
_SETUP_DONE = frozenset({"connection.start_tls.complete", "http2.send_connection_init.complete"})
_HEADERS_STARTED = frozenset(
    {"http11.send_request_headers.started", "http2.send_request_headers.started"}
)


class EndpointStats:
    """Counters and histograms of one endpoint's pool.

    Attributes:
        requests: Requests sent (each attempt counts; warm-up requests included).
        failures: Calls that ended in an error for the caller.
        retries: Attempts after the first, including transparent replays.
        replays: Requests resent at once because their pooled connection was gone (a
            graceful HTTP/2 GOAWAY, or a reused keep-alive connection the server closed).
        connections_opened: TCP connections opened.
        http_versions: Replies per HTTP version (``"HTTP/1.1"``, ``"HTTP/2"``).
        in_flight: Requests started and not finished (streams: until closed).
        peak_in_flight: Highest ``in_flight`` seen.
        latency: Seconds from call to the end of the reply (streams: end of the body).
        time_to_headers: Seconds from call to response headers.
        pool_wait: Approximate seconds waiting for a connection (see the module docstring).
    """

    def __init__(self, endpoint: str) -> None:
        """Create zeroed statistics for ``endpoint`` (the redacted URL)."""
        self.endpoint = endpoint
        self._lock = threading.Lock()
        self.requests = 0
        self.failures = 0
        self.retries = 0
        self.replays = 0
        self.connections_opened = 0
        self.http_versions: dict[str, int] = {}
        self.in_flight = 0
        self.peak_in_flight = 0
        self.latency = Histogram()
        self.time_to_headers = Histogram()
        self.pool_wait = Histogram()

    def enter(self) -> None:
        """Count a call starting."""
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def leave(self) -> None:
        """Count a call finishing (successfully or not)."""
        with self._lock:
            self.in_flight -= 1

    def count_request(self) -> None:
        """Count one request sent (an attempt, a replay or a warm-up request)."""
        with self._lock:
            self.requests += 1

    def count_retry(self, *, replay: bool = False) -> None:
        """Count one attempt after the first; ``replay`` marks a stale-connection resend."""
        with self._lock:
            self.retries += 1
            if replay:
                self.replays += 1

    def count_failure(self) -> None:
        """Count one call that ended in an error for the caller."""
        with self._lock:
            self.failures += 1

    def count_connection(self) -> None:
        """Count one TCP connection opened."""
        with self._lock:
            self.connections_opened += 1

    def count_version(self, version: str) -> None:
        """Count one reply over ``version``."""
        with self._lock:
            self.http_versions[version] = self.http_versions.get(version, 0) + 1

    def snapshot(self, breaker: dict[str, Any] | None = None) -> Node:
        """A JSON-serializable snapshot, with the breaker's state when given.

        A :class:`~langchain_fastpipe._metrics.Node` labelled ``endpoint`` (the key it
        sits under in the ``pools`` source, else this endpoint): its numbers are the
        ``pool_*`` metric families.
        """
        node = Node(labels={"endpoint": self.endpoint}, key_label="endpoint")
        with self._lock:
            requests, opened = self.requests, self.connections_opened
            node["endpoint"] = self.endpoint
            node.put(m.POOL_REQUESTS, requests)
            node.put(m.POOL_FAILURES, self.failures)
            node.put(m.POOL_RETRIES, self.retries)
            node.put(m.POOL_REPLAYS, self.replays)
            node.put(m.POOL_CONNECTIONS, opened)
            node.put(m.POOL_REUSE, (1.0 - opened / requests) if requests else None)
            versions = node.child("http_versions")
            for version, count in self.http_versions.items():
                versions.put(m.POOL_REPLIES, count, http_version=version)
            node.put(m.POOL_IN_FLIGHT, self.in_flight)
            node.put(m.POOL_PEAK, self.peak_in_flight)
        node.put(m.POOL_LATENCY, self.latency)
        node.put(m.POOL_HEADERS, self.time_to_headers)
        node.put(m.POOL_WAIT, self.pool_wait)
        node["breaker"] = breaker if breaker is not None else {}
        return node


class RequestTrace:
    """The httpcore ``trace`` hook of one request attempt.

    Pass :meth:`atrace` (async clients) or :meth:`trace` (sync clients) as the ``trace``
    request extension, then call :meth:`finish` once the response headers arrived.

    Attributes:
        opened_connection: Whether this attempt opened a new connection (False: it was
            sent on a pooled one).
        headers_received: Whether the response headers of this attempt arrived (set by
            :meth:`finish`); a failure after that is never a stale-connection failure.
        multiplexed: Whether the request went out over HTTP/2, where other streams share
            the connection (so "this request opened it" does not make it fresh).
    """

    __slots__ = (
        "_connect_done",
        "_connect_started",
        "_headers_at",
        "_start",
        "_stats",
        "headers_received",
        "multiplexed",
        "opened_connection",
    )

    def __init__(self, stats: EndpointStats) -> None:
        """Start timing a request that reports into ``stats``."""
        self._stats = stats
        self._start = time.perf_counter()
        self._connect_started: float | None = None
        self._connect_done: float | None = None
        self._headers_at: float | None = None
        self.opened_connection = False
        self.headers_received = False
        self.multiplexed = False

    def trace(self, name: str, info: dict[str, Any]) -> None:
        """Handle one httpcore trace event (sync clients)."""
        if name in _HEADERS_STARTED:
            if self._headers_at is None:
                self._headers_at = time.perf_counter()
            self.multiplexed = name.startswith("http2.")
        elif name == _CONNECT_STARTED:
            self._connect_started = time.perf_counter()
            self.opened_connection = True
        elif name == _CONNECT_DONE:
            self._stats.count_connection()
            self._connect_done = time.perf_counter()
        elif name in _SETUP_DONE:
            self._connect_done = time.perf_counter()

    async def atrace(self, name: str, info: dict[str, Any]) -> None:
        """Handle one httpcore trace event (async clients)."""
        self.trace(name, info)

    def finish(self) -> None:
        """Mark the response headers as received; record the pool wait of this attempt."""
        self.headers_received = True
        if self._headers_at is None:
            return
        wait = self._headers_at - self._start
        if self._connect_started is not None and self._connect_done is not None:
            wait -= self._connect_done - self._connect_started
        self._stats.pool_wait.record(max(0.0, wait))
