"""EndpointConfig and friends: validation, hashing, redaction, get_pool caching."""

from __future__ import annotations

from typing import Any

import pytest

import langchain_fastpipe.transport as transport
from langchain_fastpipe.errors import ConfigError
from langchain_fastpipe.stats import get_stats
from langchain_fastpipe.transport import (
    BreakerPolicy,
    EndpointConfig,
    PooledClient,
    PoolLimits,
    RetryPolicy,
    get_pool,
)
from langchain_fastpipe.transport._config import redact_url

SECRET = "sk-supersecret-123"


def test_all_is_sorted_and_exported() -> None:
    assert transport.__all__ == sorted(transport.__all__)
    for name in (
        "EndpointConfig",
        "PoolLimits",
        "RetryPolicy",
        "BreakerPolicy",
        "get_pool",
        "PooledClient",
        "ResponseInfo",
    ):
        assert name in transport.__all__
        assert hasattr(transport, name)


def test_defaults_match_contract() -> None:
    cfg = EndpointConfig(base_url="http://127.0.0.1:8000/v1")
    assert cfg.limits == PoolLimits(
        max_keepalive_connections=20, max_connections=256, keepalive_expiry=30.0
    )
    assert cfg.retry.max_retries == 2
    assert cfg.retry.retry_statuses == frozenset({408, 409, 429, 500, 502, 503, 504})
    assert cfg.breaker == BreakerPolicy(
        window=30.0, min_calls=5, failure_rate=0.5, cooldown=2.0, max_cooldown=60.0,
        cooldown_factor=2.0, half_open_max_calls=1,
    )  # fmt: skip
    assert cfg.http2 is True
    assert cfg.http2_prior_knowledge is False
    assert cfg.pooling is True
    assert cfg.max_response_bytes == 64 * 1024 * 1024


def test_equal_configs_hash_equal_and_share_one_pool() -> None:
    a = EndpointConfig(base_url="http://127.0.0.1:9/v1", retry=RetryPolicy(retry_statuses={503}))
    b = EndpointConfig(base_url="http://127.0.0.1:9/v1", retry=RetryPolicy(retry_statuses=[503]))
    assert a == b
    assert hash(a) == hash(b)
    assert isinstance(a.retry.retry_statuses, frozenset)
    assert get_pool(a) is get_pool(b)
    c = EndpointConfig(base_url="http://127.0.0.1:9/v1", http2=False)
    assert get_pool(c) is not get_pool(a)


