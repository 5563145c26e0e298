"""The pooled transport: one shared HTTP/2-capable pool per endpoint.

Public names: the configuration value objects (:class:`EndpointConfig`,
:class:`PoolLimits`, :class:`RetryPolicy`, :class:`BreakerPolicy`), :func:`get_pool`
returning the shared :class:`PooledClient` of a configuration, :class:`ResponseInfo`
describing one call, and :class:`EndpointStats`. Mechanics live in private modules.
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
from langchain_fastpipe.transport._pool import PooledClient, ResponseInfo, get_pool
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
    "get_pool",
    "parse_retry_after",
    "redact_url",
]
