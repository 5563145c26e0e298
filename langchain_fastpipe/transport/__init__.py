"""The pooled transport: one shared HTTP/2-capable pool per endpoint.

Public names:

- Configuration value objects (frozen, hashable, validated): :class:`EndpointConfig`,
  :class:`PoolLimits`, :class:`RetryPolicy`, :class:`BreakerPolicy`.
- :func:`get_pool` returns the shared :class:`PooledClient` of a configuration;
  :class:`ResponseInfo` describes one call; :func:`aclose_pools` closes every pool's
  connections of the running event loop (await it before a loop you own ends).
- :class:`CircuitBreaker`, the per-endpoint breaker behind ``PooledClient.breaker``.
- :class:`EndpointStats`, the per-endpoint counters behind ``PooledClient.stats()``.
- Helpers: :func:`parse_retry_after` (``Retry-After``/``retry-after-ms`` to seconds) and
  :func:`redact_url` (``scheme://host:port/path``, safe for messages and logs).

Mechanics live in private modules.
"""

from __future__ import annotations

from langchain_fastpipe.transport._breaker import CircuitBreaker
from langchain_fastpipe.transport._config import (
    BreakerPolicy,
    EndpointConfig,
    PoolLimits,
    RetryPolicy,
    redact_url,
)
from langchain_fastpipe.transport._pool import PooledClient, ResponseInfo, aclose_pools, get_pool
from langchain_fastpipe.transport._retry import parse_retry_after
from langchain_fastpipe.transport._stats import EndpointStats

__all__ = [
    "BreakerPolicy",
    "CircuitBreaker",
    "EndpointConfig",
    "EndpointStats",
    "PoolLimits",
    "PooledClient",
    "ResponseInfo",
    "RetryPolicy",
    "aclose_pools",
    "get_pool",
    "parse_retry_after",
    "redact_url",
]
