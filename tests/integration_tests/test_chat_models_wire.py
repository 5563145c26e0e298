"""ChatFastpipe over real sockets against the emulator (HTTP/1.1 and HTTP/2 over TLS)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from langchain_core.callbacks import (
    AsyncCallbackHandler,
    AsyncCallbackManager,
    BaseCallbackHandler,
    CallbackManager,
)
from langchain_core.messages import AIMessageChunk, HumanMessage
from pydantic import BaseModel

from langchain_fastpipe.chat_models import ChatFastpipe
from langchain_fastpipe.emulator import EmulatorConfig, EmulatorServer, Fault, ModelProfile
from langchain_fastpipe.errors import (
    AuthenticationError,
    BadRequestError,
    ContextLengthError,
    NotFoundError,
    ProtocolViolationError,
    RateLimitError,
    ServerError,
    TransportError,
)

PROVIDERS = ["openai", "ollama"]
SECRET = "sk-fastpipe-test-SECRET-0123456789"


def make_llm(server: EmulatorServer, provider: str = "openai", **kw: Any) -> ChatFastpipe:
    suffix = "/v1" if provider == "openai" else ""
    params: dict[str, Any] = {
        "model": "emulator",
        "provider": provider,
        "base_url": server.base_url + suffix,
        "verify": server.ca_cert_path or True,
        "max_retries": 0,
    }
    return ChatFastpipe(**{**params, **kw})


def merge(chunks: list[Any]) -> AIMessageChunk:
    out = chunks[0]
    for chunk in chunks[1:]:
        out = out + chunk
    return out


class Recorder(BaseCallbackHandler):
    def __init__(self, events: list[tuple[str, str]]) -> None:
        self.events = events

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        assert kwargs["chunk"] is not None
        self.events.append(("token", token))


class AsyncRecorder(AsyncCallbackHandler):
    def __init__(self, events: list[tuple[str, str]]) -> None:
        self.events = events

    async def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.events.append(("token", token))


# ---------------------------------------------------------------- streaming


def _assert_token_then_chunk(events: list[tuple[str, str]]) -> None:
    tokens = [t for kind, t in events if kind == "token"]
    assert len(tokens) >= 12  # the emulator answers 12 words
    # strictly alternating: the callback for a chunk runs before that chunk is yielded
    assert [kind for kind, _ in events] == ["token", "chunk"] * len(tokens)
    assert events[0::2] == [("token", t) for t in tokens]
    assert events[1::2] == [("chunk", t) for t in tokens]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_on_llm_new_token_fires_before_each_chunk(emulator: EmulatorServer, provider: str) -> None:
    llm = make_llm(emulator, provider)
    messages = [HumanMessage("hello")]
    # _stream itself (as used by callers passing a run manager, e.g. generate_from_stream)
    events: list[tuple[str, str]] = []
    (run_manager,) = CallbackManager.configure([Recorder(events)]).on_chat_model_start(
        {}, [messages]
    )
    for chunk in llm._stream(messages, run_manager=run_manager):
        events.append(("chunk", chunk.text))
    _assert_token_then_chunk(events)
    # and the public stream()
    public: list[tuple[str, str]] = []
    for message_chunk in llm.stream(messages, config={"callbacks": [Recorder(public)]}):
        public.append(("chunk", message_chunk.text))
    ours = [e for e in events if e[0] == "token"]
    # core's stream() adds one empty chunk_position="last" chunk at the end
    assert [e for e in public if e[0] == "token"] == [*ours, ("token", "")]
    text = "".join(t for kind, t in events if kind == "chunk")
    assert text == llm.invoke("hello").content


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_async_stream_tokens_and_usage(emulator: EmulatorServer, provider: str) -> None:
    llm = make_llm(emulator, provider)
    messages = [HumanMessage("hello there")]
    events: list[tuple[str, str]] = []
    (run_manager,) = await AsyncCallbackManager.configure(
        [AsyncRecorder(events)]
    ).on_chat_model_start({}, [messages])
    chunks = []
    async for chunk in llm._astream(messages, run_manager=run_manager):
        events.append(("chunk", chunk.text))
        chunks.append(chunk.message)
    _assert_token_then_chunk(events)
    merged = merge(chunks)
    assert merged.usage_metadata is not None
    assert merged.usage_metadata["output_tokens"] == 12
    assert merged.usage_metadata["input_tokens"] == 2
    public = merge([c async for c in llm.astream(messages)])
    assert public.usage_metadata == merged.usage_metadata


@pytest.mark.parametrize("provider", PROVIDERS)
def test_usage_and_metadata_in_stream_and_invoke(emulator: EmulatorServer, provider: str) -> None:
    llm = make_llm(emulator, provider)
    merged = merge(list(llm.stream("count my words please")))
    assert merged.usage_metadata == {"input_tokens": 4, "output_tokens": 12, "total_tokens": 16}
    meta = merged.response_metadata
    assert meta["model_name"] == "emulator"
    assert meta["finish_reason"] == "stop"
    assert meta["model_provider"] == provider
    assert meta["http_version"] == "HTTP/1.1"
    assert isinstance(meta["time_to_first_chunk_ms"], float)
    assert meta["time_to_first_chunk_ms"] >= 0
    result = llm.invoke("count my words please")
    assert result.usage_metadata == merged.usage_metadata
    assert result.content == merged.content
    assert result.response_metadata["finish_reason"] == "stop"
    assert result.response_metadata["model_name"] == "emulator"
    assert result.response_metadata["http_version"] == "HTTP/1.1"
    if provider == "openai":  # include_usage was asked for
        assert emulator.bodies("/v1/chat/completions")[0]["stream_options"] == {
            "include_usage": True
        }


@pytest.mark.parametrize("provider", PROVIDERS)
def test_http2_version_reported_over_tls(emulator_h2: EmulatorServer, provider: str) -> None:
    llm = make_llm(emulator_h2, provider)
    assert llm.invoke("hi").response_metadata["http_version"] == "HTTP/2"
    assert merge(list(llm.stream("hi"))).response_metadata["http_version"] == "HTTP/2"
    h1 = make_llm(emulator_h2, provider, http2=False)
    assert h1.invoke("hi").response_metadata["http_version"] == "HTTP/1.1"


def test_streams_read_to_the_end_reuse_one_connection(make_emulator: Any) -> None:
    server = make_emulator()
    llm = make_llm(server, max_connections=1, max_keepalive_connections=1)
    before = server.stats()["connections_opened"]
    for _ in range(5):
        assert merge(list(llm.stream("hi"))).content
    assert server.stats()["connections_opened"] - before == 1


def test_breaking_out_of_a_stream_then_streaming_again(emulator: EmulatorServer) -> None:
    llm = make_llm(emulator, max_connections=1)
    for chunk in llm.stream("hi"):
        if chunk.text:
            break
    full = merge(list(llm.stream("hi")))
    assert full.response_metadata["finish_reason"] == "stop"


async def test_cancelled_astream_releases_the_request(make_emulator: Any) -> None:
    server = make_emulator(EmulatorConfig(default=ModelProfile(inter_token_seconds=0.05)))
    llm = make_llm(server)

    async def consume() -> None:
        async for _ in llm.astream("hi"):
            pass

    task = asyncio.create_task(consume())
    for _ in range(500):
        if server.active_requests:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(200):  # the server sees the disconnect
        if server.active_requests == 0:
            break
        await asyncio.sleep(0.01)
    assert server.active_requests == 0
    assert (await llm.ainvoke("hi")).content


# ---------------------------------------------------------------- batch, tools, structure


@pytest.mark.parametrize("provider", PROVIDERS)
def test_batch_and_abatch(emulator: EmulatorServer, provider: str) -> None:
    llm = make_llm(emulator, provider)
    prompts = ["one", "two words", "three little words"]
    results = llm.batch(prompts)
    assert [r.usage_metadata["input_tokens"] for r in results if r.usage_metadata] == [1, 2, 3]
    again = asyncio.run(llm.abatch(prompts))
    assert [r.content for r in again] == [r.content for r in results]


class Person(BaseModel):
    """A person."""

    name: str
    age: int


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_structured_output_over_the_wire(
    emulator: EmulatorServer, provider: str, method: str
) -> None:
    llm = make_llm(emulator, provider).with_structured_output(Person, method=method)  # type: ignore[arg-type]
    result = llm.invoke("who?")
    assert isinstance(result, Person)


def test_ollama_named_tool_choice_sends_only_that_tool(emulator: EmulatorServer) -> None:
    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    llm = make_llm(emulator, "ollama").bind_tools([add, Person], tool_choice="Person")
    message = llm.invoke("add 1 and 2")
    assert message.tool_calls[0]["name"] == "Person"  # type: ignore[attr-defined]
    sent = emulator.bodies("/api/chat")[-1]
    assert [t["function"]["name"] for t in sent["tools"]] == ["Person"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_stop_and_max_tokens_reach_the_server(emulator: EmulatorServer, provider: str) -> None:
    llm = make_llm(emulator, provider, max_tokens=3)
    result = llm.invoke("hi")
    assert result.usage_metadata is not None
    assert result.usage_metadata["output_tokens"] == 3
    assert result.response_metadata["finish_reason"] == "length"


async def test_ollama_warmup_uses_real_options(make_emulator: Any) -> None:
    server = make_emulator()
    llm = make_llm(server, "ollama", keep_alive="5m", model_kwargs={"num_ctx": 2048})
    await llm.awarmup()
    assert "emulator" in server.loaded_models
    await llm.ainvoke("hi")
    warm = server.bodies("/api/generate")[-1]
    real = server.bodies("/api/chat")[-1]
    assert warm["options"] == real["options"] == {"num_ctx": 2048}
    assert warm["keep_alive"] == real["keep_alive"] == "5m"
    assert server.load_counts["emulator"] == 1  # the real call did not reload


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, BadRequestError),
        (404, NotFoundError),
        (500, ServerError),
        (503, ServerError),
    ],
)
def test_status_faults_map_to_typed_errors(
    emulator: EmulatorServer, provider: str, status: int, error: type[Exception]
) -> None:
    llm = make_llm(emulator, provider)
    emulator.inject(Fault.status(status))
    with pytest.raises(error):
        llm.invoke("hi")
    emulator.inject(Fault.status(status))
    with pytest.raises(error):
        list(llm.stream("hi"))


def test_rate_limit_maps_and_retry_recovers(emulator: EmulatorServer) -> None:
    llm = make_llm(emulator)
    emulator.inject(Fault.rate_limit(retry_after="0"))
    with pytest.raises(RateLimitError):
        llm.invoke("hi")
    retrying = make_llm(emulator, max_retries=2)
    before = emulator.chat_requests
    emulator.inject(Fault.status(503))
    assert retrying.invoke("hi").content
    assert emulator.chat_requests - before == 2


def test_context_overflow_maps_to_context_length_error(make_emulator: Any) -> None:
    server = make_emulator(EmulatorConfig(default=ModelProfile(context_tokens=3)))
    with pytest.raises(ContextLengthError):
        make_llm(server).invoke("this prompt has far too many words")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_malformed_and_truncated_replies(emulator: EmulatorServer, provider: str) -> None:
    llm = make_llm(emulator, provider)
    emulator.inject(Fault.malformed_chunk(after_chunks=2))
    with pytest.raises(ProtocolViolationError):
        list(llm.stream("hi"))
    emulator.inject(Fault.truncated_json())
    with pytest.raises(ProtocolViolationError):
        llm.invoke("hi")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_reset_mid_stream_is_a_transport_error_after_delivered_chunks(
    emulator: EmulatorServer, provider: str
) -> None:
    llm = make_llm(emulator, provider, max_retries=2)
    emulator.inject(Fault.reset_mid_stream(after_chunks=3))
    received: list[str] = []

    def consume() -> None:
        for chunk in llm.stream("hi"):
            received.append(chunk.text)

    with pytest.raises(TransportError):
        consume()
    assert received  # some chunks arrived first, and nothing was replayed after them
    assert len(received) <= 4


def test_api_key_sent_but_never_leaked(
    make_emulator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_emulator(EmulatorConfig(api_key=SECRET))
    caplog.set_level(logging.DEBUG)
    good = make_llm(server, api_key=SECRET)
    assert good.invoke("hi").content
    assert merge(list(good.stream("hi"))).content
    wrong_key = SECRET[::-1]
    bad = make_llm(server, api_key=wrong_key)
    with pytest.raises(AuthenticationError) as info:
        bad.invoke("hi")
    with pytest.raises(AuthenticationError) as stream_info:
        list(bad.stream("hi"))
    texts = [
        str(info.value),
        repr(info.value),
        info.value.body,
        str(stream_info.value),
        repr(good),
        str(good),
        repr(bad),
        caplog.text,
        str(good.endpoint_config),
    ]
    for text in texts:
        assert SECRET not in text
        assert wrong_key not in text
    assert any(r.levelno == logging.DEBUG for r in caplog.records)  # logging was on


async def test_model_copy_with_a_new_base_url_talks_to_the_new_server(
    make_emulator: Any,
) -> None:
    first, second = make_emulator(), make_emulator()
    a = make_llm(first)
    assert (await a.ainvoke("hi")).text
    b = a.model_copy(update={"base_url": second.base_url + "/v1", "timeout": 3})
    before_first, before_second = first.chat_requests, second.chat_requests
    assert (await b.ainvoke("hi")).text
    assert "".join([c.text async for c in b.astream("hi")])
    assert b.invoke("hi").text
    assert second.chat_requests - before_second == 3
    assert first.chat_requests == before_first
    assert b.pool.config.timeout == 3.0
    a.base_url = second.base_url + "/v1"  # assignment too
    assert a.invoke("hi").text
    assert second.chat_requests - before_second == 4
    assert first.chat_requests == before_first


def test_ollama_provider_never_sends_the_openai_key(
    make_emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = make_emulator(EmulatorConfig(api_key=SECRET))
    monkeypatch.delenv("FASTPIPE_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    assert make_llm(server).invoke("hi").text  # openai: the OpenAI key is used
    with pytest.raises(AuthenticationError):
        make_llm(server, "ollama").invoke("hi")  # ollama: no key sent at all
