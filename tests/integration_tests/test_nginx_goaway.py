"""HTTP/2 GOAWAY behind a real nginx: no stream lost, every text exactly the server's.

nginx (TLS, HTTP/2 by ALPN, ``keepalive_requests 100``) proxies to the emulator; while
1000 streams per case (6000 over sync/async engines x both providers) run at concurrency 64 it is
also reloaded (SIGHUP, as ``nginx -s reload``)
every few hundred finished streams. Both close connections with a graceful GOAWAY and
complete the streams they accepted (RFC 9113 section 6.8); raw httpx loses a few percent
of the streams there (``benchmarks/bench_nginx_goaway.py`` measures it), ChatFastpipe
must lose none, with retries off (only its GOAWAY handling and the pool's
stale-connection replays may resend): async calls on its default engine (``"h2"``, our
HTTP/2 client, ``transport/_h2native*.py``) and on ``engine="httpx"`` (httpx over the
graceful connection of ``transport/_h2*.py``), sync calls on httpx.

Nothing is timed: the deadline only stops a stuck run, with room for a busy 2-core
machine. Asserted besides the texts: the GOAWAYs did happen (many connections, reloads),
everything went over HTTP/2, the pool ends with nothing in flight, and no response of
this pool outlives the load (sync: its connections are closed afterwards).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from langchain_fastpipe.chat_models import ChatFastpipe
from langchain_fastpipe.emulator import EmulatorConfig, EmulatorServer, ModelProfile
from langchain_fastpipe.emulator._nginx import NginxProxy, find_nginx
from langchain_fastpipe.transport import get_pool

STREAMS = 1000  # per case: 6000 over the six cases, 10+ GOAWAYs and 3 reloads each
CONCURRENCY = 64
KEEPALIVE_REQUESTS = 100
RELOAD_EVERY = 300  # finished streams between two reloads (about 1 s here)
DEADLINE = 180.0  # a hang guard, not a performance assertion
PROMPT = "nginx goaway prompt"
PROVIDERS = ["openai", "ollama"]
#: Short answers keep 4000 streams affordable; the SSE/NDJSON framing is what matters.
SHORT = EmulatorConfig(default=ModelProfile(answer_tokens=4))

pytestmark = [pytest.mark.timeout(DEADLINE + 60)]


@pytest.fixture(scope="module")
def upstream() -> Iterator[EmulatorServer]:
    """One emulator (plain HTTP/1.1) behind every nginx of this module."""
    if find_nginx() is None:
        pytest.fail("nginx is missing: `make test` installs Debian's nginx package")
    with EmulatorServer(SHORT) as server:
        yield server


@pytest.fixture
def nginx(upstream: EmulatorServer) -> Iterator[NginxProxy]:
    """A fresh nginx (so a fresh pool) with a low ``keepalive_requests``."""
    with NginxProxy(upstream.base_url, keepalive_requests=KEEPALIVE_REQUESTS) as proxy:
        yield proxy


def suffix(provider: str) -> str:
    return "/v1" if provider == "openai" else ""


def through(proxy: NginxProxy, provider: str, engine: str = "httpx") -> ChatFastpipe:
    return ChatFastpipe(
        model="emulator",
        provider=provider,
        base_url=proxy.base_url + suffix(provider),
        verify=proxy.ca_path,
        http2=True,
        engine=engine,
        max_retries=0,
    )


def reference(upstream: EmulatorServer, provider: str) -> str:
    """The server's answer, asked directly (no nginx, plain HTTP/1.1)."""
    direct = ChatFastpipe(
        model="emulator",
        provider=provider,
        base_url=upstream.base_url + suffix(provider),
        engine="httpx",
    )
    text = direct.invoke(PROMPT).text
    assert len(text.split()) == 4
    return text


class Reloader:
    """Reloads nginx every ``RELOAD_EVERY`` finished streams (called as they finish)."""

    def __init__(self, proxy: NginxProxy) -> None:
        self.proxy = proxy
        self.finished = 0
        self._lock = threading.Lock()

    def one_finished(self) -> None:
        with self._lock:
            self.finished += 1
            due = self.finished % RELOAD_EVERY == 0 and self.finished < STREAMS
        if due:
            self.proxy.reload()


def check(results: list[Any], ref: str, proxy: NginxProxy, model: ChatFastpipe) -> None:
    errors = [r for r in results if isinstance(r, BaseException)]
    wrong = [r for r in results if isinstance(r, str) and r != ref]
    assert len(results) == STREAMS, f"{len(results)} of {STREAMS} ended before the deadline"
    assert errors == [], f"{len(errors)} failed, first: {errors[0]!r}\n{proxy.error_log()}"
    assert wrong == [], f"{len(wrong)} texts differ, first: {wrong[0]!r} (want {ref!r})"
    stats = get_pool(model.endpoint_config).stats()
    assert stats["http_versions"] == {"HTTP/2": STREAMS}
    # The GOAWAYs did happen: nginx closed each connection after 100 requests.
    assert stats["connections_opened"] >= STREAMS // KEEPALIVE_REQUESTS
    assert proxy.reloads == STREAMS // RELOAD_EVERY
    assert proxy.running()
    assert stats["in_flight"] == 0


@pytest.mark.parametrize("engine", ["auto", "httpx"])  # auto: our own HTTP/2 client, "h2"
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_async_streams_survive_goaway_and_reloads(
    upstream: EmulatorServer, nginx: NginxProxy, response_tracker: Any, provider: str, engine: str
) -> None:
    ref = await asyncio.to_thread(reference, upstream, provider)
    model = through(nginx, provider, engine)
    assert model.endpoint_config.async_engine == ("h2" if engine == "auto" else engine)
    pool = get_pool(model.endpoint_config)
    response_tracker.track_async(pool)
    reloader = Reloader(nginx)
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one() -> str:
        async with gate:
            try:
                return "".join([chunk.text async for chunk in model.astream(PROMPT)])
            finally:
                reloader.one_finished()

    tasks = [asyncio.ensure_future(one()) for _ in range(STREAMS)]
    done, pending = await asyncio.wait(tasks, timeout=DEADLINE)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=5.0)
    results = [t.exception() or t.result() for t in tasks if t in done]
    check(results, ref, nginx, model)
    assert response_tracker.alive() == 0
    await pool.aclose()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_sync_streams_survive_goaway_and_reloads(
    upstream: EmulatorServer, nginx: NginxProxy, response_tracker: Any, provider: str
) -> None:
    ref = reference(upstream, provider)
    model = through(nginx, provider)
    pool = get_pool(model.endpoint_config)
    response_tracker.track_sync(pool)
    reloader = Reloader(nginx)

    def one(_: int) -> str | BaseException:
        try:
            return "".join(chunk.text for chunk in model.stream(PROMPT))
        except Exception as exc:
            return exc
        finally:
            reloader.one_finished()

    with ThreadPoolExecutor(CONCURRENCY) as executor:
        futures = [executor.submit(one, i) for i in range(STREAMS)]
        results = [f.result(timeout=DEADLINE) for f in futures]
    check(results, ref, nginx, model)
    pool.close()
    assert response_tracker.alive() == 0
