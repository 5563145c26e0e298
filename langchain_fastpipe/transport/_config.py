"""Configuration value objects of the transport: hashable, validated, documented defaults.

Every knob is declared once, here, with its default, bounds and description, on a frozen
pydantic model: an :class:`EndpointConfig` is a valid dictionary key (the key of the
shared pool, see :func:`get_pool`). ``ChatFastpipe`` declares its transport fields with
:func:`knob`, so they carry the same default, bounds and description.

Validation has one error path (:func:`~langchain_fastpipe._validation.field_error`): a
:class:`~langchain_fastpipe.errors.ConfigError` naming the field as the user wrote it,
``EndpointConfig.timeout must be > 0, got -1`` when built directly, and
``ChatFastpipe.timeout ...`` when built through :func:`build_endpoint_config` for a
``ChatFastpipe``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_core.core_schema import ValidationInfo

from langchain_fastpipe._validation import field_error, quote_url, redact_url, url_error

if TYPE_CHECKING:
    from typing_extensions import Self

    from langchain_fastpipe.config import FastpipeConfig

#: The HTTP engines of async calls (see ``EndpointConfig.engine``).
Engine = Literal["auto", "httpx", "aiohttp", "h2"]
ENGINES: tuple[Engine, ...] = ("auto", "httpx", "aiohttp", "h2")

__all__ = [
    "DEFAULT_RETRY_STATUSES",
    "ENGINES",
    "BreakerPolicy",
    "EndpointConfig",
    "EndpointPath",
    "PoolLimits",
    "RetryPolicy",
    "build_endpoint_config",
    "knob",
    "knob_paths",
    "quote_url",
    "redact_url",
    "wire_knobs",
]

#: The engine ``"auto"`` picks for HTTP/2 (pooled https with ``http2``, or h2c): ours, at a
#: fraction of httpcore's client CPU per stream (64 streams through nginx: 0.8-0.95 ms
#: against 2.2-2.5 ms for httpx over our graceful connection, 1.5-1.7 ms for raw httpx).
_AUTO_HTTP2: Literal["httpx", "h2"] = "h2"

#: Statuses retried by default: timeouts, conflicts, rate limits and transient 5xx.
DEFAULT_RETRY_STATUSES: frozenset[int] = frozenset({408, 409, 429, 500, 502, 503, 504})


def _a_fraction(value: float) -> float:
    """Refuse a failure rate above 1 (the bound of a fraction), quoting it."""
    if value > 1:
        raise PydanticCustomError(
            "fastpipe_value", "must be a fraction in (0, 1] (0.5 = half the calls)"
        )
    return value


def _bool_or_path(value: object) -> object:
    """Refuse a ``verify`` that is neither a bool nor a CA file path."""
    if not isinstance(value, (bool, str)):
        raise PydanticCustomError(
            "fastpipe_type",
            "must be a bool or a CA file path, got {got}",
            {"got": type(value).__name__},
        )
    return value


class _Knobs(BaseModel):
    """Base of the value objects: frozen (hashable), strict, unknown fields refused.

    A bad value raises ConfigError naming ``<Class>.<field>``, the value and the range.
    """

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    def __init__(self, **data: Any) -> None:
        """Validate ``data``; raise ConfigError naming each bad field, value and range."""
        try:
            super().__init__(**data)
            return
        except ValidationError as exc:
            error = field_error(exc, type(self), type(self).__name__)
        raise error  # outside the handler: no chained ValidationError quoting raw input

    # This __init__ only wraps BaseModel's: nested validation need not call it.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def _validated(
        cls, data: Mapping[str, Any], owner: str, names: Mapping[str, str], prefix: str = ""
    ) -> Self:
        """Validate ``data``; errors name ``owner``'s fields (``names``: path -> field)."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            error = field_error(exc, cls, owner, names, prefix=prefix)
        raise error  # outside the handler: no chained ValidationError quoting raw input


class PoolLimits(_Knobs):
    """Connection pool limits of one endpoint."""

    # 256 connections (httpx and aiohttp allow 100, openai-python 1000): as many requests
    # as the common servers batch at once by default (vLLM schedules up to 256 sequences,
    # TGI 128, llama.cpp its slots); a lower cap queues in the client requests the server
    # could already be decoding (measured: 256 concurrent streams, 100 -> 256
    # connections, +16% req/s). Keep-alive stays 20 (httpx's default): it is
    # FastpipeConfig's documented ``connection_pool_size`` default, which maps onto it.
    max_keepalive_connections: int = Field(
        20, ge=0, description="Idle connections kept open for reuse."
    )
    max_connections: int = Field(
        256,
        ge=1,
        description="Connections open at once (HTTP/2 multiplexes many requests on one).",
    )
    keepalive_expiry: float = Field(
        30.0,
        ge=0,
        allow_inf_nan=False,
        description="Seconds an idle connection is kept before it is closed.",
    )
    max_concurrent_streams: int = Field(
        100,
        ge=1,
        description=(
            "Requests in flight at once over HTTP/2. httpcore puts every request to one "
            "origin on a single HTTP/2 connection, and a server refuses streams beyond its "
            "SETTINGS_MAX_CONCURRENT_STREAMS (100 for nginx, hypercorn and most others), so "
            "keep it at or below that value."
        ),
    )


