"""The fault matrix: ChatFastpipe against the emulator's faults, over real sockets.

Every case runs for both providers (OpenAI SSE, Ollama NDJSON), HTTP/1.1 over plain http and
HTTP/2 over TLS, and the four call styles (``astream``, ``ainvoke``, ``stream``, ``invoke``)
where it applies. The emulator is deterministic, so the text of a clean ``ainvoke`` of the same
request is the reference: a call that succeeds must return exactly it, and a stream that fails
must have delivered exactly a prefix of it (no token twice, nothing retried after the first
byte).

Retry back-offs go through a recording sleep (the pool's injectable ``sleep``), so nothing
here really waits for a back-off and the advised ``Retry-After`` delays can be asserted.
"""

from __future__ import annotations

import asyncio
import email.utils
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

import langchain_fastpipe.chat_models as chat_models_module
from langchain_fastpipe.chat_models import ChatFastpipe
from langchain_fastpipe.emulator import EmulatorConfig, EmulatorServer, Fault
from langchain_fastpipe.errors import (
    EndpointConnectError,
    EndpointTimeoutError,
    FirstChunkTimeoutError,
    ProtocolViolationError,
    ResponseTooLargeError,
    ServerError,
    TransportError,
)
from langchain_fastpipe.pipeline import RankedFallbacks
from langchain_fastpipe.streaming import guard_stream
from langchain_fastpipe.transport import EndpointConfig, PooledClient

MakeEmulator = Callable[..., EmulatorServer]

PROMPT = "tell me about the harbor"
PROVIDERS = ("openai", "ollama")
PROTOCOLS = ("h1", "h2")
MODES = ("astream", "ainvoke", "stream", "invoke")
STREAM_MODES = ("astream", "stream")
INVOKE_MODES = ("ainvoke", "invoke")


# --------------------------------------------------------------------------- helpers


class RecordingSleep:
    """An injectable sleep (async and sync) that records delays and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)

    def sync(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> RecordingSleep:
    """Route ChatFastpipe's pools through PooledClients whose back-off sleep is recorded.

    Each test gets its own pools (and so its own circuit breakers), one per endpoint config.
    """
    recorder = RecordingSleep()
    pools: dict[EndpointConfig, PooledClient] = {}

    def fake_get_pool(config: EndpointConfig) -> PooledClient:
        pool = pools.get(config)
        if pool is None:
            pool = pools[config] = PooledClient(config, sleep=recorder, sync_sleep=recorder.sync)
        return pool

    monkeypatch.setattr(chat_models_module, "get_pool", fake_get_pool)
    return recorder


def new_server(
    make_emulator: MakeEmulator, proto: str, config: EmulatorConfig | None = None
) -> EmulatorServer:
    """A fresh emulator: plain HTTP/1.1 (``h1``) or TLS offering h2 (``h2``)."""
    h2 = proto == "h2"
    return make_emulator(config, http2=h2, tls=h2)


def model_for(server: EmulatorServer, provider: str, **kwargs: Any) -> ChatFastpipe:
    """A ChatFastpipe talking to ``server`` with ``provider``'s wire format."""
    base = server.openai_base_url if provider == "openai" else server.base_url
    kwargs.setdefault("verify", server.ca_cert_path or True)
    return ChatFastpipe(provider=provider, model="emu", base_url=base, **kwargs)


@dataclass
class Outcome:
    """What the caller got: the text pieces received (in order) and the error, if any."""

    pieces: list[str]
    error: BaseException | None

    @property
    def text(self) -> str:
        return "".join(self.pieces)


async def run(model: ChatFastpipe, mode: str, prompt: str = PROMPT) -> Outcome:
    """Call ``model`` in ``mode``, keeping what arrived before any error."""
    pieces: list[str] = []
    try:
        if mode == "astream":
            async for chunk in model.astream(prompt):
                pieces.append(chunk.text)
        elif mode == "stream":
            for chunk in model.stream(prompt):
                pieces.append(chunk.text)
        elif mode == "ainvoke":
            pieces.append((await model.ainvoke(prompt)).text)
        else:
            pieces.append(model.invoke(prompt).text)
    except Exception as exc:
        return Outcome(pieces, exc)
    return Outcome(pieces, None)


