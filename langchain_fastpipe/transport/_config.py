"""Configuration value objects of the transport: hashable, validated, documented defaults.

Every object here is a frozen, keyword-only dataclass, so an :class:`EndpointConfig` is a
valid dictionary key: it is the key of the shared pool (see :func:`get_pool`). Validation
happens at construction and raises :class:`~langchain_fastpipe.errors.ConfigError` naming
the field (or the redacted URL) that was wrong.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from langchain_fastpipe.errors import ConfigError

#: The HTTP engines of async calls (see ``EndpointConfig.engine``).
Engine = Literal["auto", "httpx", "aiohttp"]
ENGINES: tuple[Engine, ...] = ("auto", "httpx", "aiohttp")

__all__ = [
    "DEFAULT_RETRY_STATUSES",
    "ENGINES",
    "BreakerPolicy",
    "EndpointConfig",
    "PoolLimits",
    "RetryPolicy",
    "quote_url",
    "redact_url",
]

#: Statuses retried by default: timeouts, conflicts, rate limits and transient 5xx.
DEFAULT_RETRY_STATUSES: frozenset[int] = frozenset({408, 409, 429, 500, 502, 503, 504})

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _check_number(owner: str, name: str, value: object, *, minimum: float, strict: bool) -> None:
    """Raise ConfigError unless ``value`` is a finite number above (or at) ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        msg = f"{owner}.{name} must be a number, got {type(value).__name__}"
        raise ConfigError(msg)
    too_small = value <= minimum if strict else value < minimum
    if too_small or math.isnan(value) or math.isinf(value):
        relation = ">" if strict else ">="
        msg = f"{owner}.{name} must be finite and {relation} {minimum:g}, got {value!r}"
        raise ConfigError(msg)