class RetryPolicy(_Knobs):
    """When and how long to wait before retrying a request.

    A request is tried at most ``1 + max_retries`` times, and only before any body byte
    reached the caller. The delay before retry ``n`` (0-based) is full-jitter exponential
    backoff, ``uniform(0, min(max_backoff, initial_backoff * 2**n))``, unless the server
    sent ``retry-after-ms`` or ``Retry-After``, which win (capped at ``retry_after_cap``).
    """

    max_retries: int = Field(
        2, ge=0, description="Retries of a failed request before any byte reached the caller."
    )
    initial_backoff: float = Field(
        0.25, ge=0, allow_inf_nan=False, description="Upper bound of the first backoff (s)."
    )
    max_backoff: float = Field(
        8.0, ge=0, allow_inf_nan=False, description="Upper bound of any backoff (s)."
    )
    retry_after_cap: float = Field(
        60.0,
        ge=0,
        allow_inf_nan=False,
        description="Longest server-requested wait that is honoured (s).",
    )
    retry_statuses: frozenset[int] = Field(
        DEFAULT_RETRY_STATUSES,
        strict=False,  # any iterable of ints; stored as a frozenset (hashable)
        description="HTTP statuses that are retried.",
    )


class BreakerPolicy(_Knobs):
    """Circuit breaker settings, applied to each (endpoint, model) breaker of an endpoint.

    A breaker judges *calls* (a call's retries are one outcome) by their failure rate over
    a sliding window: once at least ``min_calls`` calls ended within the last ``window``
    seconds and at least ``failure_rate`` of them failed, it opens. An open breaker fails
    fast for its cooldown: ``cooldown`` seconds the first time, ``cooldown_factor`` times
    longer each time it opens again while the failures go on (a failed probe, or opening
    again within one window of closing), at most ``max_cooldown``. As soon as the
    cooldown ends, up to ``half_open_max_calls`` probe calls go through; a probe's success
    closes the breaker, its failure opens it again.
    """

    window: float = Field(
        30.0,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Seconds of call outcomes the failure rate is measured over (a call's retries "
            "count once)."
        ),
    )
    min_calls: int = Field(
        5, ge=1, description="Calls that must have ended within the window before it may open."
    )
    failure_rate: Annotated[float, AfterValidator(_a_fraction)] = Field(
        0.5,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Fraction of those calls that failed (5xx, timeouts) that opens the breaker "
            "(0.5 = half the calls)."
        ),
    )
    cooldown: float = Field(
        2.0,
        ge=0,
        allow_inf_nan=False,
        description="Seconds of the first cooldown (fail fast, then a half-open probe).",
    )
    max_cooldown: float = Field(
        60.0,
        ge=0,
        allow_inf_nan=False,
        description="Longest cooldown, however long the failures go on (>= cooldown).",
    )
    cooldown_factor: float = Field(
        2.0,
        ge=1,
        allow_inf_nan=False,
        description="Growth of the cooldown each time the breaker opens again (>= 1).",
    )
    half_open_max_calls: int = Field(
        1, ge=1, description="Probe calls let through at once when the cooldown ends."
    )

    @field_validator("max_cooldown")
    @classmethod
    def _at_least_cooldown(cls, value: float, info: ValidationInfo) -> float:
        cooldown = info.data.get("cooldown")
        if cooldown is not None and value < cooldown:
            raise PydanticCustomError(
                "fastpipe_ref", "must be >= cooldown", {"other": "cooldown", "bound": cooldown}
            )
        return value


_POLICIES: Mapping[str, type[_Knobs]] = {
    "limits": PoolLimits,
    "retry": RetryPolicy,
    "breaker": BreakerPolicy,
}