async def reference(model: ChatFastpipe, prompt: str = PROMPT) -> str:
    """The clean answer (the emulator is deterministic)."""
    text = (await model.ainvoke(prompt)).text
    assert text  # a reference that is empty could not tell anything apart
    return text


@dataclass
class Armed:
    """A fresh emulator, a model on it, its clean reference text, and the request count."""

    server: EmulatorServer
    model: ChatFastpipe
    ref: str
    before: int

    @property
    def requests(self) -> int:
        """Chat requests the server received since it was armed."""
        return self.server.chat_requests - self.before


async def arm(
    make_emulator: MakeEmulator,
    proto: str,
    provider: str,
    fault: Fault | None = None,
    *,
    times: int = 1,
    config: EmulatorConfig | None = None,
    warm: bool = True,
    **model_kwargs: Any,
) -> Armed:
    """Start a server, build a model, take the reference (if ``warm``), then inject ``fault``."""
    server = new_server(make_emulator, proto, config)
    model = model_for(server, provider, **model_kwargs)
    # A short ``timeout`` is the subject of its test, not of the reference call: on a busy
    # machine the reference could exceed it, so it runs on a model with default timeouts.
    ref_model = model if "timeout" not in model_kwargs else model_for(server, provider)
    ref = await reference(ref_model) if warm else ""
    before = server.chat_requests
    if fault is not None:
        server.inject(fault, times=times)
    return Armed(server, model, ref, before)


def assert_clean_prefix(outcome: Outcome, ref: str) -> None:
    """The text received is a strict prefix of ``ref``, built without repeating a token."""
    assert ref.startswith(outcome.text), (outcome.text, ref)
    assert outcome.text != ref
    nonempty = [p for p in outcome.pieces if p]
    rebuilt = ""
    for piece in nonempty:  # each piece continues where the previous one stopped
        assert ref.startswith(rebuilt + piece)
        rebuilt += piece


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


matrix = pytest.mark.parametrize(
    ("provider", "proto", "mode"),
    [(p, t, m) for p in PROVIDERS for t in PROTOCOLS for m in MODES],
)
stream_matrix = pytest.mark.parametrize(
    ("provider", "proto", "mode"),
    [(p, t, m) for p in PROVIDERS for t in PROTOCOLS for m in STREAM_MODES],
)
invoke_matrix = pytest.mark.parametrize(
    ("provider", "proto", "mode"),
    [(p, t, m) for p in PROVIDERS for t in PROTOCOLS for m in INVOKE_MODES],
)


# --------------------------------------------------------------------------- connection faults


@matrix
async def test_connection_refused_is_connect_error_after_retries(
    sleeps: RecordingSleep, provider: str, proto: str, mode: str
) -> None:
    scheme = "https" if proto == "h2" else "http"
    base = f"{scheme}://127.0.0.1:{free_port()}" + ("/v1" if provider == "openai" else "")
    model = ChatFastpipe(provider=provider, model="emu", base_url=base, max_retries=2)
    outcome = await run(model, mode)
    assert isinstance(outcome.error, EndpointConnectError), outcome.error
    assert outcome.text == ""
    assert len(sleeps.delays) == 2  # 1 + max_retries attempts, a back-off before each retry
    assert "127.0.0.1" in str(outcome.error)


@matrix
async def test_reset_before_headers_is_retried_transparently(
    make_emulator: MakeEmulator, sleeps: RecordingSleep, provider: str, proto: str, mode: str
) -> None:
    a = await arm(make_emulator, proto, provider, Fault.reset_before_headers())
    outcome = await run(a.model, mode)
    assert outcome.error is None, outcome.error
    assert outcome.text == a.ref
    assert a.requests == 2


