"""The pooled transport: one shared HTTP/2-capable pool per endpoint.

Public names:

- Configuration value objects (frozen, hashable, validated): :class:`EndpointConfig`,
  :class:`PoolLimits`, :class:`RetryPolicy`, :class:`BreakerPolicy`.
- :func:`get_pool` returns the shared :class:`PooledClient` of a configuration;
  :class:`ResponseInfo` describes one call; :func:`aclose_pools` closes every pool's
  connections of the running event loop (await it before a loop you own ends).
- :class:`BreakerRegistry` (``PooledClient.breakers``): one :class:`CircuitBreaker` per
  model of the endpoint, plus the endpoint-wide one (``PooledClient.breaker``).

Mechanics live in private modules (among them the per-endpoint counters behind
``PooledClient.stats()``, ``Retry-After`` parsing and URL redaction).
"""

from __future__ import annotations

from langchain_fastpipe.transport._breaker import BreakerRegistry, CircuitBreaker
from langchain_fastpipe.transport._config import (
    BreakerPolicy,
    EndpointConfig,
    PoolLimits,
    RetryPolicy,
)
from langchain_fastpipe.transport._pool import PooledClient, ResponseInfo, aclose_pools, get_pool

__all__ = [
    "BreakerPolicy",
    "BreakerRegistry",
    "CircuitBreaker",
    "EndpointConfig",
    "PoolLimits",
    "PooledClient",
    "ResponseInfo",
    "RetryPolicy",
    "aclose_pools",
    "get_pool",
]
