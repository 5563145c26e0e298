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

Each public name's module is imported on first access (PEP 562): the chat model declares
its fields from the configuration classes at import, while the pool, its breakers and
request attempts (~1,600 objects for the garbage collector to track) wait for the first
call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from langchain_fastpipe._lazy import lazy_names

if TYPE_CHECKING:
    from langchain_fastpipe.transport._breaker import BreakerRegistry, CircuitBreaker
    from langchain_fastpipe.transport._config import (
        BreakerPolicy,
        EndpointConfig,
        PoolLimits,
        RetryPolicy,
    )
    from langchain_fastpipe.transport._pool import (
        PooledClient,
        ResponseInfo,
        aclose_pools,
        get_pool,
    )

#: Public name -> the private module that defines it, imported on first access.
_EXPORTS: dict[str, str] = {
    "BreakerPolicy": "langchain_fastpipe.transport._config",
    "BreakerRegistry": "langchain_fastpipe.transport._breaker",
    "CircuitBreaker": "langchain_fastpipe.transport._breaker",
    "EndpointConfig": "langchain_fastpipe.transport._config",
    "PoolLimits": "langchain_fastpipe.transport._config",
    "PooledClient": "langchain_fastpipe.transport._pool",
    "ResponseInfo": "langchain_fastpipe.transport._pool",
    "RetryPolicy": "langchain_fastpipe.transport._config",
    "aclose_pools": "langchain_fastpipe.transport._pool",
    "get_pool": "langchain_fastpipe.transport._pool",
}


__getattr__, __dir__ = lazy_names(__name__, _EXPORTS, globals())


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
