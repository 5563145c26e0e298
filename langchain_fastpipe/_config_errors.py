"""The messages of :mod:`langchain_fastpipe.config`: a ValidationError as one ConfigError.

Each problem names the key, the value (secrets never shown), the allowed values or range,
the nearest valid name of an unknown key, and the layer (code, env variable, file) that
supplied the value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from langchain_fastpipe._validation import TYPE_WORDS, range_text, show_value, suggest
from langchain_fastpipe.errors import ConfigError

if TYPE_CHECKING:
    from pydantic import ValidationError
    from pydantic_core import ErrorDetails

__all__ = ["Label", "config_error"]

#: The layer that supplied the value at a key path (``Load.label``), "" if none.
Label = Callable[[tuple[str, ...]], str]


def config_error(
    exc: ValidationError,
    root: type[BaseModel],
    label: Label | None = None,
    leaves: Mapping[str, str] | None = None,
) -> ConfigError:
    """One ConfigError describing every problem of a pydantic ValidationError.

    Args:
        exc: The validation error.
        root: The model validated.
        label: The layer that supplied the value at a key path (``Load.label``); None
            names no layer.
        leaves: Every key name -> its section, when ``root`` is the whole configuration
            (a section's key written at the top level is then suggested as
            ``section.key``); None otherwise.
    """
    problems = [_describe(err, root, label, leaves) for err in exc.errors(include_url=False)]
    if len(problems) == 1:
        return ConfigError(problems[0])
    listed = "\n".join(f"  - {p}" for p in problems)
    return ConfigError(f"{len(problems)} configuration errors:\n{listed}")


def _resolve(root: type[BaseModel], loc: tuple[int | str, ...]) -> tuple[str, Any, Any]:
    """Walk ``loc`` through the model tree: (dotted path, FieldInfo or None, parent model)."""
    model: Any = root
    field = None
    path = ""
    for part in loc:
        if isinstance(part, str) and isinstance(model, type) and issubclass(model, BaseModel):
            field = model.model_fields.get(part)
            path = f"{path}.{part}" if path else part
            annotation = field.annotation if field is not None else None
            model = annotation if isinstance(annotation, type) else None
        elif isinstance(part, int):
            path = f"{path}[{part}]"
    return path, field, model


def _source_of(loc: tuple[int | str, ...], label: Label | None) -> str:
    """`` (from <layer>)`` for the value at ``loc`` (its longest labelled prefix), or ""."""
    if label is None:
        return ""
    keys = tuple(str(p) for p in loc if isinstance(p, str))
    for end in range(len(keys), 0, -1):
        found = label(keys[:end])
        if found:
            return f" (from {found})"
    return ""


def _describe(
    err: ErrorDetails,
    root: type[BaseModel],
    label: Label | None,
    leaves: Mapping[str, str] | None,
) -> str:
    """One line naming the key, the value, the allowed values and the source."""
    loc = tuple(err["loc"])
    kind = err["type"]
    path, field, section = _resolve(root, loc)
    origin = _source_of(loc, label)
    if kind == "extra_forbidden":
        return _unknown_key(root, loc, leaves) + origin
    value = show_value(err.get("input"), path)
    bounds = range_text(field.metadata) if field is not None else ""
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{path} = {value} is out of range: must be {bounds}{origin}"
    if kind == "literal_error":
        expected = (err.get("ctx") or {}).get("expected", "")
        return f"{path} = {value} is not allowed: must be one of {expected}{origin}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        got = type(err.get("input")).__name__
        where = path or "the configuration"
        return f"{where} must be an object (a JSON mapping), got {got}{origin}"
    if kind.startswith("fastpipe_"):
        if section is not None or not path:  # a whole-section check names its keys itself
            return f"{err['msg']}{origin}"
        return f"{path} = {value} {err['msg']}{origin}"
    expected = TYPE_WORDS.get(kind, err["msg"].removeprefix("Input should be ").rstrip("."))
    extra = f" {bounds}" if bounds else ""
    return f"{path} = {value} is not valid: expected {expected}{extra}{origin}"


def _unknown_key(
    root: type[BaseModel], loc: tuple[int | str, ...], leaves: Mapping[str, str] | None
) -> str:
    """The message for an unknown key: its full name and the nearest valid one."""
    parent_path, _, parent = _resolve(root, loc[:-1])
    key = str(loc[-1])
    full = f"{parent_path}.{key}" if parent_path else key
    valid = list(parent.model_fields) if parent is not None else []
    hint = suggest(key, valid)
    if hint is None and parent is root and leaves is not None:
        # A key of some section written at the top level, e.g. "connection_pool_size".
        near = suggest(key, list(leaves))
        hint = f"{leaves[near]}.{near}" if near else None
    if hint is not None:
        shown = f"{parent_path}.{hint}" if parent_path else hint
        return f"unknown key {full!r}: did you mean {shown!r}?"
    return f"unknown key {full!r}: valid keys are {', '.join(valid)}"
