"""ChatFastpipe without a network: validation, request building, binding, the chunk core."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.runnables import RunnableBinding
from langchain_core.tools import tool
from pydantic import BaseModel

import langchain_fastpipe.chat_models as chat_models_module
from langchain_fastpipe._chat import _preload as chat_preload
from langchain_fastpipe._chat._chunks import ChunkParser as _ChunkParser
from langchain_fastpipe._chat._structured import json_schema_response_format
from langchain_fastpipe._chat._structured import parse_structured as _parse_structured
from langchain_fastpipe.chat_models import ChatFastpipe, set_preload_hook
from langchain_fastpipe.errors import ConfigError
from langchain_fastpipe.providers import OpenAIProvider
from langchain_fastpipe.transport import BreakerPolicy, ResponseInfo

URL = "http://127.0.0.1:9/v1"


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


class Person(BaseModel):
    """A person."""

    name: str
    age: int


def make(**kw: Any) -> ChatFastpipe:
    return ChatFastpipe(**{"model": "m", "base_url": URL, **kw})


# ---------------------------------------------------------------- construction


@pytest.mark.parametrize(
    ("field", "value", "pattern"),
    [
        ("provider", "anthropic", r"ChatFastpipe\.provider must be one of 'openai', 'ollama'"),
        ("base_url", "ftp://host/v1", r"ChatFastpipe\.base_url must use http or https"),
        ("base_url", "not a url", r"ChatFastpipe\.base_url must use http or https"),
        ("base_url", "http:///v1", r"ChatFastpipe\.base_url has no host"),
        ("connect_timeout", 0, r"ChatFastpipe\.connect_timeout must be finite and > 0"),
        ("breaker_min_calls", 0, r"ChatFastpipe\.breaker_min_calls must be >= 1, got 0"),
        ("breaker_failure_rate", 1.5, r"ChatFastpipe\.breaker_failure_rate .*got 1\.5"),
        ("breaker_max_cooldown", 1.0, r"ChatFastpipe\.breaker_max_cooldown must be >= Chat"),
        ("breaker_failure_threshold", 5, r"breaker_failure_threshold was removed \(got 5\)"),
        ("base_url", "http://host:99999/v1", r"ChatFastpipe\.base_url is not a valid URL"),
        ("timeout", 0, r"ChatFastpipe\.timeout must be finite and > 0"),
        ("max_retries", -1, r"ChatFastpipe\.max_retries must be >= 0"),
        ("max_connections", 0, r"ChatFastpipe\.max_connections must be >= 1"),
        ("max_keepalive_connections", -2, r"ChatFastpipe\.max_keepalive_connections"),
        ("max_tokens", 0, r"ChatFastpipe\.max_tokens must be >= 1"),
        ("temperature", -0.5, r"ChatFastpipe\.temperature must be finite and >= 0"),
    ],
)
def test_invalid_fields_raise_config_error_naming_the_field(
    field: str, value: Any, pattern: str
) -> None:
    with pytest.raises(ConfigError, match=pattern):
        make(**{field: value})


def test_base_url_with_credentials_is_rejected_without_echoing_them() -> None:
    with pytest.raises(ConfigError) as info:
        make(base_url="https://user:hunter2@example.com/v1")
    assert "hunter2" not in str(info.value)
    assert "api_key" in str(info.value)


def test_default_base_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FASTPIPE_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    assert ChatFastpipe(model="m").base_url == "https://api.openai.com/v1"
    assert ChatFastpipe(model="m", provider="ollama").base_url == "http://127.0.0.1:11434"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://10.0.0.1:8000/v1")
    assert ChatFastpipe(model="m").base_url == "http://10.0.0.1:8000/v1"
    monkeypatch.setenv("FASTPIPE_BASE_URL", "http://10.0.0.2:8000/v1")
    assert ChatFastpipe(model="m").base_url == "http://10.0.0.2:8000/v1"
    assert ChatFastpipe(model="m", provider="ollama").base_url == "http://127.0.0.1:11434"


def test_aliases_and_endpoint_config() -> None:
    llm = ChatFastpipe(
        model_name="m",
        base_url="https://h.example:8443/v1",
        openai_api_key="sk-1",
        max_connections=7,
        max_keepalive_connections=3,
        max_retries=4,
        timeout=12,
        http2_prior_knowledge=True,
        verify="certs/ca.pem",
        pooling=False,
    )
    assert llm.model_name == "m"
    assert llm.api_key is not None
    assert llm.api_key.get_secret_value() == "sk-1"
    config = llm.endpoint_config
    assert config.base_url == "https://h.example:8443/v1"
    assert config.limits.max_connections == 7
    assert config.limits.max_keepalive_connections == 3
    assert config.retry.max_retries == 4
    assert config.timeout == 12.0
    assert config.http2_prior_knowledge is True
    assert config.verify == "certs/ca.pem"
    assert config.pooling is False
    # equal settings -> equal (hashable) config -> the same shared pool
    assert make().endpoint_config == make().endpoint_config
    assert hash(make().endpoint_config) == hash(make().endpoint_config)


def test_key_never_in_repr_str_or_identifying_params() -> None:
    llm = make(api_key="sk-very-secret")
    for text in (repr(llm), str(llm), str(llm._identifying_params), str(llm.model_dump())):
        assert "sk-very-secret" not in text
    assert llm._headers() == {"Authorization": "Bearer sk-very-secret"}
    assert make(api_key=None)._headers() == {}


# ---------------------------------------------------------------- API key from the environment


def _clear_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FASTPIPE_API_KEY", "OPENAI_API_KEY", "FASTPIPE_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


def test_openai_key_is_never_sent_to_ollama(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_key_env(monkeypatch)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-only")
    ollama = ChatFastpipe(model="m", provider="ollama", base_url="http://remote:11434")
    assert ollama.api_key is None
    assert ollama._headers() == {}
    openai = make()
    assert openai._headers() == {"Authorization": "Bearer sk-openai-only"}
    # A copy switched to another provider does not carry the OpenAI key along either.
    switched = openai.model_copy(update={"provider": "ollama", "base_url": "http://r:11434"})
    assert switched._headers() == {}
    # ... and a copy switched the other way picks it up.
    assert ollama.model_copy(update={"provider": "openai"})._headers() == {
        "Authorization": "Bearer sk-openai-only"
    }
    # An explicit key is always sent as given.
    explicit = ChatFastpipe(model="m", provider="ollama", api_key="sk-mine")
    assert explicit._headers() == {"Authorization": "Bearer sk-mine"}


def test_fastpipe_key_serves_every_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_key_env(monkeypatch)
    monkeypatch.setenv("FASTPIPE_API_KEY", "fp-key")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    for provider in ("openai", "ollama"):
        llm = ChatFastpipe(model="m", provider=provider)
        assert llm._headers() == {"Authorization": "Bearer fp-key"}


# ---------------------------------------------------------------- transport config follows fields


def test_endpoint_config_follows_assignment_and_model_copy() -> None:
    a = make(base_url="http://127.0.0.1:1/v1")
    first = a.endpoint_config
    assert a.pool.config is first
    b = a.model_copy(update={"base_url": "http://127.0.0.1:2/v1", "timeout": 3})
    assert b.endpoint_config.base_url == "http://127.0.0.1:2/v1"
    assert b.endpoint_config.timeout == 3.0
    assert b.pool.config == b.endpoint_config
    assert b.pool is not a.pool
    assert a.endpoint_config is first  # the original is untouched
    a.connect_timeout = 1.5
    a.max_retries = 0
    assert a.endpoint_config.connect_timeout == 1.5
    assert a.endpoint_config.retry.max_retries == 0
    assert a.pool.config == a.endpoint_config
    a.base_url = "ftp://nope"
    with pytest.raises(ConfigError, match=r"ChatFastpipe\.base_url"):
        _ = a.endpoint_config


def test_pool_is_cached_on_the_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    real = chat_models_module.get_pool

    def counting(config: Any) -> Any:
        calls.append(config)
        return real(config)

    monkeypatch.setattr(chat_models_module, "get_pool", counting)
    llm = make()
    for _ in range(3):
        assert llm.pool is llm.pool
    assert len(calls) == 1
    llm.timeout = 7
    assert llm.pool.config.timeout == 7.0
    assert len(calls) == 2


def test_new_fields_reach_the_endpoint_config() -> None:
    config = make(connect_timeout=1.5, breaker_min_calls=9, breaker_window=12.0,
                  breaker_failure_rate=0.25, breaker_cooldown=0.5, breaker_max_cooldown=8.0,
                  breaker_cooldown_factor=3.0).endpoint_config  # fmt: skip
    assert config.connect_timeout == 1.5
    assert config.breaker == BreakerPolicy(
        window=12.0, min_calls=9, failure_rate=0.25, cooldown=0.5, max_cooldown=8.0,
        cooldown_factor=3.0,
    )  # fmt: skip


def test_preload_hook_called_only_when_asked() -> None:
    previous = chat_preload._preload_hook  # the preloader's, if it was imported
    seen: list[ChatFastpipe] = []
    set_preload_hook(seen.append)
    try:
        make()
        assert seen == []
        llm = make(preload=True)
        assert seen == [llm]
        make(preload=True)  # an equal model: registered once
        make(preload=True, timeout=99)  # transport options do not change what is warmed
        assert seen == [llm]
        other = make(preload=True, model="other")
        assert seen == [llm, other]
        set_preload_hook(seen.append)  # a new hook starts afresh
        again = make(preload=True)
        assert seen == [llm, other, again]
        set_preload_hook(None)
        make(preload=True, model="third")  # no hook installed: nothing happens
        assert len(seen) == 3
        assert chat_preload._preload_hook is None
    finally:
        set_preload_hook(previous)


# ---------------------------------------------------------------- request building


def test_chat_request_merges_fields_call_kwargs_and_bindings() -> None:
    llm = make(temperature=0.3, max_tokens=50, stop=["a"], model_kwargs={"seed": 7, "top_p": 0.5})
    req = llm._chat_request([HumanMessage("hi")], None, {"top_p": 0.9})
    assert (req.model, req.temperature, req.max_tokens, list(req.stop or [])) == (
        "m",
        0.3,
        50,
        ["a"],
    )
    assert dict(req.extra) == {"seed": 7, "top_p": 0.9}
    req = llm._chat_request(
        [HumanMessage("hi")],
        ["b"],
        {
            "model": "other",
            "temperature": 0.0,
            "tools": [add],
            "tool_choice": "any",
            "ls_structured_output_format": {"x": 1},
            "stream": True,
            "response_format": Person,
        },
    )
    assert req.model == "other"
    assert req.temperature == 0.0
    assert list(req.stop or []) == ["b"]
    assert req.tools is not None
    assert req.tools[0]["function"]["name"] == "add"
    assert req.tool_choice == "required"
    assert req.response_format is not None
    assert req.response_format["json_schema"]["name"] == "Person"
    assert "ls_structured_output_format" not in req.extra
    assert "stream" not in req.extra


def test_payload_through_the_chat_model() -> None:
    payload = make(max_tokens=5)._payload([HumanMessage("hi")], None, {}, stream=True)
    assert payload["max_tokens"] == 5
    assert payload["stream_options"] == {"include_usage": True}
    ollama = make(provider="ollama", base_url="http://127.0.0.1:9", keep_alive="1m", max_tokens=5)
    payload = ollama._payload([HumanMessage("hi")], None, {}, stream=True)
    assert payload["options"] == {"num_predict": 5}
    assert payload["keep_alive"] == "1m"


def test_warmup_request_uses_the_same_options_as_real_calls() -> None:
    llm = make(
        provider="ollama",
        base_url="http://127.0.0.1:9",
        temperature=0.0,
        max_tokens=64,
        keep_alive=-1,
        model_kwargs={"num_ctx": 8192},
    )
    real = llm._payload([HumanMessage("hi")], None, {}, stream=True)
    warm = llm.warmup_request()
    assert warm.path == "/api/generate"
    assert warm.payload["options"] == real["options"]
    assert warm.payload["keep_alive"] == -1
    assert "prompt" not in warm.payload
    assert make().warmup_request().payload["max_tokens"] == 1


def test_bind_tools_normalizes_tool_choice() -> None:
    llm = make()
    bound = llm.bind_tools([add, Person], tool_choice="Person")
    assert isinstance(bound, RunnableBinding)
    assert [t["function"]["name"] for t in bound.kwargs["tools"]] == ["add", "Person"]
    assert bound.kwargs["tool_choice"] == {"type": "function", "function": {"name": "Person"}}
    assert llm.bind_tools([add], tool_choice="any").kwargs["tool_choice"] == "required"  # type: ignore[attr-defined]
    assert "tool_choice" not in llm.bind_tools([add]).kwargs  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="'nope'"):
        llm.bind_tools([add], tool_choice="nope")


def _binding_kwargs(runnable: Any) -> dict[str, Any]:
    first = runnable.first if hasattr(runnable, "first") else runnable
    assert isinstance(first, RunnableBinding)
    return dict(first.kwargs)


def test_with_structured_output_methods() -> None:
    llm = make()
    kwargs = _binding_kwargs(llm.with_structured_output(Person))
    assert kwargs["response_format"]["type"] == "json_schema"
    assert kwargs["response_format"]["json_schema"]["name"] == "Person"
    assert set(kwargs["response_format"]["json_schema"]["schema"]["properties"]) == {"name", "age"}
    kwargs = _binding_kwargs(llm.with_structured_output(Person, method="function_calling"))
    assert kwargs["tool_choice"] == {"type": "function", "function": {"name": "Person"}}
    assert kwargs["parallel_tool_calls"] is False
    kwargs = _binding_kwargs(llm.with_structured_output(None, method="json_mode"))
    assert kwargs["response_format"] == {"type": "json_object"}
    with pytest.raises(ConfigError, match="method must be"):
        llm.with_structured_output(Person, method="xml")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="strict is not supported"):
        llm.with_structured_output(Person, method="json_mode", strict=True)
    with pytest.raises(ConfigError, match="schema is required"):
        llm.with_structured_output(None)


def test_json_schema_response_format_shapes() -> None:
    rf = json_schema_response_format(Person, strict=True)
    assert rf["json_schema"]["strict"] is True
    assert rf["json_schema"]["description"] == "A person."
    ready = {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}
    assert json_schema_response_format(ready) == ready
    assert json_schema_response_format({"name": "x", "schema": {}}) == ready


def test_parse_structured() -> None:
    assert _parse_structured(AIMessage('{"name": "Ann", "age": 3}'), Person) == Person(
        name="Ann", age=3
    )
    assert _parse_structured(AIMessage('```json\n{"name": "B", "age": 1}\n```'), Person) == Person(
        name="B", age=1
    )
    with_tool = AIMessage("", tool_calls=[{"name": "f", "args": {}, "id": "1"}])
    assert _parse_structured(with_tool, Person) is None
    with pytest.raises(OutputParserException, match="not valid JSON"):
        _parse_structured(AIMessage("no json here"), Person)


def test_ls_params_and_llm_type() -> None:
    llm = make(provider="ollama", base_url="http://127.0.0.1:9", temperature=0.1, max_tokens=3)
    params = llm._get_ls_params(stop=["x"])
    assert params == {
        "ls_provider": "ollama",
        "ls_model_name": "m",
        "ls_model_type": "chat",
        "ls_temperature": 0.1,
        "ls_max_tokens": 3,
        "ls_stop": ["x"],
    }
    assert llm._get_ls_params(model="override")["ls_model_name"] == "override"
    assert llm._llm_type == "fastpipe-ollama"


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/v1?token=abc", "http://127.0.0.1:9/v1#abc", "http://h/v1?"]
)
def test_base_url_with_query_or_fragment_is_rejected_without_echoing_it(url: str) -> None:
    with pytest.raises(ConfigError, match=r"ChatFastpipe\.base_url must not have a query") as info:
        make(base_url=url)
    assert "abc" not in str(info.value)


# ---------------------------------------------------------------- the shared chunk core


def _fake_clock(values: list[float]) -> Any:
    it: Iterator[float] = iter(values)
    return lambda: next(it)


def test_chunk_parser_annotates_only_the_first_chunk() -> None:
    info = ResponseInfo()
    core = _ChunkParser(
        OpenAIProvider().stream_parser(), info=info, clock=_fake_clock([10.0, 10.25])
    )
    assert core.feed(b": ping\n\n") == []  # no chunk yet: the clock is not read
    info.http_version = "HTTP/2"
    first = core.feed(
        b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
        b'data: {"choices":[{"delta":{"content":"b"}}]}\n\n'
    )
    assert len(first) == 2
    meta = first[0].message.response_metadata
    assert meta["time_to_first_chunk_ms"] == 250.0
    assert meta["http_version"] == "HTTP/2"
    assert "time_to_first_chunk_ms" not in first[1].message.response_metadata
    more = core.feed(
        b'data: {"choices":[{"delta":{"content":"c"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    )
    assert "time_to_first_chunk_ms" not in more[0].message.response_metadata
    assert core.finish() == []
    assert core.chunks == 3
    assert core.time_to_first_chunk == 0.25
    merged: Any = first[0]
    for chunk in [*first[1:], *more]:
        merged = merged + chunk
    assert isinstance(merged, ChatGenerationChunk)
    assert merged.text == "abc"
    assert merged.message.response_metadata["time_to_first_chunk_ms"] == 250.0


# --------------------------------------------------------------------------- per-call shortcuts


def test_invocation_params_match_langchains_own() -> None:
    import warnings

    from langchain_core.language_models.chat_models import BaseChatModel

    llm = make(temperature=0.3, max_tokens=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = BaseChatModel._get_invocation_params(llm, stop=["x"], seed=1)
    assert llm._get_invocation_params(stop=["x"], seed=1) == expected
    assert expected["_type"] == "fastpipe-openai"

    class Legacy(ChatFastpipe):
        def dict(self, **kwargs: Any) -> dict[str, Any]:
            return {"legacy": True}

    legacy = Legacy(model="m", base_url="http://h.example/v1", api_key="k")
    assert legacy._get_invocation_params(stop=None) == {"legacy": True, "stop": None}


def test_identifying_base_url_follows_a_changed_base_url() -> None:
    llm = make(base_url="http://one.example:8000/v1")
    assert llm._identifying_params["base_url"] == "http://one.example:8000/v1"
    other = llm.model_copy(update={"base_url": "http://two.example:9000/v1"})
    assert other._identifying_params["base_url"] == "http://two.example:9000/v1"
    assert llm._identifying_params["base_url"] == "http://one.example:8000/v1"


def test_generate_signatures_are_precomputed_and_true() -> None:
    import inspect

    llm = make()
    for method in (llm._generate, llm._agenerate):
        params = inspect.signature(method).parameters
        assert list(params) == ["messages", "stop", "run_manager", "kwargs"]
