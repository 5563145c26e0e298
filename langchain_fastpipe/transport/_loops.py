"""The httpx clients of one pool: one sync client, one async client per event loop.

``asyncio.run()`` twice, pytest's per-test loops, Jupyter and threads each get an async
client bound to their own loop (a client is never used on a loop it was not built on).
A client whose loop has closed cannot be closed normally any more: when one is found (a
new loop asks for a client, or the pool is closed or dropped) its entry is forgotten and
its sockets are closed directly (:meth:`LoopClients.drop_dead_loops`). The SSL context is
built once per config and shared by every client.

The HTTP/2 module (and h2 with it) is imported when the first httpx- or h2-engine client
is built, aiohttp when the first aiohttp-engine client is.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import sys
import threading
from typing import TYPE_CHECKING, Any

import httpx

from langchain_fastpipe.errors import ConfigError
from langchain_fastpipe.transport._config import EndpointConfig

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["LoopClients", "abort_client", "build_ssl_context"]


def build_ssl_context(config: EndpointConfig) -> ssl.SSLContext | None:
    """The SSL context of an https endpoint, built once per config (ogx-ai/ogx#4221: ~11 ms).

    Raises:
        ConfigError: ``config.verify`` names a CA bundle that cannot be loaded.
    """
    if not config.base_url.lower().startswith("https:"):
        return None
    if isinstance(config.verify, str):
        try:
            return ssl.create_default_context(cafile=config.verify)
        except (OSError, ssl.SSLError) as exc:
            msg = f"EndpointConfig.verify: cannot load CA bundle {config.verify!r}: {exc}"
            raise ConfigError(msg) from exc
    return httpx.create_ssl_context(verify=config.verify)


def _h2() -> ModuleType:
    """The HTTP/2 transport module (imports h2: only once a client is built)."""
    from langchain_fastpipe.transport import _h2

    return _h2


def _mark_aiohttp_closed(client: httpx.AsyncClient) -> None:
    """:func:`~._aiohttp.mark_aiohttp_closed`, if an aiohttp-engine client was ever built.

    (Without one, no client has an aiohttp session, and aiohttp is not imported for it.)
    """
    module = sys.modules.get("langchain_fastpipe.transport._aiohttp")
    if module is not None:
        module.mark_aiohttp_closed(client)


def abort_client(client: httpx.AsyncClient) -> None:
    """Close the sockets of ``client``, whose event loop is closed (no await possible).

    An aiohttp-engine client's session and connector are marked closed too, so they do
    not warn "Unclosed client session" / "Unclosed connector" when collected.
    """
    _h2().abort_dead_loop_client(client)
    _mark_aiohttp_closed(client)


def _abort_on_running_loop(loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient) -> None:
    """Abort ``client``'s connections on its still-running ``loop`` (a dropped pool).

    ``transport.abort()`` is thread-safe only on the loop's own thread, so from another
    thread it is handed to the loop. An aiohttp-engine client's session and connector are
    marked closed too, so they do not warn when collected.
    """
    raws = _h2()._socket_transports(client)

    def abort() -> None:
        for raw in raws:
            with contextlib.suppress(Exception):
                raw.abort()
        _mark_aiohttp_closed(client)

    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        abort()
    else:
        loop.call_soon_threadsafe(abort)


class LoopClients:
    """The sync client and the per-loop async clients of one endpoint, built lazily.

    Holds no reference to its pool, so :meth:`abandon` can run as the pool's finalizer.
    """

    def __init__(
        self,
        config: EndpointConfig,
        timeout: httpx.Timeout,
        *,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """Clients of ``config``; ``transport``/``async_transport`` replace the network.

        Raises:
            ConfigError: ``config.verify`` names a CA bundle that cannot be loaded.
        """
        self.config = config
        self._timeout = timeout
        self._ssl_context = build_ssl_context(config)
        self._transport = transport
        if async_transport is None and isinstance(transport, httpx.AsyncBaseTransport):
            async_transport = transport
        self._async_transport = async_transport
        self._lock = threading.Lock()
        # A plain dict: a client refers to its loop (through its connections), so a
        # WeakKeyDictionary entry would never go away by itself anyway.
        self._async_clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}
        self._sync_client: httpx.Client | None = None

    def _client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments shared by every httpx client of this endpoint."""
        return {"timeout": self._timeout, **_h2().transport_kwargs(self.config, self._ssl_context)}

    def new_async_client(self) -> httpx.AsyncClient:
        """A new async client (MockTransport when injected; aiohttp or h2 when configured).

        The httpx engine's transport is :func:`~._h2.async_transport`'s (graceful GOAWAY);
        the h2 engine's, :func:`~._h2native_pool.native_transport`, wraps it.
        """
        kwargs = self._client_kwargs()
        config = self.config
        if self._async_transport is not None:
            kwargs["transport"] = self._async_transport
        elif config.async_engine == "aiohttp" and config.pooling:
            from langchain_fastpipe.transport._aiohttp import aiohttp_transport

            kwargs["transport"] = aiohttp_transport(config, self._ssl_context)
        elif config.async_engine == "h2":
            from langchain_fastpipe.transport._h2native_pool import native_transport

            kwargs["transport"] = native_transport(config, self._ssl_context)
        else:
            kwargs["transport"] = _h2().async_transport(config, self._ssl_context)
        return httpx.AsyncClient(**kwargs)

    def new_sync_client(self) -> httpx.Client:
        """A new sync client (MockTransport when injected; else :func:`~._h2.sync_transport`)."""
        kwargs = self._client_kwargs()
        transport = self._transport
        if transport is None:
            transport = _h2().sync_transport(self.config, self._ssl_context)
        kwargs["transport"] = transport
        return httpx.Client(**kwargs)

    def aclient(self) -> httpx.AsyncClient:
        """The shared async client of the running event loop (created on first use)."""
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            self.drop_dead_loops()
            with self._lock:
                client = self._async_clients.get(loop)
                if client is None:
                    client = self._async_clients[loop] = self.new_async_client()
        return client

    def client(self) -> httpx.Client:
        """The shared sync client (created on first use)."""
        client = self._sync_client
        if client is None:
            with self._lock:
                client = self._sync_client
                if client is None:
                    client = self._sync_client = self.new_sync_client()
        return client

    def drop_dead_loops(self) -> int:
        """Forget the async clients of closed loops and close their sockets; how many."""
        with self._lock:
            dead = [loop for loop in self._async_clients if loop.is_closed()]
            clients = [self._async_clients.pop(loop) for loop in dead]
        for client in clients:
            abort_client(client)
        return len(clients)

    def pop_loop(self, loop: asyncio.AbstractEventLoop) -> httpx.AsyncClient | None:
        """Forget the async client of ``loop`` (the caller closes it)."""
        with self._lock:
            return self._async_clients.pop(loop, None)

    def close(self) -> None:
        """Close the sync client; drop async clients of closed loops, closing their sockets."""
        with self._lock:
            client, self._sync_client = self._sync_client, None
        self.drop_dead_loops()
        if client is not None:
            client.close()

    def abandon(self) -> None:
        """Close everything without awaiting: the pool is gone (its finalizer).

        The sync client is closed; async clients of closed loops have their sockets
        closed directly; those of running loops have their connections aborted.
        Never raises.
        """
        with self._lock:
            clients = list(self._async_clients.items())
            self._async_clients.clear()
        with contextlib.suppress(Exception):
            self.close()
        for loop, client in clients:
            with contextlib.suppress(Exception):
                if loop.is_closed():
                    abort_client(client)
                elif loop.is_running():
                    # No await is possible here, and a task scheduled on the loop may be
                    # cancelled before it runs (``asyncio.run`` cancels what is left when
                    # its coroutine returns): abort the connections at once instead.
                    _abort_on_running_loop(loop, client)
