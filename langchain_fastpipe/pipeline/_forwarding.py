"""Chat-model methods that return a runnable (``bind_tools`` ...), applied to every strategy."""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from langchain_core.runnables import Runnable

if TYPE_CHECKING:
    from langchain_fastpipe.pipeline._ranked import RankedFallbacks, Strategy


def apply_to_strategies(
    ranked: RankedFallbacks[Any, Any], name: str
) -> Callable[..., RankedFallbacks[Any, Any]]:
    """The function applying the method ``name`` to every strategy of ``ranked``.

    See :meth:`~langchain_fastpipe.pipeline.RankedFallbacks.__getattr__`.

    Args:
        ranked: The instance whose strategies' runnables have the method.
        name: The method's name.

    Returns:
        A function calling the method on each runnable (same arguments) and returning
        ``ranked._derive(name, results)``.

    Raises:
        AttributeError: ``name`` is not a method returning a Runnable on every strategy.
    """
    strategies: list[Strategy] = ranked.__dict__.get("strategies") or []
    methods = [getattr(s.runnable, name, None) for s in strategies]
    cls = type(ranked).__name__
    if all(m is None for m in methods):
        msg = f"{cls!r} object has no attribute {name!r}, nor do its strategies"
        raise AttributeError(msg)
    lacking = [s.name for s, m in zip(strategies, methods, strict=True) if not _returns_runnable(m)]
    if lacking:
        msg = (
            f"{cls!r} object has no attribute {name!r}: only methods that return a "
            "Runnable on every strategy (such as bind_tools or with_structured_output) "
            f"are applied to each of them, and {name!r} is not one on strategies {lacking}; "
            "read the candidates' own attributes from .runnables"
        )
        raise AttributeError(msg)

    @functools.wraps(cast("Callable[..., Any]", methods[0]))
    def apply_to_every_strategy(*args: Any, **kwargs: Any) -> RankedFallbacks[Any, Any]:
        return ranked._derive(name, [m(*args, **kwargs) for m in methods if m is not None])

    return apply_to_every_strategy


def _returns_runnable(attr: Any) -> bool:
    """Whether ``attr`` is a callable annotated to return a Runnable (pure).

    The rule of langchain-core's ``RunnableWithFallbacks.__getattr__``; annotations that
    do not resolve count as "no".
    """
    if not callable(attr):
        return False
    try:
        hint = typing.get_type_hints(attr).get("return")
    except Exception:
        return False
    return hint is not None and _is_runnable_type(hint)


def _is_runnable_type(hint: Any) -> bool:
    """Whether a type hint is a Runnable class, a parametrized one, or a union of them."""
    if isinstance(hint, type):
        return issubclass(hint, Runnable)
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return all(_is_runnable_type(arg) for arg in typing.get_args(hint))
    return isinstance(origin, type) and issubclass(origin, Runnable)
