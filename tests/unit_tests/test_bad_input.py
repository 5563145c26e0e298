"""Bad input: every out-of-range field, bad URL, provider, message, tool and oversized reply.

Each must raise a clear typed error (``ConfigError``, or ``ResponseTooLargeError`` for the
reply) whose message names the field that was wrong, and must do so before any request is
sent (checked with an ``httpx.MockTransport`` that counts requests).
"""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest
from langchain_core.messages import ChatMessage, HumanMessage

import langchain_fastpipe.chat_models as chat_models_module
from langchain_fastpipe.chat_models import ChatFastpipe
from langchain_fastpipe.config import FastpipeConfig
from langchain_fastpipe.errors import ConfigError, ResponseTooLargeError
from langchain_fastpipe.transport import (
    BreakerPolicy,
    EndpointConfig,
    PooledClient,
    PoolLimits,
    RetryPolicy,
)

# --------------------------------------------------------------------------- FastpipeConfig

PERF = "performance_optimizations"
CONFIG_OUT_OF_RANGE: list[tuple[str, str, Any]] = [
    (PERF, "preload_timeout_seconds", 0),
    (PERF, "preload_timeout_seconds", -1.0),
    (PERF, "preload_timeout_seconds", 3601),
    (PERF, "preload_timeout_seconds", math.nan),
    (PERF, "connection_pool_size", 0),
    (PERF, "connection_pool_size", 1001),
    (PERF, "api_timeout_seconds", 0),
    (PERF, "api_timeout_seconds", math.inf),
    (PERF, "max_connections", 0),
    (PERF, "max_connections", 1001),
    (PERF, "connect_timeout_seconds", -0.5),
    (PERF, "max_retries", -1),
    (PERF, "max_retries", 11),
    (PERF, "first_chunk_timeout_seconds", 0),
    (PERF, "enable_connection_pooling", "maybe"),
    ("preload", "keep_alive_refresh_seconds", 0),
    ("preload", "keep_alive_refresh_seconds", 86401),
    ("pipeline", "min_success_rate", -0.1),
    ("pipeline", "min_success_rate", 1.5),
    ("pipeline", "probe_rate", 2),
    ("pipeline", "store", "postgres"),
    ("backend", "provider", "bogus"),
    ("backend", "base_url", "ftp://example.com"),
    ("backend", "base_url", "not a url"),
    ("backend", "base_url", "http://"),
]


@pytest.mark.parametrize(("section", "key", "value"), CONFIG_OUT_OF_RANGE)
def test_fastpipe_config_rejects_bad_value_naming_the_field(
    section: str, key: str, value: Any
) -> None:
    with pytest.raises(ConfigError) as info:
        FastpipeConfig(**{section: {key: value}})
    assert f"{section}.{key}" in str(info.value)


@pytest.mark.parametrize(("section", "key", "value"), CONFIG_OUT_OF_RANGE[:8])
def test_fastpipe_config_load_names_the_source(section: str, key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        FastpipeConfig.load(env={}, overrides={f"{section}.{key}": value})
    assert f"{section}.{key}" in str(info.value)
    assert "code" in str(info.value)


def test_fastpipe_config_unknown_key_suggests_the_right_one() -> None:
    with pytest.raises(ConfigError, match="connection_pool_size"):
        FastpipeConfig.load(env={}, overrides={"conection_pool_size": 3})


def test_fastpipe_config_env_value_out_of_range_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="FASTPIPE_CONNECTION_POOL_SIZE"):
        FastpipeConfig.load(env={"FASTPIPE_CONNECTION_POOL_SIZE": "-3"})


def test_redis_store_needs_a_url() -> None:
    with pytest.raises(ConfigError, match="store_url"):
        FastpipeConfig(pipeline={"store": "redis"})


# --------------------------------------------------------------------------- ChatFastpipe

CHAT_OUT_OF_RANGE: list[tuple[str, Any]] = [
    ("timeout", 0),
    ("timeout", -1.0),
    ("timeout", math.nan),
    ("timeout", math.inf),
    ("max_retries", -1),
    ("max_connections", 0),
    ("max_keepalive_connections", -1),
    ("max_tokens", 0),
    ("max_tokens", -5),
    ("temperature", -0.1),
    ("temperature", math.nan),
    ("temperature", math.inf),
]