class EndpointConfig(_Knobs):
    """Everything that identifies one endpoint's shared pool; frozen and hashable.

    ``limits``, ``retry`` and ``breaker`` take instances of their classes.
    """

    base_url: str = Field(
        description="``http(s)://host[:port][/path]``; request paths are appended to it."
    )
    http2: bool = Field(
        True, description="Offer HTTP/2 by ALPN on https endpoints (falls back to HTTP/1.1)."
    )
    http2_prior_knowledge: bool = Field(
        False, description="Speak HTTP/2 directly (h2c) on plain http endpoints; opt-in."
    )
    limits: PoolLimits = Field(default_factory=PoolLimits, description="Connection pool limits.")
    timeout: float = Field(
        30.0,
        gt=0,
        allow_inf_nan=False,
        description="Read/write/pool timeout per request, in seconds.",
    )
    connect_timeout: float = Field(
        5.0,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Time allowed to open one connection (TCP, TLS and HTTP/2 handshakes), in seconds."
        ),
    )
    verify: Annotated[bool | str, BeforeValidator(_bool_or_path)] = Field(
        True,
        description="TLS verification: True, False, or the path of a CA bundle (e.g. a test CA).",
    )
    retry: RetryPolicy = Field(default_factory=RetryPolicy, description="When and how to retry.")
    breaker: BreakerPolicy = Field(
        default_factory=BreakerPolicy, description="The circuit breaker policy."
    )
    max_response_bytes: int = Field(
        64 * 1024 * 1024, ge=1, description="Largest non-streamed reply body accepted."
    )
    pooling: bool = Field(
        True,
        description=(
            "Share one pooled client per endpoint. False makes a fresh HTTP/1.1 client per "
            "request (the baseline of benchmarks)."
        ),
    )
    engine: Engine = Field(
        "auto",
        description=(
            'Engine of async calls: "auto" (default: aiohttp for http:// servers, which '
            "speak HTTP/1.1, where aiohttp costs a fraction of httpcore's CPU per request; "
            '"h2" for https:// and h2c), "h2" (our HTTP/2 client on asyncio and h2, a '
            "fraction of httpcore's CPU per stream, HTTP/2 by ALPN over TLS or h2c; httpx "
            'where the server declines HTTP/2), "httpx" (httpx with our graceful HTTP/2 '
            'connection) or "aiohttp" (HTTP/1.1 only). Sync calls always use httpx.'
        ),
    )

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        problem = url_error(value)
        if problem is not None:
            raise problem
        return value

    @field_validator("limits", "retry", "breaker", mode="before")
    @classmethod
    def _policy_instance(cls, value: object, info: ValidationInfo) -> object:
        expected = _POLICIES[str(info.field_name)]
        if not isinstance(value, expected):
            raise PydanticCustomError(
                "fastpipe_type",
                "must be a {expected}, got {got}",
                {"expected": expected.__name__, "got": type(value).__name__},
            )
        return value

    @field_validator("engine")
    @classmethod
    def _engine_speaks_h2c(cls, value: Engine, info: ValidationInfo) -> Engine:
        if value == "aiohttp" and info.data.get("http2_prior_knowledge"):
            raise PydanticCustomError(
                "fastpipe_conflict",
                "is 'aiohttp', which speaks HTTP/1.1 only: unset http2_prior_knowledge",
            )
        return value

    @classmethod
    def from_config(cls, config: FastpipeConfig, **overrides: Any) -> EndpointConfig:
        """The endpoint of a :class:`~langchain_fastpipe.config.FastpipeConfig`'s backend.

        Args:
            config: The configuration (its flags and pool settings are applied: pooling
                off gives ``pooling=False``, a fresh HTTP/1.1 client per request).
            **overrides: Fields to set on top (``verify=``, ``base_url=``...).

        Returns:
            The endpoint configuration.
        """
        values = {"base_url": config.resolved_base_url(), **wire_knobs(config)}
        for key, value in overrides.items():
            if isinstance(value, _Knobs):
                values = {k: v for k, v in values.items() if not k.startswith(f"{key}.")}
            values[key] = value
        return build_endpoint_config(values)

    @property
    def async_engine(self) -> Literal["httpx", "aiohttp", "h2"]:
        """The engine async calls use: :attr:`engine`, with ``"auto"`` resolved.

        ``"auto"`` is aiohttp for pooled plain-``http://`` endpoints without h2c, ``"h2"``
        where pooled calls speak HTTP/2 (by ALPN over TLS, or h2c), and httpx otherwise
        (``http2=False`` over TLS, or the unpooled baseline). ``"h2"`` where pooled calls
        do not speak HTTP/2 (:attr:`speaks_http2`) is httpx.
        """
        engine = self.engine
        if engine == "auto":
            plain = self.base_url[:5].lower() == "http:"
            if plain and self.pooling and not self.http2_prior_knowledge:
                return "aiohttp"
            engine = _AUTO_HTTP2
        if engine == "h2" and not self.speaks_http2:
            return "httpx"
        return engine

    @property
    def speaks_http2(self) -> bool:
        """Whether pooled httpx calls may use HTTP/2 (ALPN over https, or h2c opt-in).

        The ``"aiohttp"`` engine's async calls never do (sync calls still may).
        """
        if not self.pooling:
            return False
        tls = self.base_url.lower().startswith("https:")
        return self.http2_prior_knowledge or (self.http2 and tls)

    @property
    def admission_limit(self) -> int:
        """Requests one pool lets into httpx at once, per event loop and for sync calls.

        Further requests wait in the pool's own FIFO gate (bounded by the pool timeout)
        instead of in httpcore's connection queue, whose cost grows with the number of
        waiters (encode/httpx#3215). Over HTTP/2 it is ``limits.max_concurrent_streams`` (one
        connection per origin; more streams than the server allows are refused); over
        HTTP/1.1 it is ``limits.max_connections``. When the server declines HTTP/2 in
        ALPN, up to ``max_concurrent_streams - max_connections`` requests queue in
        httpcore, as before. Async calls on aiohttp (:attr:`async_engine`, HTTP/1.1 only)
        use ``max_connections``.
        """
        if self.speaks_http2:
            return self.limits.max_concurrent_streams
        return self.limits.max_connections

    @property
    def endpoint(self) -> str:
        """The redacted ``scheme://host:port/path`` of :attr:`base_url`."""
        return redact_url(self.base_url)

    def __repr__(self) -> str:
        """A repr that shows the redacted URL only (no userinfo, no query)."""
        return (
            f"EndpointConfig(base_url={self.endpoint!r}, http2={self.http2}, "
            f"http2_prior_knowledge={self.http2_prior_knowledge}, pooling={self.pooling}, "
            f"engine={self.engine!r})"
        )

    __str__ = __repr__


