"""Public names imported on first access (PEP 562), so importing a package stays cheap."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection, Mapping
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(
    package: str,
    exports: Mapping[str, str],
    namespace: dict[str, Any],
    *,
    fresh: Collection[str] = (),
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's module ``__getattr__`` and ``__dir__`` for names defined elsewhere.

    ``__dir__`` lists the package's names, the public ones (``__all__``) included before
    their first use.

    Args:
        package: The package's name (named in the ``AttributeError``).
        exports: Public name -> the module that defines it.
        namespace: The package's ``globals()``: a name is stored there once imported.
        fresh: Names looked up on every access instead (objects that may be replaced).

    Returns:
        ``(__getattr__, __dir__)``.
    """

    def __getattr__(name: str) -> Any:  # noqa: N807 - the module hook's name
        module = exports.get(name)
        if module is None:
            msg = f"module {package!r} has no attribute {name!r}"
            raise AttributeError(msg)
        value = getattr(importlib.import_module(module), name)
        if name not in fresh:
            namespace[name] = value
        return value

    def __dir__() -> list[str]:  # noqa: N807
        return sorted({*namespace, *namespace.get("__all__", ())})

    return __getattr__, __dir__