@pytest.mark.parametrize(("field", "value"), CHAT_OUT_OF_RANGE)
def test_chat_model_rejects_out_of_range_field(field: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        ChatFastpipe(model="m", base_url="http://127.0.0.1:9/v1", **{field: value})
    assert field in str(info.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [("timeout", "soon"), ("max_retries", 1.5), ("temperature", "hot"), ("verify", 3.5)],
)
def test_chat_model_rejects_wrong_types_naming_the_field(field: str, value: Any) -> None:
    # pydantic's ValidationError is a ValueError, like ConfigError; either names the field.
    with pytest.raises(ValueError, match=field):
        ChatFastpipe(model="m", base_url="http://127.0.0.1:9/v1", **{field: value})


def test_chat_model_rejects_unknown_provider() -> None:
    with pytest.raises(ConfigError, match="provider") as info:
        ChatFastpipe(model="m", provider="anthropic", base_url="http://127.0.0.1:9")
    assert "anthropic" in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/v1",
        "example.com/v1",
        "http://",
        "http://host:99999/v1",
        "http://host:port/v1",
        "",
    ],
)
def test_chat_model_rejects_invalid_base_url(url: str) -> None:
    with pytest.raises(ConfigError, match="base_url"):
        ChatFastpipe(model="m", base_url=url)


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com", "example.com", "http://", "http://h:70000", "https://h:x/v1"],
)
def test_endpoint_config_rejects_invalid_url(url: str) -> None:
    with pytest.raises(ConfigError, match="base_url"):
        EndpointConfig(base_url=url)


@pytest.mark.parametrize(
    ("factory", "field"),
    [
        (lambda: PoolLimits(max_connections=0), "max_connections"),
        (lambda: PoolLimits(max_keepalive_connections=-1), "max_keepalive_connections"),
        (lambda: PoolLimits(keepalive_expiry=-1.0), "keepalive_expiry"),
        (lambda: RetryPolicy(max_retries=-1), "max_retries"),
        (lambda: RetryPolicy(initial_backoff=math.nan), "initial_backoff"),
        (lambda: RetryPolicy(max_backoff=-1.0), "max_backoff"),
        (lambda: RetryPolicy(retry_after_cap=math.inf), "retry_after_cap"),
        (lambda: RetryPolicy(retry_statuses=frozenset({"x"})), "retry_statuses"),  # type: ignore[arg-type]
        (lambda: BreakerPolicy(min_calls=0), "min_calls"),
        (lambda: BreakerPolicy(cooldown=-1.0), "cooldown"),
        (lambda: BreakerPolicy(half_open_max_calls=0), "half_open_max_calls"),
        (lambda: EndpointConfig(base_url="http://h", timeout=0), "timeout"),
        (lambda: EndpointConfig(base_url="http://h", connect_timeout=-1), "connect_timeout"),
        (lambda: EndpointConfig(base_url="http://h", max_response_bytes=0), "max_response_bytes"),
        (lambda: EndpointConfig(base_url="http://h", verify=1.5), "verify"),  # type: ignore[arg-type]
        (lambda: EndpointConfig(base_url="http://h", limits={"max_connections": 5}), "limits"),  # type: ignore[arg-type]
    ],
)
def test_transport_config_rejects_bad_field(factory: Any, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        factory()


# --------------------------------------------------------------------------- messages and tools


class CountingTransport:
    """An httpx.MockTransport that counts the requests it receives."""

    def __init__(self, body: bytes = b"{}") -> None:
        self.requests = 0
        self.body = body
        self.transport = httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        return httpx.Response(200, content=self.body,
                              headers={"content-type": "application/json"})  # fmt: skip


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> CountingTransport:
    """ChatFastpipe's pools answer from a counting MockTransport (no sockets)."""
    mock = CountingTransport()

    def fake_get_pool(config: EndpointConfig) -> PooledClient:
        return PooledClient(config, transport=mock.transport)

    monkeypatch.setattr(chat_models_module, "get_pool", fake_get_pool)
    return mock


@pytest.mark.parametrize("provider", ["openai", "ollama"])
async def test_empty_messages_fail_before_sending(wire: CountingTransport, provider: str) -> None:
    model = ChatFastpipe(model="m", provider=provider, base_url="http://127.0.0.1:9")
    with pytest.raises(ConfigError, match="messages"):
        model.invoke([])
    with pytest.raises(ConfigError, match="messages"):
        await model.ainvoke([])
    with pytest.raises(ConfigError, match="messages"):
        list(model.stream([]))
    assert wire.requests == 0


@pytest.mark.parametrize("provider", ["openai", "ollama"])
def test_unknown_message_role_fails_before_sending(wire: CountingTransport, provider: str) -> None:
    model = ChatFastpipe(model="m", provider=provider, base_url="http://127.0.0.1:9")
    with pytest.raises(ConfigError, match="wizard"):
        model.invoke([ChatMessage(role="wizard", content="abracadabra")])
    assert wire.requests == 0


@pytest.mark.parametrize("tool", [42, "not a tool", None, {"name": 5}])
def test_invalid_tool_is_config_error(tool: Any) -> None:
    model = ChatFastpipe(model="m", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ConfigError, match="tool"):
        model.bind_tools([tool])


def test_unknown_tool_choice_names_the_choice() -> None:
    model = ChatFastpipe(model="m", base_url="http://127.0.0.1:9/v1")
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {}}}
    with pytest.raises(ConfigError, match="nope"):
        model.bind_tools([tool], tool_choice="nope")