@stream_matrix
async def test_reset_mid_stream_is_typed_error_with_clean_prefix(
    make_emulator: MakeEmulator, sleeps: RecordingSleep, provider: str, proto: str, mode: str
) -> None:
    a = await arm(make_emulator, proto, provider, Fault.reset_mid_stream(after_chunks=3))
    outcome = await run(a.model, mode)
    assert isinstance(outcome.error, TransportError), outcome.error
    assert_clean_prefix(outcome, a.ref)
    assert outcome.text  # some tokens did arrive before the reset
    assert a.requests == 1  # never retried after the first byte
    assert sleeps.delays == []


@invoke_matrix
async def test_reset_mid_body_of_json_reply_is_retried(
    make_emulator: MakeEmulator, sleeps: RecordingSleep, provider: str, proto: str, mode: str
) -> None:
    # A non-streamed reply reaches the caller only whole, so a reset while reading it is
    # still "before the first byte" for the caller and may be retried.
    a = await arm(make_emulator, proto, provider, Fault.reset_mid_stream())
    outcome = await run(a.model, mode)
    assert outcome.error is None, outcome.error
    assert outcome.text == a.ref
    assert a.requests == 2


# --------------------------------------------------------------------------- status faults


@pytest.mark.parametrize("status", [500, 502, 503])
@matrix
async def test_5xx_once_is_retried_then_succeeds(
    make_emulator: MakeEmulator,
    sleeps: RecordingSleep,
    provider: str,
    proto: str,
    mode: str,
    status: int,
) -> None:
    a = await arm(make_emulator, proto, provider, Fault.status(status))
    outcome = await run(a.model, mode)
    assert outcome.error is None, outcome.error
    assert outcome.text == a.ref
    assert a.requests == 2
    assert len(sleeps.delays) == 1


@pytest.mark.parametrize("status", [500, 502, 503])
@pytest.mark.parametrize("mode", MODES)
async def test_persistent_5xx_is_server_error(
    make_emulator: MakeEmulator, sleeps: RecordingSleep, mode: str, status: int
) -> None:
    a = await arm(
        make_emulator, "h1", "openai", Fault.status(status), times=3, warm=False, max_retries=2
    )
    outcome = await run(a.model, mode)
    assert isinstance(outcome.error, ServerError), outcome.error
    assert outcome.error.status_code == status
    assert outcome.text == ""
    assert a.requests == 3
    assert len(sleeps.delays) == 2


@matrix
async def test_429_retry_after_seconds_is_honoured(
    make_emulator: MakeEmulator, sleeps: RecordingSleep, provider: str, proto: str, mode: str
) -> None:
    a = await arm(make_emulator, proto, provider, Fault.rate_limit(retry_after="7"))
    outcome = await run(a.model, mode)
    assert outcome.error is None, outcome.error
    assert outcome.text == a.ref
    assert sleeps.delays == [pytest.approx(7.0)]


@pytest.mark.parametrize("proto", PROTOCOLS)
@pytest.mark.parametrize("mode", MODES)
async def test_429_retry_after_http_date_is_honoured(
    make_emulator: MakeEmulator, sleeps: RecordingSleep, proto: str, mode: str
) -> None:
    when = email.utils.formatdate(time.time() + 20, usegmt=True)
    a = await arm(make_emulator, proto, "openai", Fault.rate_limit(retry_after=when))
    outcome = await run(a.model, mode)
    assert outcome.error is None, outcome.error
    assert outcome.text == a.ref
    assert len(sleeps.delays) == 1
    # an HTTP date has 1 s resolution; the call took far less than 15 s
    assert 15.0 <= sleeps.delays[0] <= 21.0


# --------------------------------------------------------------------------- timing faults

HANG = 1.5
SHORT = 0.25  # a timeout that a HANG always exceeds
#: The backup's first chunk must come within this, on a busy 2-core machine too.
FALLBACK_FIRST_CHUNK = 2.0
LONG_HANG = 6.0  # always exceeds FALLBACK_FIRST_CHUNK