def test_get_pool_rejects_non_config() -> None:
    with pytest.raises(ConfigError, match="EndpointConfig"):
        get_pool("http://127.0.0.1:9")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("ftp://example.com", "http or https"),
        ("example.com/v1", "http or https"),
        ("http://", "no host"),
        ("http://host:notaport/", "not a valid URL"),
    ],
)
def test_bad_base_url_names_value(url: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as info:
        EndpointConfig(base_url=url)
    assert "base_url" in str(info.value)


def test_bad_url_error_redacts_userinfo() -> None:
    with pytest.raises(ConfigError) as info:
        EndpointConfig(base_url=f"ftp://user:{SECRET}@example.com/x?key={SECRET}")
    assert SECRET not in str(info.value)
    assert "example.com" in str(info.value)


@pytest.mark.parametrize(
    ("factory", "field"),
    [
        (lambda: PoolLimits(max_connections=0), "max_connections"),
        (lambda: PoolLimits(max_keepalive_connections=-1), "max_keepalive_connections"),
        (lambda: PoolLimits(keepalive_expiry=-1.0), "keepalive_expiry"),
        (lambda: RetryPolicy(max_retries=-1), "max_retries"),
        (lambda: RetryPolicy(initial_backoff=float("nan")), "initial_backoff"),
        (lambda: RetryPolicy(retry_statuses={"x"}), "retry_statuses"),
        (lambda: BreakerPolicy(min_calls=0), "min_calls"),
        (lambda: BreakerPolicy(half_open_max_calls=0), "half_open_max_calls"),
        (lambda: EndpointConfig(base_url="http://h", timeout=0), "timeout"),
        (lambda: EndpointConfig(base_url="http://h", connect_timeout=-1), "connect_timeout"),
        (lambda: EndpointConfig(base_url="http://h", max_response_bytes=0), "max_response_bytes"),
        (lambda: EndpointConfig(base_url="http://h", limits={"max_connections": 1}), "limits"),
    ],
)
def test_bad_numbers_name_the_field(factory, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        factory()


def test_redact_url() -> None:
    assert redact_url("https://u:p@api.example.com/v1/?key=1#f") == "https://api.example.com:443/v1"
    assert redact_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080"
    assert redact_url("http://[::1]/x/") == "http://[::1]:80/x"


def test_secret_never_in_repr_or_stats() -> None:
    cfg = EndpointConfig(base_url=f"https://user:{SECRET}@api.example.com/v1")
    pool = get_pool(cfg)
    assert SECRET not in repr(cfg)
    assert SECRET not in repr(pool)
    assert SECRET not in pool.endpoint
    assert SECRET not in str(pool.stats())
    assert SECRET not in str(get_stats())
    assert "https://api.example.com:443/v1" in get_stats()["pools"]


@pytest.mark.parametrize(
    "url",
    [
        f"https://api.example.com/v1?api_key={SECRET}",
        f"https://api.example.com/v1#{SECRET}",
        "https://api.example.com/v1?",
        f"http://127.0.0.1:8080?key={SECRET}",
    ],
)
def test_query_or_fragment_is_rejected_without_showing_it(url: str) -> None:
    # A query would end up before the appended path ("/v1?k=x/chat/completions") and
    # may hold a key; it is refused, and the message shows the redacted URL only.
    with pytest.raises(ConfigError, match="query or fragment") as info:
        EndpointConfig(base_url=url)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "engine"),
    [
        ({"base_url": "http://127.0.0.1:11434"}, "aiohttp"),  # Ollama, llama.cpp, vLLM...
        ({"base_url": "HTTP://host:8080/v1"}, "aiohttp"),
        ({"base_url": "https://api.example.com/v1"}, "h2"),  # HTTP/2 by ALPN
        ({"base_url": "http://h", "http2_prior_knowledge": True}, "h2"),  # h2c
        ({"base_url": "https://h", "http2": False}, "httpx"),  # TLS without HTTP/2
        ({"base_url": "http://h", "pooling": False}, "httpx"),  # the flag-off baseline
        ({"base_url": "http://h", "engine": "httpx"}, "httpx"),
        ({"base_url": "https://h", "engine": "aiohttp"}, "aiohttp"),
    ],
)
def test_auto_engine_picks_aiohttp_for_plain_http_and_h2_for_http2(
    kwargs: dict[str, Any], engine: str
) -> None:
    config = EndpointConfig(**kwargs)
    assert config.async_engine == engine
    if "engine" not in kwargs:
        assert config.engine == "auto"


def test_auto_engine_admits_per_connection_on_aiohttp_and_per_stream_on_h2() -> None:
    limits = PoolLimits(max_connections=7, max_concurrent_streams=33)
    plain = PooledClient(EndpointConfig(base_url="http://h", limits=limits))
    tls = PooledClient(EndpointConfig(base_url="https://h", limits=limits))
    assert plain._gates._async_size == 7
    assert tls._gates._async_size == 33


def test_chat_model_transport_fields_are_the_knob_declarations() -> None:
    from langchain_fastpipe.chat_models import ChatFastpipe
    from langchain_fastpipe.transport._config import knob_paths

    paths = knob_paths(ChatFastpipe)
    assert paths["breaker_window"] == "breaker.window"
    assert paths["max_connections"] == "limits.max_connections"
    assert "_transport_key" not in vars(ChatFastpipe)
    default = EndpointConfig(base_url="http://h")
    for name, path in paths.items():
        head, _, leaf = path.partition(".")
        declared = getattr(getattr(default, head), leaf) if leaf else getattr(default, head)
        assert ChatFastpipe.model_fields[name].default == declared, name
        owner = type(getattr(default, head)) if leaf else EndpointConfig
        knob = owner.model_fields[leaf or head]
        assert ChatFastpipe.model_fields[name].metadata[: len(knob.metadata)] == knob.metadata


def test_errors_name_the_field_the_user_wrote() -> None:
    from langchain_fastpipe.chat_models import ChatFastpipe

    with pytest.raises(
        ConfigError, match=r"^EndpointConfig\.timeout must be finite and > 0, got -1$"
    ):
        EndpointConfig(base_url="http://h", timeout=-1)
    with pytest.raises(
        ConfigError, match=r"^ChatFastpipe\.timeout must be finite and > 0, got -1$"
    ):
        ChatFastpipe(model="m", base_url="http://h", timeout=-1)
    with pytest.raises(
        ConfigError,
        match=r"^ChatFastpipe\.breaker_max_cooldown must be >= ChatFastpipe\.breaker_cooldown",
    ):
        ChatFastpipe(model="m", base_url="http://h", breaker_cooldown=5.0, breaker_max_cooldown=1.0)
    with pytest.raises(ConfigError, match=r"^EndpointConfig has no field 'timout'; did you mean"):
        EndpointConfig(base_url="http://h", timout=1)  # type: ignore[call-arg]