def test_structured_output_bad_arguments() -> None:
    model = ChatFastpipe(model="m", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ConfigError, match="method"):
        model.with_structured_output({"type": "object"}, method="telepathy")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="schema"):
        model.with_structured_output(None)


# --------------------------------------------------------------------------- oversized reply


async def test_oversized_reply_is_response_too_large() -> None:
    mock = CountingTransport(body=b'{"x": "' + b"a" * 5000 + b'"}')
    pool = PooledClient(
        EndpointConfig(base_url="http://127.0.0.1:9/v1", max_response_bytes=1000),
        transport=mock.transport,
    )
    with pytest.raises(ResponseTooLargeError, match="max_response_bytes=1000"):
        await pool.apost_json("/chat/completions", {"model": "m"})
    with pytest.raises(ResponseTooLargeError, match="max_response_bytes"):
        pool.post_json("/chat/completions", {"model": "m"})
    assert mock.requests == 2  # not retried


def test_per_call_timeout_must_be_positive() -> None:
    pool = PooledClient(EndpointConfig(base_url="http://127.0.0.1:9/v1"),
                        transport=CountingTransport().transport)  # fmt: skip
    with pytest.raises(ConfigError, match="timeout"):
        pool.post_json("/x", {}, timeout=0)


def test_unserializable_payload_is_config_error() -> None:
    pool = PooledClient(EndpointConfig(base_url="http://127.0.0.1:9/v1"),
                        transport=CountingTransport().transport)  # fmt: skip
    with pytest.raises(ConfigError):
        pool.post_json("/x", {"bad": object()})


