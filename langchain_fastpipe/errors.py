"""The exception tree of langchain-fastpipe.

Every error the package raises derives from :class:`FastpipeError`. Errors about a
model call also derive from the matching typed error of ``langchain_core.exceptions``,
so code that catches LangChain's errors (or ``with_fallbacks``) keeps working::

    FastpipeError
    ├── ConfigError (ValueError)                 bad field, URL, limit or unknown key
    ├── TransportError                           anything on the wire
    │   ├── EndpointConnectError (ModelConnectionError)   refused, reset, TLS failure
    │   ├── EndpointTimeoutError (ModelTimeoutError)      connect/read/pool timeout
    │   ├── CircuitOpenError (ModelConnectionError)       breaker of the model or endpoint
    │   │                                                 open: fails fast, cause = last error
    │   ├── ProtocolViolationError (ModelAPIError)        non-JSON, truncated, malformed
    │   │   └── ResponseTooLargeError                     body over the size limit
    │   └── HTTPStatusError (ModelAPIError)               a non-2xx reply (402, 405, ...)
    │       ├── BadRequestError (ModelInvalidRequestError)       400, 422
    │       ├── AuthenticationError (ModelAuthenticationError)   401
    │       ├── PermissionDeniedError (ModelPermissionDeniedError) 403
    │       ├── NotFoundError (ModelNotFoundError)               404
    │       ├── ContextLengthError (ContextOverflowError)        context overflow
    │       ├── RateLimitError (ModelRateLimitError)             429
    │       └── ServerError (ModelAPIError)                      5xx, 408, 409
    ├── StreamStallError (TimeoutError, ModelTimeoutError)
    │   ├── FirstChunkTimeoutError                no first chunk within the limit
    │   └── InterChunkTimeoutError                a gap between chunks over the limit
    ├── PreloadError                              a warm-up that failed (reported, not raised
    │                                             by default)
    ├── LocalServerError                          the managed llama-server: binary or model
    │                                             missing, or it never became healthy
    └── PipelineError
        ├── StrategyValidationError (ValueError)  a strategy's output was rejected
        ├── StrategyTimeoutError (TimeoutError)   a strategy did not finish in time
        └── AllStrategiesFailedError              every strategy failed; holds each cause

Messages name the endpoint (scheme, host, port and path, never credentials) and the
field or value that was wrong. No error ever carries an API key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from langchain_core.exceptions import (
    ContextOverflowError,
    ModelAPIError,
    ModelAuthenticationError,
    ModelConnectionError,
    ModelInvalidRequestError,
    ModelNotFoundError,
    ModelPermissionDeniedError,
    ModelRateLimitError,
    ModelTimeoutError,
)

__all__ = [
    "AllStrategiesFailedError",
    "AuthenticationError",
    "BadRequestError",
    "CircuitOpenError",
    "ConfigError",
    "ContextLengthError",
    "EndpointConnectError",
    "EndpointTimeoutError",
    "FastpipeError",
    "FirstChunkTimeoutError",
    "HTTPStatusError",
    "InterChunkTimeoutError",
    "LocalServerError",
    "NotFoundError",
    "PermissionDeniedError",
    "PipelineError",
    "PreloadError",
    "ProtocolViolationError",
    "RateLimitError",
    "ResponseTooLargeError",
    "ServerError",
    "StrategyTimeoutError",
    "StrategyValidationError",
    "StreamStallError",
    "TransportError",
]


class FastpipeError(Exception):
    """Base class of every error raised by langchain-fastpipe."""


class ConfigError(FastpipeError, ValueError):
    """A configuration value, URL, message or tool that is not valid."""


class TransportError(FastpipeError):
    """A failure talking to an endpoint.

    Attributes:
        endpoint: The redacted endpoint (``scheme://host:port/path``), never with credentials.
    """

    def __init__(self, message: str, *, endpoint: str = "") -> None:
        """Create the error with a message that already names the endpoint."""
        super().__init__(message)
        self.endpoint = endpoint


class EndpointConnectError(TransportError, ModelConnectionError):
    """The connection was refused, reset or its TLS handshake failed."""

    is_retryable = True


class EndpointTimeoutError(TransportError, ModelTimeoutError):
    """A connect, read, write or pool timeout expired."""

    is_retryable = True


class CircuitOpenError(TransportError, ModelConnectionError):
    """A circuit breaker is open, so the call failed fast without sending a request.

    Raised by the breaker of the called model (its calls kept failing: 5xx, timeouts) or by
    the endpoint-wide breaker (connections to the server kept failing), which refuses every
    model of the endpoint. ``__cause__`` is the last real error the refusing breaker saw
    (for example the :class:`ServerError` that opened it), without its traceback.

    Attributes:
        model: The model of the refused call (None for a call that named no model).
        scope: ``"model"`` (the model's breaker refused) or ``"endpoint"`` (the
            endpoint-wide breaker refused).
        retry_at: Monotonic time (the breaker's clock) at which the next probe may go.
        retry_in: Seconds from the moment of the error until then.
    """

    is_retryable = True

    def __init__(
        self,
        *,
        endpoint: str,
        retry_at: float,
        retry_in: float,
        model: str | None = None,
        scope: Literal["model", "endpoint"] = "model",
        probing: bool = False,
    ) -> None:
        """Create the error for ``endpoint`` and ``model``, naming when the next probe goes.

        Args:
            endpoint: The redacted endpoint.
            retry_at: Monotonic time at which the next probe may go.
            retry_in: Seconds until then.
            model: The model of the refused call, if it named one.
            scope: Which breaker refused: the model's or the endpoint-wide one.
            probing: The breaker is half-open and its probe calls are in flight.
        """
        called = f"model {model!r}" if model is not None else "this call"
        if scope == "endpoint":
            what = (
                f"circuit breaker open for every model at {endpoint} (connections keep "
                f"failing): failing fast for {called}"
            )
        else:
            what = f"circuit breaker open for {called} at {endpoint}: failing fast"
        when = "a probe call is in flight" if probing else f"next probe in {retry_in:.2f}s"
        super().__init__(f"{what}, {when}", endpoint=endpoint)
        self.model = model
        self.scope = scope
        self.retry_at = retry_at
        self.retry_in = retry_in


class ProtocolViolationError(TransportError, ModelAPIError):
    """The server's reply was not what the protocol promises (non-JSON, truncated, malformed)."""

    is_retryable = False


class ResponseTooLargeError(ProtocolViolationError):
    """The server's reply exceeded the configured size limit."""


class HTTPStatusError(TransportError, ModelAPIError):
    """The server answered with a non-success status.

    Used as is for statuses without a more specific class (402, 405, 410, ...); not
    retryable unless a subclass says so.

    Attributes:
        status_code: The HTTP status.
        body: At most 500 characters of the reply body, for diagnosis (request header
            values, such as the API key, are removed by the transport).
    """

    is_retryable = False

    def __init__(self, message: str, *, endpoint: str, status_code: int, body: str = "") -> None:
        """Create the error for one reply of ``endpoint``."""
        super().__init__(message, endpoint=endpoint)
        self.status_code = status_code
        self.body = body[:500]


class BadRequestError(HTTPStatusError, ModelInvalidRequestError):
    """400 or 422: the request was invalid."""


class AuthenticationError(HTTPStatusError, ModelAuthenticationError):
    """401: the API key was missing or wrong."""


class PermissionDeniedError(HTTPStatusError, ModelPermissionDeniedError):
    """403: the key may not use this model or endpoint."""


class NotFoundError(HTTPStatusError, ModelNotFoundError):
    """404: unknown model or path."""


class ContextLengthError(HTTPStatusError, ContextOverflowError):
    """The prompt does not fit the model's context window."""


class RateLimitError(HTTPStatusError, ModelRateLimitError):
    """429: rate limited.

    Attributes:
        retry_after: Seconds the server asked us to wait, when it said.
    """

    is_retryable = True

    def __init__(
        self,
        message: str,
        *,
        endpoint: str,
        status_code: int = 429,
        body: str = "",
        retry_after: float | None = None,
    ) -> None:
        """Create the error, keeping the server's Retry-After when given."""
        super().__init__(message, endpoint=endpoint, status_code=status_code, body=body)
        self.retry_after = retry_after


class ServerError(HTTPStatusError, ModelAPIError):
    """5xx, 408 or 409: the server failed; retrying may succeed."""

    is_retryable = True


_CONTEXT_MARKERS = ("context length", "context window", "maximum context", "too many tokens")


def status_error(
    status_code: int,
    *,
    endpoint: str,
    body: str = "",
    retry_after: float | None = None,
) -> HTTPStatusError:
    """Build the most specific :class:`HTTPStatusError` for a reply.

    Args:
        status_code: The HTTP status of the reply.
        endpoint: The redacted endpoint, for the message.
        body: The reply body (truncated to 500 characters in the error).
        retry_after: Seconds from a Retry-After header, if any.

    Returns:
        The typed error; callers ``raise`` it.
    """
    excerpt = body[:200].replace("\n", " ")
    message = (
        f"{endpoint} answered HTTP {status_code}: {excerpt}"
        if excerpt
        else (f"{endpoint} answered HTTP {status_code}")
    )
    lowered = body.lower()
    if status_code in (400, 413, 422) and any(m in lowered for m in _CONTEXT_MARKERS):
        return ContextLengthError(message, endpoint=endpoint, status_code=status_code, body=body)
    if status_code == 429:
        return RateLimitError(
            message, endpoint=endpoint, status_code=status_code, body=body, retry_after=retry_after
        )
    cls: type[HTTPStatusError]
    if status_code in (400, 413, 422):
        cls = BadRequestError
    elif status_code == 401:
        cls = AuthenticationError
    elif status_code == 403:
        cls = PermissionDeniedError
    elif status_code == 404:
        cls = NotFoundError
    elif status_code >= 500 or status_code in (408, 409):
        cls = ServerError
    else:
        cls = HTTPStatusError
    return cls(message, endpoint=endpoint, status_code=status_code, body=body)


class StreamStallError(FastpipeError, TimeoutError, ModelTimeoutError):
    """A stream stopped producing chunks within its limit; the HTTP stream was closed.

    Attributes:
        timeout: The limit in seconds that expired.
        chunks_received: How many chunks arrived before the stall.
    """

    is_retryable = True

    def __init__(self, message: str, *, timeout: float, chunks_received: int) -> None:
        """Create the error with the limit that expired."""
        super().__init__(message)
        self.timeout = timeout
        self.chunks_received = chunks_received


class FirstChunkTimeoutError(StreamStallError):
    """No first chunk arrived within the first-chunk timeout."""


class InterChunkTimeoutError(StreamStallError):
    """The gap between two chunks exceeded the inter-chunk timeout."""


class PreloadError(FastpipeError):
    """A model warm-up failed. Preloading reports it; it is raised only when asked to."""


class LocalServerError(FastpipeError):
    """The managed local model server could not be found, started or reached.

    The message names what is missing (binary, model file) or how the server failed,
    followed by the tail of its log file when there is one.

    Attributes:
        log_path: The server's log file, when it was started.
    """

    def __init__(self, message: str, *, log_path: str | None = None) -> None:
        """Create the error; ``message`` already includes any log tail."""
        super().__init__(message)
        self.log_path = log_path


class PipelineError(FastpipeError):
    """A failure of the answer pipeline or of ranked fallbacks."""


class StrategyValidationError(PipelineError, ValueError):
    """A strategy's output was rejected by its validator (or it produced no output).

    Attributes:
        strategy: The strategy name.
        reason: Why the output was rejected.
    """

    def __init__(self, strategy: str, reason: str) -> None:
        """Create the error for ``strategy``."""
        super().__init__(f"strategy {strategy!r}: {reason}")
        self.strategy = strategy
        self.reason = reason


class StrategyTimeoutError(PipelineError, TimeoutError):
    """A strategy did not finish within the total timeout.

    Attributes:
        strategy: The strategy name.
        timeout: The limit in seconds.
    """

    def __init__(self, strategy: str, timeout: float) -> None:
        """Create the error for ``strategy``."""
        super().__init__(f"strategy {strategy!r} did not finish within {timeout:g}s")
        self.strategy = strategy
        self.timeout = timeout


class AllStrategiesFailedError(PipelineError):
    """Every strategy failed.

    Attributes:
        errors: ``(strategy name, exception)`` for each attempt, in the order tried.
    """

    def __init__(self, errors: Sequence[tuple[str, BaseException]]) -> None:
        """Create the error from each attempt's name and exception."""
        detail = "; ".join(f"{name}: {type(exc).__name__}: {exc}" for name, exc in errors)
        super().__init__(f"all {len(errors)} strategies failed ({detail})")
        self.errors = list(errors)
