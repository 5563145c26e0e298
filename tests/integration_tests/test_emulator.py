"""Over-the-wire tests of the emulator (plain httpx against real servers on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import httpx
import jsonschema
import pytest

from langchain_fastpipe.emulator import (
    EmulatorApp,
    EmulatorConfig,
    EmulatorServer,
    Fault,
    ModelProfile,
)
from langchain_fastpipe.emulator._app import (
    apply_limits,
    choose_tool,
    instance_from_schema,
    split_tokens,
)
from langchain_fastpipe.errors import ConfigError

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "tell me about the river"}]

WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 3},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "unit": {"enum": ["c", "f"]},
        "verbose": {"type": "boolean"},
        "ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 3},
        "where": {"$ref": "#/$defs/Place"},
        "note": {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]},
    },
    "required": ["city", "days", "unit", "where"],
    "additionalProperties": False,
    "$defs": {
        "Place": {
            "type": "object",
            "properties": {
                "lat": {"type": "number", "minimum": -90, "maximum": 90},
                "lon": {"type": "number", "minimum": -180, "maximum": 180},
                "kind": {"const": "point"},
            },
            "required": ["lat", "lon", "kind"],
        }
    },
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                      "parameters": WEATHER_SCHEMA}},
    {"type": "function", "function": {"name": "lookup", "description": "Look up",
                                      "parameters": {"type": "object",
                                                     "properties": {"q": {"type": "string"}},
                                                     "required": ["q"]}}},
]  # fmt: skip


def sse_events(text: str) -> list[Any]:
    """Data payloads of an SSE body; '[DONE]' kept as a string."""
    out: list[Any] = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def chat(client: httpx.Client, **extra: Any) -> httpx.Response:
    return client.post(CHAT, json={"model": "m", "messages": MESSAGES, **extra})


def read_stream(
    client: httpx.Client, received: list[str], *, http_version: str = "", **kwargs: Any
) -> None:
    """Stream a chat completion, appending each non-empty line to ``received``."""
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    with client.stream("POST", CHAT, json=body, **kwargs) as r:
        assert r.status_code == 200
        if http_version:
            assert r.http_version == http_version
        received.extend(line for line in r.iter_lines() if line)


@pytest.fixture
def client(emulator: EmulatorServer) -> httpx.Client:
    with httpx.Client(base_url=emulator.base_url, timeout=10) as c:
        yield c


# --------------------------------------------------------------------------- OpenAI


def test_openai_json_reply_usage_and_determinism(client: httpx.Client) -> None:
    first = chat(client).json()
    second = chat(client).json()
    choice = first["choices"][0]
    assert first["object"] == "chat.completion"
    assert choice["finish_reason"] == "stop"
    content = choice["message"]["content"]
    assert content
    assert content == second["choices"][0]["message"]["content"]
    assert first["usage"] == {"prompt_tokens": 5, "completion_tokens": 12, "total_tokens": 17}
    other = client.post(CHAT, json={"model": "m", "messages": [
        {"role": "user", "content": "something else"}]}).json()  # fmt: skip
    assert other["choices"][0]["message"]["content"] != content


def test_openai_sse_concatenation_equals_json_and_usage_chunk(client: httpx.Client) -> None:
    whole = chat(client).json()["choices"][0]["message"]["content"]
    response = chat(client, stream=True, stream_options={"include_usage": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 12
    deltas = [e["choices"][0]["delta"] for e in events[:-2]]
    assert deltas[0]["role"] == "assistant"
    assert "".join(d.get("content") or "" for d in deltas) == whole
    assert events[-3]["choices"][0]["finish_reason"] == "stop"
    plain = sse_events(chat(client, stream=True).text)
    assert all(e == "[DONE]" or e["choices"] for e in plain)  # no usage chunk unless asked


def test_max_tokens_and_stop(client: httpx.Client) -> None:
    full = chat(client).json()["choices"][0]["message"]["content"]
    limited = chat(client, max_tokens=3).json()
    assert limited["choices"][0]["finish_reason"] == "length"
    assert limited["usage"]["completion_tokens"] == 3
    assert limited["choices"][0]["message"]["content"] == "".join(split_tokens(full)[:3])
    newer = chat(client, max_completion_tokens=2).json()
    assert newer["usage"]["completion_tokens"] == 2
    stop_word = full.split()[4]
    stopped = chat(client, stop=[stop_word]).json()["choices"][0]
    assert stopped["finish_reason"] == "stop"
    assert stopped["message"]["content"] == full[: full.index(stop_word)]
    assert stop_word not in stopped["message"]["content"]


def test_models_health_tags(client: httpx.Client, emulator: EmulatorServer) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert "emulator" in ids
    assert [m["name"] for m in client.get("/api/tags").json()["models"]] == ids
    assert client.get("/nope").status_code == 404


# --------------------------------------------------------------------------- Ollama


def test_ollama_chat_ndjson_and_json(client: httpx.Client) -> None:
    body = {"model": "llama", "messages": MESSAGES, "options": {"num_ctx": 2048}}
    streamed = client.post("/api/chat", json=body)  # stream defaults to true
    lines = [json.loads(line) for line in streamed.text.splitlines()]
    assert all(not line["done"] for line in lines[:-1])
    final = lines[-1]
    assert final["done"] is True
    assert final["done_reason"] == "stop"
    assert final["prompt_eval_count"] == 5
    assert final["eval_count"] == 12
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[key], int)
    text = "".join(line["message"]["content"] for line in lines)
    whole = client.post("/api/chat", json={**body, "stream": False}).json()
    assert whole["done"] is True
    assert whole["message"]["content"] == text


def test_ollama_options_limits_and_generate(client: httpx.Client) -> None:
    body = {"model": "llama", "messages": MESSAGES, "stream": False}
    full = client.post("/api/chat", json=body).json()["message"]["content"]
    short = client.post("/api/chat", json={**body, "options": {"num_predict": 4}}).json()
    assert short["done_reason"] == "length"
    assert short["eval_count"] == 4
    word = full.split()[3]
    stopped = client.post("/api/chat", json={**body, "options": {"stop": [word]}}).json()
    assert stopped["message"]["content"] == full[: full.index(word)]
    gen = client.post("/api/generate", json={"model": "llama", "prompt": "hi", "stream": False})
    assert gen.json()["response"]
    assert gen.json()["done"] is True


def test_ollama_load_only_ps_and_recorded_options(make_emulator: Any) -> None:
    server = make_emulator()
    with httpx.Client(base_url=server.base_url) as c:
        warm = {"model": "gemma", "prompt": "", "options": {"num_ctx": 4096}, "keep_alive": "10m"}
        lines = c.post("/api/generate", json=warm).text.splitlines()
        assert json.loads(lines[-1])["done_reason"] == "load"
        assert [m["name"] for m in c.get("/api/ps").json()["models"]] == ["gemma"]
        c.post("/api/chat", json={"model": "gemma", "messages": MESSAGES,
                                   "options": {"num_ctx": 4096}, "keep_alive": "10m"})  # fmt: skip
        assert server.bodies("/api/generate")[0]["options"] == server.bodies("/api/chat")[0][
            "options"]  # fmt: skip
        assert server.bodies("/api/generate")[0]["keep_alive"] == "10m"
        gone = c.post("/api/generate", json={"model": "gemma", "prompt": "", "keep_alive": 0,
                                             "stream": False}).json()  # fmt: skip
        assert gone["done_reason"] == "unload"
        assert c.get("/api/ps").json()["models"] == []
    assert server.load_counts == {"gemma": 1}


# --------------------------------------------------------------------------- tools and JSON


def test_openai_tool_call_is_schema_valid(client: httpx.Client) -> None:
    reply = chat(client, tools=TOOLS, tool_choice="auto").json()
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    assert call["id"].startswith("call_")
    jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER_SCHEMA)
    named = chat(
        client, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "lookup"}}
    ).json()
    args = json.loads(named["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])
    jsonschema.validate(args, TOOLS[1]["function"]["parameters"])
    none = chat(client, tools=TOOLS, tool_choice="none").json()["choices"][0]
    assert none["finish_reason"] == "stop"
    assert none["message"]["content"]


def test_auto_tool_choice_ends_agent_loop(client: httpx.Client) -> None:
    messages = [*MESSAGES, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]  # fmt: skip
    reply = client.post(CHAT, json={"model": "m", "messages": messages, "tools": TOOLS}).json()
    assert reply["choices"][0]["finish_reason"] == "stop"
    forced = client.post(CHAT, json={"model": "m", "messages": messages, "tools": TOOLS,
                                     "tool_choice": "required"}).json()  # fmt: skip
    assert forced["choices"][0]["finish_reason"] == "tool_calls"


def test_streamed_tool_call_openai_delta_format(client: httpx.Client) -> None:
    whole = chat(client, tools=TOOLS).json()["choices"][0]["message"]["tool_calls"][0]
    events = sse_events(chat(client, tools=TOOLS, stream=True).text)
    calls = [e["choices"][0]["delta"].get("tool_calls") for e in events[:-1]]
    calls = [c[0] for c in calls if c]
    assert calls[0]["id"] == whole["id"]
    assert calls[0]["function"]["name"] == "get_weather"
    assert all("id" not in c and "name" not in c["function"] for c in calls[1:])
    assert len(calls) > 2  # arguments really arrive in pieces
    assert "".join(c["function"]["arguments"] for c in calls) == whole["function"]["arguments"]
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_ollama_tool_calls_have_object_arguments(client: httpx.Client) -> None:
    body = {"model": "llama", "messages": MESSAGES, "tools": TOOLS, "stream": False}
    msg = client.post("/api/chat", json=body).json()["message"]
    args = msg["tool_calls"][0]["function"]["arguments"]
    assert isinstance(args, dict)
    jsonschema.validate(args, WEATHER_SCHEMA)
    lines = [json.loads(x) for x in client.post("/api/chat", json={**body, "stream": True}).text
             .splitlines()]  # fmt: skip
    assert lines[0]["message"]["tool_calls"][0]["function"]["arguments"] == args
    assert lines[-1]["done"] is True


def test_structured_output(client: httpx.Client) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER_SCHEMA}}
    content = chat(client, response_format=fmt).json()["choices"][0]["message"]["content"]
    jsonschema.validate(json.loads(content), WEATHER_SCHEMA)
    events = sse_events(chat(client, response_format=fmt, stream=True).text)
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1]) == content
    obj = chat(client, response_format={"type": "json_object"}).json()
    assert isinstance(json.loads(obj["choices"][0]["message"]["content"]), dict)
    ollama = client.post("/api/chat", json={"model": "l", "messages": MESSAGES, "stream": False,
                                            "format": WEATHER_SCHEMA}).json()  # fmt: skip
    jsonschema.validate(json.loads(ollama["message"]["content"]), WEATHER_SCHEMA)
    plain_json = client.post(
        "/api/chat", json={"model": "l", "messages": MESSAGES, "stream": False, "format": "json"}
    ).json()
    assert isinstance(json.loads(plain_json["message"]["content"]), dict)


# --------------------------------------------------------------------------- cold start


async def test_cold_start_happens_once_for_concurrent_first_requests(make_emulator: Any) -> None:
    config = EmulatorConfig(models={"big": ModelProfile(load_seconds=0.3)})
    server = make_emulator(config)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
        body = {"model": "big", "messages": MESSAGES}
        replies = await asyncio.gather(*(c.post(CHAT, json=body) for _ in range(6)))
        assert all(r.status_code == 200 for r in replies)
        assert server.load_counts == {"big": 1}
        assert server.loaded_models == {"big"}
        await c.post(CHAT, json=body)
        assert server.load_counts == {"big": 1}
        server.unload("big")
        assert server.loaded_models == set()
        await c.post(CHAT, json=body)
        assert server.load_counts == {"big": 2}


async def test_timing_knobs_with_injected_sleep() -> None:
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    profile = ModelProfile(load_seconds=5, first_token_seconds=1, inter_token_seconds=0.5,
                           answer_tokens=4, ttft_tail_rate=1.0, ttft_tail_seconds=7)  # fmt: skip
    app = EmulatorApp(EmulatorConfig(default=profile), sleep=fake_sleep)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://emu") as c:
        r = await c.post(CHAT, json={"model": "m", "messages": MESSAGES, "stream": True})
        assert r.status_code == 200
    # load, first token (1 + tail 7), then one gap before each later token (4 tokens)
    assert sleeps == [5, 8, 0.5, 0.5, 0.5]
    sleeps.clear()
    async with httpx.AsyncClient(transport=transport, base_url="http://emu") as c:
        r = await c.post("/api/chat", json={"model": "m", "messages": MESSAGES})
        assert r.status_code == 200
    assert sleeps == [8, 0.5, 0.5, 0.5]  # already loaded
    sleeps.clear()
    async with httpx.AsyncClient(transport=transport, base_url="http://emu") as c:
        r = await c.post(CHAT, json={"model": "m", "messages": MESSAGES})
    assert sleeps == [8 + 4 * 0.5]  # a JSON reply waits for the whole generation


# --------------------------------------------------------------------------- faults


def test_status_and_rate_limit_faults(client: httpx.Client, emulator: EmulatorServer) -> None:
    emulator.inject(Fault.status(503), times=2)
    assert chat(client).status_code == 503
    assert "error" in chat(client).json()
    assert chat(client).status_code == 200
    emulator.inject(Fault.rate_limit(retry_after="2", retry_after_ms=1500))
    limited = chat(client)
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "2"
    assert limited.headers["retry-after-ms"] == "1500"
    date = "Wed, 21 Oct 2026 07:28:00 GMT"
    emulator.inject(Fault.rate_limit(retry_after=date))
    assert chat(client).headers["retry-after"] == date
    emulator.inject(Fault.status(500), model="other")
    assert chat(client).status_code == 200  # fault waits for its model
    assert client.post("/api/chat", json={"model": "other", "messages": MESSAGES}).json() == {
        "error": "emulated failure"}  # fmt: skip


def test_reset_mid_stream_is_an_error_after_n_chunks(
    client: httpx.Client, emulator: EmulatorServer
) -> None:
    emulator.inject(Fault.reset_mid_stream(after_chunks=3))
    received: list[str] = []
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        read_stream(client, received)
    assert len(received) == 3
    assert chat(client).status_code == 200  # the pool recovers on a new connection


def test_reset_mid_json_body_and_before_headers(
    client: httpx.Client, emulator: EmulatorServer
) -> None:
    emulator.inject(Fault.reset_mid_stream())
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        chat(client)
    emulator.inject(Fault.reset_before_headers())
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        chat(client)


def test_reset_over_tls_h2(emulator_h2: EmulatorServer) -> None:
    emulator_h2.inject(Fault.reset_mid_stream(after_chunks=2))
    with httpx.Client(base_url=emulator_h2.base_url, http2=True,
                      verify=emulator_h2.client_ssl_context()) as c:  # fmt: skip
        received: list[str] = []
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            read_stream(c, received, http_version="HTTP/2")
        assert len(received) == 2


def test_malformed_and_truncated(client: httpx.Client, emulator: EmulatorServer) -> None:
    emulator.inject(Fault.malformed_chunk(after_chunks=2))
    text = chat(client, stream=True).text
    with pytest.raises(json.JSONDecodeError):
        sse_events(text)
    emulator.inject(Fault.truncated_json())
    response = chat(client)
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        response.json()
    emulator.inject(Fault.malformed_chunk(after_chunks=1))
    lines = client.post("/api/chat", json={"model": "l", "messages": MESSAGES}).text.splitlines()
    with pytest.raises(json.JSONDecodeError):
        [json.loads(line) for line in lines]


def test_hang_and_slow_drip_trip_read_timeouts(
    client: httpx.Client, emulator: EmulatorServer
) -> None:
    # The read timeout (1 s) is well under the fault's delay (3 s) and well over what the
    # first chunk takes on a busy machine.
    emulator.inject(Fault.hang_before_first_byte(3))
    with pytest.raises(httpx.ReadTimeout):
        client.post(CHAT, json={"model": "m", "messages": MESSAGES, "stream": True},
                    timeout=httpx.Timeout(5, read=1.0))  # fmt: skip
    emulator.inject(Fault.slow_drip(3))
    received: list[str] = []
    with pytest.raises(httpx.ReadTimeout):
        read_stream(client, received, timeout=httpx.Timeout(5, read=1.0))
    assert len(received) == 1  # the first chunk comes at once, then the drip


def test_random_faults_are_seeded(make_emulator: Any) -> None:
    def pattern(seed: int) -> list[int]:
        profile = ModelProfile(fail_rate=0.5, fail_fault=Fault.status(502))
        server = make_emulator(EmulatorConfig(default=profile, seed=seed))
        with httpx.Client(base_url=server.base_url) as c:
            return [chat(c).status_code for _ in range(16)]

    first, again = pattern(7), pattern(7)
    assert first == again
    assert set(first) == {200, 502}


def test_auth_strict_models_and_context(make_emulator: Any) -> None:
    config = EmulatorConfig(api_key="sk-secret", strict_models=True,
                            models={"small": ModelProfile(context_tokens=3)})  # fmt: skip
    server = make_emulator(config)
    with httpx.Client(base_url=server.base_url) as c:
        assert c.post(CHAT, json={"model": "small", "messages": MESSAGES}).status_code == 401
        auth = {"Authorization": "Bearer sk-secret"}
        r = c.post(CHAT, json={"model": "small", "messages": MESSAGES}, headers=auth)
        assert r.status_code == 400
        assert "maximum context length" in r.text
        assert c.post(CHAT, json={"model": "ghost", "messages": MESSAGES},
                      headers=auth).status_code == 404  # fmt: skip
        assert "sk-secret" not in repr(server.recorded(CHAT))
    assert "sk-secret" not in repr(config)


# --------------------------------------------------------------------------- connections, h2


def test_keep_alive_counts_one_connection(make_emulator: Any) -> None:
    server = make_emulator()
    with httpx.Client(base_url=server.base_url) as c:
        for _ in range(10):
            assert chat(c).status_code == 200
    assert server.connections_opened == 1
    assert server.requests == 10


def test_h1_connection_close_after_n_requests(make_emulator: Any) -> None:
    server = make_emulator(EmulatorConfig(goaway_after=5))
    with httpx.Client(base_url=server.base_url) as c:
        closes = sum(chat(c).headers.get("connection") == "close" for _ in range(12))
    assert closes == 2
    assert server.connections_opened == 3


def test_h2_goaway_after_n_requests_opens_new_connection(make_emulator: Any) -> None:
    server = make_emulator(EmulatorConfig(goaway_after=5), http2=True, tls=True)
    goaways = 0
    ctx = server.client_ssl_context()
    with httpx.Client(base_url=server.base_url, http2=True, verify=ctx) as c:
        for _ in range(12):
            try:
                response = chat(c)
            except httpx.RemoteProtocolError as exc:  # GOAWAY: the unanswered stream is resent
                goaways += "ConnectionTerminated" in str(exc)
                response = chat(c)
            assert response.status_code == 200
            assert response.http_version == "HTTP/2"
    assert goaways == 2
    assert server.connections_opened == 3


async def test_tls_alpn_h2_and_h1_fallback(emulator_h2: EmulatorServer) -> None:
    assert emulator_h2.ca_cert_path
    assert emulator_h2.base_url.startswith("https://")
    async with httpx.AsyncClient(base_url=emulator_h2.base_url, http2=True,
                                 verify=emulator_h2.client_ssl_context()) as c:  # fmt: skip
        replies = await asyncio.gather(*(c.get("/health") for _ in range(5)))
        assert {r.http_version for r in replies} == {"HTTP/2"}
    async with httpx.AsyncClient(base_url=emulator_h2.base_url,
                                 verify=emulator_h2.client_ssl_context()) as c:  # fmt: skip
        assert (await c.get("/health")).http_version == "HTTP/1.1"


def test_h2c_prior_knowledge(emulator: EmulatorServer) -> None:
    with httpx.Client(base_url=emulator.base_url, http1=False, http2=True) as c:
        response = chat(c, stream=True)
        assert response.http_version == "HTTP/2"
        assert sse_events(response.text)[-1] == "[DONE]"


async def test_async_context_manager_and_clean_stop() -> None:
    async with EmulatorServer() as server:
        port = server.port
        async with httpx.AsyncClient(base_url=server.base_url) as c:
            assert (await c.get("/health")).status_code == 200
            thread = server._thread
    assert thread is not None
    assert not thread.is_alive()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_stop_with_stream_in_flight_is_quick(make_emulator: Any) -> None:
    server = make_emulator(EmulatorConfig(default=ModelProfile(inter_token_seconds=30)))
    with (
        httpx.Client(base_url=server.base_url, timeout=10) as c,
        c.stream("POST", CHAT, json={"model": "m", "messages": MESSAGES, "stream": True}) as r,
    ):
        lines = r.iter_lines()
        next(lines)
        thread = server._thread
        server.stop()  # must not wait for the 30 s stream
        assert thread is not None
        assert not thread.is_alive()
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            list(lines)


# --------------------------------------------------------------------------- pure helpers


def test_split_tokens_roundtrip() -> None:
    for text in ("Alpha beta  gamma.", "", '{"a": [1, 2]}', "x \n"):
        assert "".join(split_tokens(text)) == text


def test_apply_limits() -> None:
    tokens = ["One", " two", " three", " four"]
    assert apply_limits(tokens, max_tokens=2, stop=[]) == (["One", " two"], "length")
    assert apply_limits(tokens, max_tokens=None, stop=["ree"]) == (["One", " two", " th"], "stop")
    assert apply_limits(tokens, max_tokens=9, stop=["zzz"]) == (tokens, "stop")
    assert apply_limits(tokens, max_tokens=0, stop=[]) == ([], "length")


def test_choose_tool_rules() -> None:
    fns = [t["function"] for t in TOOLS]
    user = [{"role": "user", "content": "please lookup cats"}]
    assert choose_tool(TOOLS, None, user) == fns[1]  # named in the user message
    assert choose_tool(TOOLS, "auto", MESSAGES) == fns[0]
    assert choose_tool(TOOLS, "none", MESSAGES) is None
    assert choose_tool(None, "required", MESSAGES) is None
    assert choose_tool(TOOLS, "auto", [*MESSAGES, {"role": "tool", "content": "x"}]) is None


def test_instance_from_schema_variety() -> None:
    import random

    schemas: list[dict[str, Any]] = [
        WEATHER_SCHEMA,
        {"type": "array", "items": {"type": "integer", "multipleOf": 5, "minimum": 3}},
        {"allOf": [{"type": "object", "properties": {"a": {"type": "string"}},
                    "required": ["a"]}, {"properties": {"b": {"type": ["null", "number"]}}}]},
        {"type": "string", "minLength": 40, "maxLength": 50},
        {"type": "object", "properties": {"n": {"$ref": "#"}}},  # recursive
    ]  # fmt: skip
    for schema in schemas:
        for seed in range(5):
            jsonschema.validate(instance_from_schema(schema, random.Random(seed)), schema)


def test_bad_knobs_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="fail_rate"):
        ModelProfile(fail_rate=2)
    with pytest.raises(ConfigError, match="status_code"):
        Fault.status(200)
    with pytest.raises(ConfigError, match="goaway_after"):
        EmulatorServer(EmulatorConfig(goaway_after=0))


def test_cli_main_starts_and_stops(capsys: pytest.CaptureFixture[str]) -> None:
    import threading

    from langchain_fastpipe.emulator.__main__ import build_parser, config_from_args, main

    args = build_parser().parse_args(["--port", "0", "--load-seconds", "2", "--goaway-after", "7"])
    config = config_from_args(args)
    assert config.default.load_seconds == 2
    assert config.goaway_after == 7
    stop = threading.Event()
    stop.set()
    assert main(["--port", "0", "--http2", "--tls"], stop=stop) == 0
    out = capsys.readouterr().out
    assert "https://127.0.0.1:" in out
    assert "CA certificate" in out


def test_tool_arguments_come_from_the_prompt_when_it_states_them(emulator: Any) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string"},
                        "days": {"type": "integer"},
                        "units": {"type": "string", "enum": ["metric", "imperial"]},
                    },
                    "required": ["city", "days"],
                },
            },
        }
    ]

    def args_for(text: str) -> dict[str, Any]:
        body = {"model": "m", "messages": [{"role": "user", "content": text}], "tools": tools}
        reply = httpx.post(f"{emulator.base_url}/v1/chat/completions", json=body, timeout=10)
        call = reply.json()["choices"][0]["message"]["tool_calls"][0]
        return dict(json.loads(call["function"]["arguments"]))

    # A written call fills the parameters in order; quoted text and numbers otherwise.
    assert args_for("Please run lookup('Zürich', 4).")["days"] == 4
    assert args_for("Please run lookup('Zürich', 4).")["city"] == "Zürich"
    stated = args_for("Weather for 'São Paulo' over the next 3 days?")
    assert stated["city"] == "São Paulo"
    assert stated["days"] == 3
    # Nothing stated: schema-valid generated values (enum respected).
    generated = args_for("What's the weather?")
    assert isinstance(generated["days"], int)
    assert generated.get("units", "metric") in ("metric", "imperial")


def test_json_mode_answers_with_the_keys_the_prompt_asks_for(emulator: Any) -> None:
    def content_for(text: str) -> dict[str, Any]:
        body = {
            "model": "m",
            "messages": [{"role": "user", "content": text}],
            "response_format": {"type": "json_object"},
        }
        reply = httpx.post(f"{emulator.base_url}/v1/chat/completions", json=body, timeout=10)
        return dict(json.loads(reply.json()["choices"][0]["message"]["content"]))

    asked = content_for("A joke as JSON with 'setup' and 'punchline' keys.")
    assert sorted(asked) == ["punchline", "setup"]
    assert all(isinstance(v, str) and v for v in asked.values())
    assert list(content_for("Any JSON, please.")) == ["answer"]