@matrix
async def test_hang_before_first_byte_is_timeout_error(
    make_emulator: MakeEmulator, sleeps: RecordingSleep, provider: str, proto: str, mode: str
) -> None:
    hang = Fault.hang_before_first_byte(HANG)
    a = await arm(make_emulator, proto, provider, hang, timeout=SHORT, max_retries=0)
    outcome = await run(a.model, mode)
    assert isinstance(outcome.error, EndpointTimeoutError), outcome.error
    assert outcome.text == ""
    assert a.requests == 1


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_read_timeout_is_not_retried(
    make_emulator: MakeEmulator, sleeps: RecordingSleep, provider: str
) -> None:
    # Documented policy (transport/_retry.py): a read timeout is not retried, the server
    # may still be working on the request.
    hang = Fault.hang_before_first_byte(HANG)
    a = await arm(make_emulator, "h1", provider, hang, timeout=SHORT, max_retries=2)
    outcome = await run(a.model, "astream")
    assert isinstance(outcome.error, EndpointTimeoutError), outcome.error
    assert a.requests == 1
    assert sleeps.delays == []


@pytest.mark.parametrize("proto", PROTOCOLS)
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_hang_is_first_chunk_timeout_under_guard_stream(
    make_emulator: MakeEmulator, sleeps: RecordingSleep, provider: str, proto: str
) -> None:
    a = await arm(make_emulator, proto, provider, Fault.hang_before_first_byte(HANG))
    model = a.model
    got: list[str] = []

    async def consume() -> None:
        async for chunk in guard_stream(model.astream(PROMPT), first_chunk_timeout=SHORT):
            got.append(chunk.text)

    with pytest.raises(FirstChunkTimeoutError):
        await consume()
    assert got == []
    pool = chat_models_module.get_pool(model.endpoint_config)
    assert pool.stats()["in_flight"] == 0  # the HTTP stream was closed


@pytest.mark.parametrize("proto", PROTOCOLS)
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_hang_falls_back_in_ranked_pipeline(
    make_emulator: MakeEmulator, sleeps: RecordingSleep, provider: str, proto: str
) -> None:
    # the backup is another pool config on the same server
    hang = Fault.hang_before_first_byte(LONG_HANG)
    a = await arm(make_emulator, proto, provider, hang, max_retries=1)
    ranked = RankedFallbacks(
        runnable=model_for(a.server, provider),
        fallbacks=[a.model],
        names=["slow", "backup"],
        first_chunk_timeout=FALLBACK_FIRST_CHUNK,
        optimized=False,
    )
    pieces = [chunk.text async for chunk in ranked.astream(PROMPT)]
    assert "".join(pieces) == a.ref


@matrix
async def test_slow_drip_completes_with_exact_text(
    make_emulator: MakeEmulator, sleeps: RecordingSleep, provider: str, proto: str, mode: str
) -> None:
    a = await arm(make_emulator, proto, provider, Fault.slow_drip(0.01))
    outcome = await run(a.model, mode)
    assert outcome.error is None, outcome.error
    assert outcome.text == a.ref


# --------------------------------------------------------------------------- protocol faults


@matrix
async def test_malformed_chunk_is_protocol_violation(
    make_emulator: MakeEmulator, sleeps: RecordingSleep, provider: str, proto: str, mode: str
) -> None:
    a = await arm(make_emulator, proto, provider, Fault.malformed_chunk(after_chunks=2))
    outcome = await run(a.model, mode)
    assert isinstance(outcome.error, ProtocolViolationError), outcome.error
    assert a.requests == 1  # not retried
    if outcome.pieces:
        assert_clean_prefix(outcome, a.ref)


@matrix
async def test_truncated_json_is_protocol_violation(
    make_emulator: MakeEmulator, sleeps: RecordingSleep, provider: str, proto: str, mode: str
) -> None:
    a = await arm(make_emulator, proto, provider, Fault.truncated_json())
    outcome = await run(a.model, mode)
    assert isinstance(outcome.error, ProtocolViolationError), outcome.error
    assert a.requests == 1
    if outcome.pieces:
        assert_clean_prefix(outcome, a.ref)


