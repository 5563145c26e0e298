"""Module-level helpers of the default preloader and the ASGI lifespan."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

from langchain_fastpipe._runtime import runtime
from langchain_fastpipe.preload._preloader import ModelPreloader, PreloadResult
from langchain_fastpipe.preload._spec import PRELOAD_ENV, _describe, parse_preload_env

logger = logging.getLogger("langchain_fastpipe.preload")


def register(model: object, **kwargs: Any) -> str:
    """Register ``model`` with the default preloader (see :meth:`ModelPreloader.register`)."""
    return runtime().preloader.register(model, **kwargs)


async def preload(**kwargs: Any) -> list[PreloadResult]:
    """Warm every model of the default preloader (see :meth:`ModelPreloader.preload`)."""
    return await runtime().preloader.preload(**kwargs)


def preload_sync(**kwargs: Any) -> list[PreloadResult]:
    """Blocking :func:`preload` (see :meth:`ModelPreloader.preload_sync`)."""
    return runtime().preloader.preload_sync(**kwargs)


def register_from_env(
    preloader: ModelPreloader | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    """Register the models named in ``FASTPIPE_PRELOAD`` (never raises).

    Nothing is contacted: each entry becomes a :class:`PreloadSpec` whose ChatFastpipe is
    built at its first warm-up. Invalid entries are logged and skipped. The default
    preloader does this once, when it is created.

    Args:
        preloader: Defaults to the default preloader.
        environ: Defaults to ``os.environ``.

    Returns:
        The names registered.
    """
    target = preloader if preloader is not None else runtime().preloader
    text = (environ if environ is not None else os.environ).get(PRELOAD_ENV, "")
    specs, errors = parse_preload_env(text)
    for message in errors:
        logger.warning("ignored: %s", message)
    names: list[str] = []
    for spec in specs:
        try:
            names.append(target.register(spec))
        except Exception as exc:  # pragma: no cover - register of a spec cannot fail
            logger.warning("ignored %s entry %s: %s", PRELOAD_ENV, spec.name, _describe(exc))
    return names


@contextlib.asynccontextmanager
async def fastpipe_lifespan(
    app: object = None,
    *,
    preloader: ModelPreloader | None = None,
    wait: bool = True,
    refresh: bool = True,
    raise_on_error: bool = False,
    stop_servers: bool = True,
) -> AsyncIterator[dict[str, Any]]:
    """An ASGI lifespan: warm every model at startup, clean up at shutdown.

    Usable directly as ``FastAPI(lifespan=fastpipe_lifespan)`` or
    ``Starlette(lifespan=fastpipe_lifespan)``; use ``functools.partial`` for options.
    The yielded state (``request.state.fastpipe_preload`` in Starlette) holds the
    results when ``wait`` is True.

    Args:
        app: The ASGI app (unused; the lifespan protocol passes it).
        preloader: Defaults to the default preloader.
        wait: Finish warming before serving (True) or warm in the background (False).
        refresh: Run the keep-alive refresh tasks while the app runs.
        raise_on_error: Abort startup if a warm-up fails (default: report and serve).
        stop_servers: Stop local servers the warm-up started when the app shuts down.

    Yields:
        The lifespan state: ``{"fastpipe_preload": [PreloadResult, ...]}``.
    """
    target = preloader if preloader is not None else runtime().preloader
    results: list[PreloadResult] = []
    if wait:
        results = await target.preload(raise_on_error=raise_on_error)
    else:
        target.schedule()
    if refresh:
        target.start_refresh()
    try:
        yield {"fastpipe_preload": results}
    finally:
        await target.aclose(stop_servers=stop_servers)