def test_human_message_still_fine(wire: CountingTransport) -> None:
    # guards the fixture: a valid call does reach the (mock) wire
    model = ChatFastpipe(model="m", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(Exception):
        model.invoke([HumanMessage("hi")])
    assert wire.requests == 1


# --------------------------------------------------------------------------- the user's own URL

SECRET = "sk-test-SECRET-789"


@pytest.mark.parametrize(
    ("url", "problem", "suggestion"),
    [
        ("localhost:8080", "must use http or https", "http://localhost:8080"),
        ("localhost", "must use http or https", "http://localhost"),
        ("127.0.0.1:8080/v1", "must use http or https", "http://127.0.0.1:8080/v1"),
        ("[::1]:11434", "must use http or https", "http://[::1]:11434"),
        ("//localhost:8080", "must use http or https", "http://localhost:8080"),
        ("http:localhost:8080", "has no host", "http://localhost:8080"),
        ("HTTPS:/api.example.com/v1", "has no host", "HTTPS://api.example.com/v1"),
        (
            " http://localhost:8080/v1",
            "has leading or trailing whitespace",
            "http://localhost:8080/v1",
        ),
        ("http://localhost:8080\n", "has leading or trailing whitespace", "http://localhost:8080"),
    ],
)
def test_mistyped_base_url_is_quoted_as_written_with_a_suggestion(
    url: str, problem: str, suggestion: str
) -> None:
    with pytest.raises(ConfigError) as info:
        ChatFastpipe(model="m", base_url=url)
    assert str(info.value) == (
        f"ChatFastpipe.base_url {problem}, got {url!r}; did you mean {suggestion!r}?"
    )
    # the suggestion is itself accepted
    assert ChatFastpipe(model="m", base_url=suggestion).base_url == suggestion


def test_issue_example_quotes_localhost_8080() -> None:
    with pytest.raises(ConfigError) as info:
        ChatFastpipe(base_url="localhost:8080", model="m")
    assert str(info.value) == (
        "ChatFastpipe.base_url must use http or https, got 'localhost:8080'; "
        "did you mean 'http://localhost:8080'?"
    )
    with pytest.raises(ConfigError) as info:
        EndpointConfig(base_url="localhost:8080")
    assert str(info.value) == (
        "EndpointConfig.base_url must use http or https, got 'localhost:8080'; "
        "did you mean 'http://localhost:8080'?"
    )


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://Example.COM/v1/", "must use http or https"),  # as written: case, slash
        ("", "must be http(s)://host[:port][/path] (e.g. 'http://localhost:8080')"),
        ("   ", "must be http(s)://host[:port][/path] (e.g. 'http://localhost:8080')"),
        ("http://", "has no host"),
        ("https:///v1", "has no host"),
        ("not a url", "must use http or https"),
        ("http://local host:8080/v1", "must not contain whitespace"),
        ("http://local\thost:8080", "must not contain whitespace"),
        ("localhost:99999", "must use http or https"),  # http://localhost:99999 is no better
    ],
)
def test_bad_base_url_is_quoted_as_written_without_a_wrong_suggestion(
    url: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        ChatFastpipe(model="m", base_url=url)
    assert str(info.value) == f"ChatFastpipe.base_url {problem}, got {url!r}"


def test_unparseable_base_url_is_quoted_as_written() -> None:
    with pytest.raises(ConfigError) as info:
        ChatFastpipe(model="m", base_url="http://Host:port/v1/")
    text = str(info.value)
    assert text.startswith("ChatFastpipe.base_url is not a valid URL (")
    assert text.endswith(", got 'http://Host:port/v1/'")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"user:{SECRET}@localhost:8080", "localhost:8080"),
        (f"localhost:8080/v1?key={SECRET}", "localhost:8080/v1?<redacted>"),
        (f"http://127.0.0.1:9/v1#{SECRET}", "http://127.0.0.1:9/v1#<redacted>"),
        (f"ftp://me:{SECRET}@Example.com/v1", "ftp://Example.com/v1"),
    ],
)
def test_quoted_url_never_shows_credentials_or_query(url: str, shown: str) -> None:
    for build in (
        lambda: ChatFastpipe(model="m", base_url=url),
        lambda: EndpointConfig(base_url=url),
        lambda: FastpipeConfig(backend={"base_url": url}),
    ):
        with pytest.raises(ConfigError) as info:
            build()
        text = str(info.value)
        assert SECRET not in text
        assert repr(shown) in text
        assert "did you mean" not in text  # no suggestion built from a secret-bearing value


def test_fastpipe_config_quotes_the_value_once_with_the_suggestion() -> None:
    with pytest.raises(ConfigError) as info:
        FastpipeConfig(backend={"base_url": "localhost:8080"})
    assert str(info.value).startswith(
        "backend.base_url = 'localhost:8080' must use http or https; "
        "did you mean 'http://localhost:8080'?"
    )