async def test_oversized_json_reply_is_response_too_large(make_emulator: MakeEmulator) -> None:
    server = new_server(make_emulator, "h1")
    pool = PooledClient(EndpointConfig(base_url=server.openai_base_url, max_response_bytes=64))
    payload = {"model": "emu", "messages": [{"role": "user", "content": PROMPT}]}
    try:
        before = server.chat_requests
        with pytest.raises(ResponseTooLargeError, match="max_response_bytes=64"):
            await pool.apost_json("/chat/completions", payload)
        with pytest.raises(ResponseTooLargeError):
            pool.post_json("/chat/completions", payload)
        assert server.chat_requests - before == 2  # not retried: the endpoint is alive
    finally:
        await pool.aclose()


# --------------------------------------------------------------------------- connection churn


GOAWAY_EVERY = 10
WAVES = 10
WAVE = 8


@pytest.mark.parametrize("proto", PROTOCOLS)
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_goaway_every_n_requests_loses_nothing(
    make_emulator: MakeEmulator, sleeps: RecordingSleep, provider: str, proto: str
) -> None:
    goaway = EmulatorConfig(goaway_after=GOAWAY_EVERY)
    a = await arm(
        make_emulator,
        proto,
        provider,
        config=goaway,
        max_connections=4,
        max_keepalive_connections=4,
    )
    outcomes: list[Outcome] = []
    for _ in range(WAVES):  # waves of concurrent calls, streams and JSON mixed
        wave = [run(a.model, "astream" if i % 2 else "ainvoke") for i in range(WAVE)]
        outcomes += await asyncio.gather(*wave)
    outcomes += [await run(a.model, "stream" if i % 2 else "invoke") for i in range(12)]
    errors = [o.error for o in outcomes if o.error is not None]
    assert errors == []
    assert all(o.text == a.ref for o in outcomes)
    total = WAVES * WAVE + 13
    assert a.server.connections_opened >= total // GOAWAY_EVERY  # the server did close them


@pytest.mark.parametrize("proto", ["h1", "h2c"])
@pytest.mark.parametrize("mode", MODES)
async def test_pool_recovers_after_server_restart(
    sleeps: RecordingSleep, proto: str, mode: str
) -> None:
    h2c = proto == "h2c"
    first = EmulatorServer(http2=h2c).start()
    port = first.port
    try:
        model = model_for(first, "openai", http2_prior_knowledge=h2c)
        ref = await reference(model)
        assert (await run(model, mode)).text == ref  # a pooled connection now exists
    finally:
        first.stop()
    second = EmulatorServer(http2=h2c, port=port).start()
    try:
        for _ in range(3):
            outcome = await run(model, mode)
            assert outcome.error is None, outcome.error
            assert outcome.text == ref
        assert second.chat_requests >= 3
    finally:
        second.stop()


@pytest.fixture(scope="module")
def foreign_ca(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A CA bundle of an unrelated trustme CA (it did not sign the emulator's cert)."""
    path = Path(tmp_path_factory.mktemp("foreign-ca")) / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return str(path)


@pytest.mark.parametrize("verify", ["foreign_ca", "default"])
@pytest.mark.parametrize("mode", MODES)
async def test_untrusted_certificate_fails_never_insecure(
    emulator_h2: EmulatorServer,
    foreign_ca: str,
    sleeps: RecordingSleep,
    verify: str,
    mode: str,
) -> None:
    kwargs: dict[str, Any] = {"verify": foreign_ca} if verify == "foreign_ca" else {}
    model = ChatFastpipe(
        provider="openai", model="emu", base_url=emulator_h2.openai_base_url, **kwargs
    )
    assert model.endpoint_config.verify is not False
    before = emulator_h2.chat_requests
    outcome = await run(model, mode)
    assert isinstance(outcome.error, EndpointConnectError), outcome.error
    assert outcome.text == ""
    assert emulator_h2.chat_requests == before  # no request was ever sent in clear trust
    cause = outcome.error.__cause__
    assert cause is not None
    assert "CERTIFICATE" in str(cause).upper()