@dataclass(frozen=True)
class EndpointPath:
    """Field metadata: where a field of another model lives in :class:`EndpointConfig`.

    Attributes:
        path: A dotted path such as ``"timeout"`` or ``"breaker.window"``.
    """

    path: str


def knob(path: str) -> Any:
    """The declaration of an :class:`EndpointConfig` knob, for another model's field.

    The returned ``FieldInfo`` carries the knob's default, bounds and description, and an
    :class:`EndpointPath` marker, so ``timeout: float = knob("timeout")`` in a pydantic
    model declares a field that maps onto ``EndpointConfig.timeout`` (see
    :func:`knob_paths`).

    Args:
        path: The knob's dotted path (``"timeout"``, ``"limits.max_connections"``).

    Returns:
        A copy of the knob's ``FieldInfo`` (typed Any, as pydantic's ``Field`` is).
    """
    head, _, leaf = path.partition(".")
    model: type[_Knobs] = _POLICIES[head] if leaf else EndpointConfig
    declared = copy.copy(model.model_fields[leaf or head])
    declared.metadata = [*declared.metadata, EndpointPath(path)]
    return declared


def knob_paths(model: type[BaseModel]) -> dict[str, str]:
    """The fields of ``model`` declared with :func:`knob`: field name -> knob path."""
    return {
        name: meta.path
        for name, info in model.model_fields.items()
        for meta in info.metadata
        if isinstance(meta, EndpointPath)
    }


def build_endpoint_config(
    values: Mapping[str, Any],
    *,
    owner: str = "EndpointConfig",
    names: Mapping[str, str] | None = None,
) -> EndpointConfig:
    """An :class:`EndpointConfig` from knob values by dotted path, validated once.

    Args:
        values: ``{"base_url": ..., "timeout": 3.0, "limits.max_connections": 7, ...}``;
            a policy may also be given whole (``"retry": RetryPolicy(...)``).
        owner: The class the user built, named in errors (``"ChatFastpipe"``).
        names: The owner's field of each path (``{"breaker.window": "breaker_window"}``).

    Returns:
        The endpoint configuration.

    Raises:
        ConfigError: A value is not valid; the message names the owner's field.
    """
    names = names or {}
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for path, value in values.items():
        head, _, leaf = path.partition(".")
        if leaf:
            nested.setdefault(head, {})[leaf] = value
        else:
            top[path] = value
    for head, data in nested.items():
        top[head] = _POLICIES[head]._validated(data, owner, names, prefix=head)
    return EndpointConfig._validated(top, owner, names)


def wire_knobs(config: FastpipeConfig) -> dict[str, Any]:
    """The endpoint knobs a :class:`~langchain_fastpipe.config.FastpipeConfig` sets, by path.

    The one mapping of the configuration's ``performance_optimizations`` onto the wire:
    ``api_timeout_seconds`` -> ``timeout``, ``connection_pool_size`` ->
    ``limits.max_keepalive_connections`` (``limits.max_connections`` is raised to it if
    lower), ``enable_connection_pooling`` -> ``pooling``, and so on.
    """
    po = config.performance_optimizations
    return {
        "http2": po.http2,
        "pooling": po.enable_connection_pooling,
        "timeout": po.api_timeout_seconds,
        "connect_timeout": po.connect_timeout_seconds,
        "limits.max_keepalive_connections": po.connection_pool_size,
        "limits.max_connections": max(po.max_connections, po.connection_pool_size),
        "retry.max_retries": po.max_retries,
    }
