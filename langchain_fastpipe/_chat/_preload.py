"""``preload=True``: models handed to the preload hook once each, warm-ups at the first call.

The hook records a model in the runtime's default preloader (no I/O); equal models (same
:meth:`~langchain_fastpipe.chat_models.ChatFastpipe.preload_key`) are handed over once per
installed hook.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from langchain_fastpipe.chat_models import ChatFastpipe

__all__ = ["hand_to_preloader", "set_preload_hook", "warm_pending"]


def _register_with_runtime(model: ChatFastpipe) -> None:
    """The default preload hook: record ``model`` in the default preloader (no I/O)."""
    from langchain_fastpipe._runtime import runtime

    runtime().register_model(model)


def warm_pending() -> None:
    """At a ``preload=True`` model's first call: start the warm-ups nothing started."""
    from langchain_fastpipe._runtime import runtime

    runtime().warm_pending()


#: Called with each ChatFastpipe built with ``preload=True``: records it in the default
#: preloader; nothing is contacted and no thread or task is started.
_preload_hook: Callable[[ChatFastpipe], None] | None = _register_with_runtime
#: Preload keys (:meth:`ChatFastpipe.preload_key`) already handed to the current hook.
_preloaded: set[tuple[str, str, str, str, str]] = set()
_preloaded_lock = threading.Lock()


def set_preload_hook(hook: Callable[[ChatFastpipe], None] | None) -> None:
    """Install the function that ``preload=True`` models are handed to on construction.

    The default hook records the model in the default preloader (it is warmed at the
    application's start, or at its first call); None removes it. Equal models (same
    :meth:`ChatFastpipe.preload_key`) are handed over once per installed hook, so building
    the same model again does no further work.

    Args:
        hook: Called with the new model; it must not block.
    """
    global _preload_hook
    with _preloaded_lock:
        _preload_hook = hook
        _preloaded.clear()


def hand_to_preloader(model: ChatFastpipe) -> None:
    """Give ``model`` to the preload hook unless an equal model was already given."""
    hook = _preload_hook
    if hook is None:
        return
    key = model.preload_key()
    with _preloaded_lock:
        if key in _preloaded:
            return
        _preloaded.add(key)
    hook(model)
