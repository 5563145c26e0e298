"""The ``FASTPIPE_*`` environment variables of :mod:`langchain_fastpipe.config`.

Which variable sets which key (long names, the short aliases of the seven documented keys,
"did you mean" hints for near misses) and how a value is parsed as its field's type, with
messages naming the variable. Pure: the environment and the section models are passed in.
"""

from __future__ import annotations

import difflib
import json
import math
import types
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Union

from langchain_fastpipe._validation import is_secret_name, suggest
from langchain_fastpipe.errors import ConfigError

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = [
    "ENV_ALIASES",
    "ENV_PREFIX",
    "NON_CONFIG_ENV_VARS",
    "env_name",
    "env_target",
    "parse_env_value",
]

#: Prefix of every environment variable the configuration reads.
ENV_PREFIX = "FASTPIPE_"

#: ``FASTPIPE_*`` variables that are not configuration keys and are never rejected.
NON_CONFIG_ENV_VARS: frozenset[str] = frozenset(
    {
        "FASTPIPE_CONFIG",
        "FASTPIPE_PRELOAD",
        "FASTPIPE_API_KEY",
        "FASTPIPE_BASE_URL",
        "FASTPIPE_LOCAL_MODEL",
        "FASTPIPE_LLAMA_SERVER",
    }
)

#: Short environment aliases of the seven documented keys: variable -> (section, key).
ENV_ALIASES: Mapping[str, tuple[str, str]] = types.MappingProxyType(
    {
        f"{ENV_PREFIX}{key.upper()}": ("performance_optimizations", key)
        for key in (
            "enable_model_preloading",
            "enable_optimized_pipeline",
            "enable_connection_pooling",
            "enable_response_streaming",
            "preload_timeout_seconds",
            "connection_pool_size",
            "api_timeout_seconds",
        )
    }
)

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_NONE = frozenset({"", "none", "null"})


def env_target(var: str, sections: Mapping[str, type[BaseModel]]) -> tuple[str, str] | None:
    """The ``(section, key)`` a ``FASTPIPE_*`` variable sets; None if not a config variable.

    Args:
        var: The upper-case variable name.
        sections: The configuration's sections by name.

    Raises:
        ConfigError: The variable looks like a config key but is not one.
    """
    if var in ENV_ALIASES:
        return ENV_ALIASES[var]
    name = var[len(ENV_PREFIX) :].lower()
    if "__" in name:
        section, _, key = name.partition("__")
        if section not in sections:
            hint = suggest(section, list(sections))
            raise ConfigError(
                f"unknown environment variable {var}: no config section {section!r}"
                + (f"; did you mean {ENV_PREFIX}{hint.upper()}__{key.upper()}?" if hint else "")
                + f" (sections: {', '.join(sections)})"
            )
        fields = list(sections[section].model_fields)
        if key not in fields:
            hint = suggest(key, fields)
            raise ConfigError(
                f"unknown environment variable {var}: {section} has no key {key!r}"
                + (f"; did you mean {env_name(section, hint)}?" if hint else "")
                + f" (keys: {', '.join(fields)})"
            )
        return section, key
    # No "__": a config variable only if it names (or nearly names) a key.
    candidates: dict[str, str] = {alias[len(ENV_PREFIX) :].lower(): alias for alias in ENV_ALIASES}
    for section, model in sections.items():
        candidates.setdefault(section, f"{ENV_PREFIX}{section.upper()}__<KEY>")
        for key in model.model_fields:
            candidates.setdefault(key, env_name(section, key))
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.8)
    if not match:
        return None
    raise ConfigError(f"unknown environment variable {var}: did you mean {candidates[match[0]]}?")


def env_name(section: str, key: str) -> str:
    """The long environment variable of ``section.key`` (its short alias if it has one)."""
    alias = f"{ENV_PREFIX}{key.upper()}"
    if ENV_ALIASES.get(alias) == (section, key):
        return alias
    return f"{ENV_PREFIX}{section.upper()}__{key.upper()}"


def parse_env_value(raw: str, annotation: Any, var: str, path: str) -> Any:
    """Parse one environment value as the field's type, naming the variable on failure.

    Args:
        raw: The variable's value.
        annotation: The field's type.
        var: The variable's name (for messages).
        path: The key's dotted path (for messages; secrets are not shown).

    Raises:
        ConfigError: The value is not of the field's type.
    """
    text = raw.strip()
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType) and type(None) in args:
        if text.lower() in _NONE:
            return None
        annotation = next(a for a in args if a is not type(None))
        origin = typing.get_origin(annotation)
    shown = "<redacted>" if is_secret_name(path) else repr(raw)
    if annotation is bool:
        low = text.lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise ConfigError(
            f"{var} = {shown} is not a boolean ({path}): use true/false, 1/0, yes/no or on/off"
        )
    if annotation is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{var} = {shown} is not an integer ({path})") from None
    if annotation is float:
        try:
            number = float(text)
        except ValueError:
            raise ConfigError(f"{var} = {shown} is not a number ({path})") from None
        if not math.isfinite(number):
            raise ConfigError(f"{var} = {shown} is not a finite number ({path})")
        return number
    if origin is list:
        if text.startswith("["):
            try:
                items = json.loads(text)
            except json.JSONDecodeError:
                raise ConfigError(f"{var} = {shown} is not a JSON array ({path})") from None
            return items
        return [item.strip() for item in text.split(",") if item.strip()]
    return raw