def _check_int(owner: str, name: str, value: object, *, minimum: int) -> None:
    """Raise ConfigError unless ``value`` is an int of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        msg = f"{owner}.{name} must be an int, got {type(value).__name__}"
        raise ConfigError(msg)
    if value < minimum:
        msg = f"{owner}.{name} must be >= {minimum}, got {value!r}"
        raise ConfigError(msg)


@dataclass(frozen=True, kw_only=True)
class PoolLimits:
    """Connection pool limits of one endpoint.

    Attributes:
        max_keepalive_connections: Idle connections kept open for reuse.
        max_connections: Connections open at once (HTTP/2 multiplexes many requests on one).
        keepalive_expiry: Seconds an idle connection is kept before it is closed.
        max_concurrent_streams: Requests in flight at once over HTTP/2. httpcore puts
            every request to one origin on a single HTTP/2 connection, and a server
            refuses streams beyond its ``SETTINGS_MAX_CONCURRENT_STREAMS`` (100 for
            nginx, hypercorn and most others), so keep it at or below that value.
    """

    max_keepalive_connections: int = 20
    max_connections: int = 50
    keepalive_expiry: float = 30.0
    max_concurrent_streams: int = 100

    def __post_init__(self) -> None:
        """Validate the limits."""
        _check_int("PoolLimits", "max_keepalive_connections", self.max_keepalive_connections,
                   minimum=0)  # fmt: skip
        _check_int("PoolLimits", "max_connections", self.max_connections, minimum=1)
        _check_number("PoolLimits", "keepalive_expiry", self.keepalive_expiry,
                      minimum=0, strict=False)  # fmt: skip
        _check_int("PoolLimits", "max_concurrent_streams", self.max_concurrent_streams,
                   minimum=1)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """When and how long to wait before retrying a request.

    A request is tried at most ``1 + max_retries`` times, and only before any body byte
    reached the caller. The delay before retry ``n`` (0-based) is full-jitter exponential
    backoff, ``uniform(0, min(max_backoff, initial_backoff * 2**n))``, unless the server
    sent ``retry-after-ms`` or ``Retry-After``, which win (capped at ``retry_after_cap``).

    Attributes:
        max_retries: Retries after the first attempt; 0 disables retrying.
        initial_backoff: Upper bound of the first backoff, in seconds.
        max_backoff: Upper bound of any backoff, in seconds.
        retry_after_cap: Longest server-requested wait that is honoured, in seconds.
        retry_statuses: HTTP statuses that are retried.
    """

    max_retries: int = 2
    initial_backoff: float = 0.25
    max_backoff: float = 8.0
    retry_after_cap: float = 60.0
    retry_statuses: frozenset[int] = field(default=DEFAULT_RETRY_STATUSES)

    def __post_init__(self) -> None:
        """Validate the policy and make ``retry_statuses`` a frozenset (hashable)."""
        _check_int("RetryPolicy", "max_retries", self.max_retries, minimum=0)
        _check_number("RetryPolicy", "initial_backoff", self.initial_backoff,
                      minimum=0, strict=False)  # fmt: skip
        _check_number("RetryPolicy", "max_backoff", self.max_backoff, minimum=0, strict=False)
        _check_number("RetryPolicy", "retry_after_cap", self.retry_after_cap,
                      minimum=0, strict=False)  # fmt: skip
        try:
            statuses = frozenset(int(s) for s in self.retry_statuses)
        except (TypeError, ValueError) as exc:
            msg = (
                f"RetryPolicy.retry_statuses must be HTTP status ints, got {self.retry_statuses!r}"
            )
            raise ConfigError(msg) from exc
        object.__setattr__(self, "retry_statuses", statuses)


@dataclass(frozen=True, kw_only=True)
class BreakerPolicy:
    """Circuit breaker settings, applied to each (endpoint, model) breaker of an endpoint.

    A breaker judges *calls* (a call's retries are one outcome) by their failure rate over
    a sliding window: once at least ``min_calls`` calls ended within the last ``window``
    seconds and at least ``failure_rate`` of them failed, it opens. An open breaker fails
    fast for its cooldown: ``cooldown`` seconds the first time, ``cooldown_factor`` times
    longer each time it opens again while the failures go on (a failed probe, or opening
    again within one window of closing), at most ``max_cooldown``. As soon as the
    cooldown ends, up to ``half_open_max_calls`` probe calls go through; a probe's success
    closes the breaker, its failure opens it again.

    Attributes:
        window: Seconds of call outcomes the failure rate is measured over.
        min_calls: Calls that must have ended within the window before it may open.
        failure_rate: Fraction of those calls (0 < rate <= 1) that must have failed.
        cooldown: Seconds of the first cooldown (fail fast, then a half-open probe).
        max_cooldown: Longest cooldown, however long the failures go on.
        cooldown_factor: Growth of the cooldown each time it opens again (>= 1).
        half_open_max_calls: Probe calls let through at once when the cooldown ends.
    """

    window: float = 30.0
    min_calls: int = 5
    failure_rate: float = 0.5
    cooldown: float = 2.0
    max_cooldown: float = 60.0
    cooldown_factor: float = 2.0
    half_open_max_calls: int = 1

    def __post_init__(self) -> None:
        """Validate the policy (messages name the field and quote the value)."""
        _check_number("BreakerPolicy", "window", self.window, minimum=0, strict=True)
        _check_int("BreakerPolicy", "min_calls", self.min_calls, minimum=1)
        _check_number("BreakerPolicy", "failure_rate", self.failure_rate,
                      minimum=0, strict=True)  # fmt: skip
        if self.failure_rate > 1:
            msg = (
                "BreakerPolicy.failure_rate must be a fraction in (0, 1] (0.5 = half the "
                f"calls), got {self.failure_rate!r}"
            )
            raise ConfigError(msg)
        _check_number("BreakerPolicy", "cooldown", self.cooldown, minimum=0, strict=False)
        _check_number("BreakerPolicy", "max_cooldown", self.max_cooldown,
                      minimum=0, strict=False)  # fmt: skip
        if self.max_cooldown < self.cooldown:
            msg = (
                f"BreakerPolicy.max_cooldown must be >= BreakerPolicy.cooldown "
                f"({self.cooldown!r}), got {self.max_cooldown!r}"
            )
            raise ConfigError(msg)
        _check_number("BreakerPolicy", "cooldown_factor", self.cooldown_factor,
                      minimum=1, strict=False)  # fmt: skip
        _check_int("BreakerPolicy", "half_open_max_calls", self.half_open_max_calls, minimum=1)


def redact_url(url: str) -> str:
    """``scheme://host:port/path`` of ``url``: no credentials, query or fragment.

    Args:
        url: Any URL string (it may be malformed).

    Returns:
        The redacted form, safe for messages, logs and statistics.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        # Malformed (e.g. a bad port): keep only what is certainly not a secret.
        head, sep, rest = url.partition("://")
        netloc = rest.split("/", 1)[0].rsplit("@", 1)[-1] if sep else ""
        return f"{head}://{netloc}" if sep else "<unparseable url>"
    scheme = parts.scheme.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is None:
        port = _DEFAULT_PORTS.get(scheme)
    netloc = f"{host}:{port}" if port is not None else host
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def quote_url(url: str) -> str:
    """``url`` as the user wrote it, less anything that may be a secret, for messages.

    Unlike :func:`redact_url` nothing is normalised (no lower-casing, default port or
    trailing-slash removal, and a scheme-less ``host:port`` stays as written), so a
    message can quote the user's own value. Credentials (``user:password@``, also in a
    scheme-less value) are dropped and a query or fragment becomes ``?<redacted>``.

    Args:
        url: Any string given as a URL (it may be malformed).

    Returns:
        The value to quote.
    """
    cut = min((i for i in (url.find("?"), url.find("#")) if i >= 0), default=-1)
    text = url if cut < 0 else url[:cut]
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = authority.rpartition("@")[2]
    quoted = f"{scheme}{sep}{authority}{slash}{path}"
    return quoted if cut < 0 else f"{quoted}{url[cut]}<redacted>"


_BASE_URL_FORM = "http(s)://host[:port][/path]"
_SCHEME_SLASHES = re.compile(r"^(https?):/*(?=[^/])", re.IGNORECASE)


def _base_url_suggestion(url: str) -> str | None:
    """A valid base URL the user probably meant by ``url``, or None.

    Covers a missing scheme (``localhost:8080`` -> ``http://localhost:8080``), a scheme
    with too few slashes (``http:localhost``), ``//host`` and surrounding whitespace.
    Nothing is suggested for a value with credentials, a query or a fragment.
    """
    candidate = url.strip()
    if "://" not in candidate:
        if candidate.startswith("//"):
            candidate = "http:" + candidate
        elif match := _SCHEME_SLASHES.match(candidate):
            candidate = f"{match.group(1)}://{candidate[match.end() :]}"
        else:
            candidate = "http://" + candidate
    if candidate == url or any(c in candidate for c in "@?#"):
        return None
    try:
        _validate_base_url(candidate)
    except ConfigError:
        return None
    return candidate


def _base_url_error(problem: str, url: str) -> ConfigError:
    """``EndpointConfig.base_url <problem>``, with a suggestion when one is found."""
    hint = _base_url_suggestion(url)
    suffix = f"; did you mean {hint!r}?" if hint is not None else ""
    return ConfigError(f"EndpointConfig.base_url {problem}{suffix}")


def _validate_base_url(base_url: object) -> None:
    """Raise ConfigError unless ``base_url`` is ``http(s)://host[:port][/path]``.

    The message quotes the user's own value (:func:`quote_url`: as written, without
    credentials, query or fragment) and suggests the URL they probably meant (for a
    scheme-less ``host:port``, ``http://host:port``).
    """
    if not isinstance(base_url, str):
        msg = f"EndpointConfig.base_url must be a str, got {type(base_url).__name__}"
        raise ConfigError(msg)
    shown = quote_url(base_url)
    if not base_url.strip():
        problem = f"must be {_BASE_URL_FORM} (e.g. 'http://localhost:8080'), got {shown!r}"
        raise _base_url_error(problem, base_url)
    if base_url != base_url.strip():
        raise _base_url_error(f"has leading or trailing whitespace, got {shown!r}", base_url)
    try:
        parts = urlsplit(base_url)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        raise _base_url_error(f"is not a valid URL ({exc}), got {shown!r}", base_url) from exc
    if parts.scheme.lower() not in _DEFAULT_PORTS:
        raise _base_url_error(f"must use http or https, got {shown!r}", base_url)
    if not parts.hostname:
        raise _base_url_error(f"has no host, got {shown!r}", base_url)
    if any(c.isspace() for c in base_url):
        raise _base_url_error(f"must not contain whitespace, got {shown!r}", base_url)
    if "?" in base_url or "#" in base_url:
        # Paths are appended to base_url, so a query would end up in the middle of the
        # URL; and a query may hold a key (``?api-key=...``): it is never shown.
        msg = (
            "EndpointConfig.base_url must not have a query or fragment (pass keys as "
            f"headers, not in the URL), got {shown!r}"
        )
        raise ConfigError(msg)


@dataclass(frozen=True, kw_only=True)
class EndpointConfig:
    """Everything that identifies one endpoint's shared pool; hashable.

    Attributes:
        base_url: ``http(s)://host[:port][/path]``; request paths are appended to it.
        http2: Offer HTTP/2 through ALPN over TLS (falls back to HTTP/1.1).
        http2_prior_knowledge: Speak HTTP/2 directly on plain http (h2c); opt-in.
        limits: Connection pool limits.
        timeout: Read, write and pool timeout in seconds.
        connect_timeout: Connect (TCP + TLS) timeout in seconds.
        verify: True (system/certifi CAs), False (no verification) or a CA bundle path.
        retry: When and how to retry.
        breaker: The circuit breaker policy.
        max_response_bytes: Largest non-streamed reply body accepted.
        pooling: False gives a fresh HTTP/1.1 client per request (the "flag off" baseline).
        engine: The engine of async calls. ``"auto"`` (the default) picks the fastest for
            the URL (:attr:`async_engine`): aiohttp for plain ``http://`` endpoints (local
            servers speak HTTP/1.1, where aiohttp costs a fraction of httpcore's CPU per
            request), httpx with HTTP/2 by ALPN for ``https://`` and for h2c.
            ``"httpx"`` always uses httpx (httpcore); ``"aiohttp"`` always uses
            ``httpx_aiohttp.AiohttpTransport`` (same httpx API, HTTP/1.1 only). Sync
            calls always use httpx.
    """

    base_url: str
    http2: bool = True
    http2_prior_knowledge: bool = False
    limits: PoolLimits = field(default_factory=PoolLimits)
    timeout: float = 30.0
    connect_timeout: float = 5.0
    verify: bool | str = True
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    max_response_bytes: int = 64 * 1024 * 1024
    pooling: bool = True
    engine: Engine = "auto"

    def __post_init__(self) -> None:
        """Validate every field."""
        _validate_base_url(self.base_url)
        if self.engine not in ENGINES:
            msg = f"EndpointConfig.engine must be one of {ENGINES}, got {self.engine!r}"
            raise ConfigError(msg)
        if self.engine == "aiohttp" and self.http2_prior_knowledge:
            msg = "EndpointConfig.engine='aiohttp' is HTTP/1.1 only: unset http2_prior_knowledge"
            raise ConfigError(msg)
        for name, expected in (
            ("limits", PoolLimits),
            ("retry", RetryPolicy),
            ("breaker", BreakerPolicy),
        ):
            value = getattr(self, name)
            if not isinstance(value, expected):
                msg = (
                    f"EndpointConfig.{name} must be a {expected.__name__}, "
                    f"got {type(value).__name__}"
                )
                raise ConfigError(msg)
        _check_number("EndpointConfig", "timeout", self.timeout, minimum=0, strict=True)
        _check_number("EndpointConfig", "connect_timeout", self.connect_timeout,
                      minimum=0, strict=True)  # fmt: skip
        _check_int("EndpointConfig", "max_response_bytes", self.max_response_bytes, minimum=1)
        if not isinstance(self.verify, (bool, str)):
            msg = (
                "EndpointConfig.verify must be a bool or a CA file path, "
                f"got {type(self.verify).__name__}"
            )
            raise ConfigError(msg)

    @property
    def async_engine(self) -> Literal["httpx", "aiohttp"]:
        """The engine async calls use: :attr:`engine`, with ``"auto"`` resolved.

        ``"auto"`` is aiohttp for pooled plain-``http://`` endpoints without h2c, and
        httpx otherwise (HTTP/2 by ALPN over TLS, h2c, or the unpooled baseline).
        """
        if self.engine != "auto":
            return self.engine
        plain = self.base_url[:5].lower() == "http:"
        if plain and self.pooling and not self.http2_prior_knowledge:
            return "aiohttp"
        return "httpx"

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
