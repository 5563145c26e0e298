"""The layers of :meth:`langchain_fastpipe.config.FastpipeConfig.load`.

:class:`Load` holds the inputs of one load and what each layer supplied (for error
messages); :data:`LOADING` is the load in progress; :class:`FileSource` and
:class:`EnvSource` are the pydantic-settings sources of the JSON file and the environment.
"""

from __future__ import annotations

import contextvars
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic_settings import BaseSettings, EnvSettingsSource, JsonConfigSettingsSource

from langchain_fastpipe._config_env import (
    ENV_PREFIX,
    NON_CONFIG_ENV_VARS,
    env_target,
    parse_env_value,
)
from langchain_fastpipe.errors import ConfigError

if TYPE_CHECKING:
    from pydantic import BaseModel
    from pydantic.fields import FieldInfo

__all__ = ["LOADING", "EnvSource", "FileSource", "Load", "read_config_file"]


@dataclass
class Load:
    """The inputs of one ``FastpipeConfig.load``, and what each layer supplied."""

    env: Mapping[str, str]
    path: str | os.PathLike[str] | None
    code: Mapping[str, Any]
    file_data: Mapping[str, Any] = field(default_factory=dict)
    env_vars: dict[tuple[str, str], str] = field(default_factory=dict)

    def label(self, keys: tuple[str, ...]) -> str:
        """The layer whose value at ``keys`` won: ``code``, ``env VAR`` or ``file PATH``."""
        if _holds(self.code, keys):
            return "code"
        if len(keys) >= 2 and (var := self.env_vars.get((keys[0], keys[1]))):
            return f"env {var}"
        if self.path is not None and _holds(self.file_data, keys):
            return f"file {os.fspath(self.path)}"
        return ""


#: The load in progress (its sources run inside ``FastpipeConfig.__init__``).
LOADING: contextvars.ContextVar[Load | None] = contextvars.ContextVar(
    "fastpipe_config_load", default=None
)


def _holds(data: Mapping[str, Any], keys: tuple[str, ...]) -> bool:
    """Whether nested ``data`` has a value at ``keys``."""
    node: Any = data
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return False
        node = node[key]
    return True


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON config file into a dict.

    Raises:
        ConfigError: The file is missing, unreadable, not JSON or not a JSON object.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"config file {file} is not valid JSON: {exc.msg} at line {exc.lineno} "
            f"column {exc.colno}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {file} must hold a JSON object, got {type(data).__name__}")
    return data


class FileSource(JsonConfigSettingsSource):
    """The JSON file layer: the ``path`` of ``FastpipeConfig.load`` or ``FASTPIPE_CONFIG``.

    A missing, unreadable or malformed file is an error (naming the file, and the line and
    column of a JSON error), not an empty layer.
    """

    def __init__(self, settings_cls: type[BaseSettings], load: Load) -> None:
        """Read the file of ``load`` (if any) and record its data for error labels."""
        self._load = load
        super().__init__(
            settings_cls, json_file=None if load.path is None else os.fspath(load.path)
        )

    def _read_files(self, files: Any, deep_merge: bool = False) -> dict[str, Any]:
        if files is None:
            return {}
        data = read_config_file(files)
        self._load.file_data = data
        return data


class EnvSource(EnvSettingsSource):
    """The environment layer: ``FASTPIPE_<SECTION>__<KEY>`` and the short aliases.

    Variables are read from the ``env`` of ``FastpipeConfig.load``. The env prefix and
    the nested delimiter come from the model's settings; a short alias
    (``FASTPIPE_CONNECTION_POOL_SIZE``) reads as its long name. A variable that nearly
    names a key is refused with the nearest name, and each value is parsed as its field's
    type (true/false, 1/0, yes/no, on/off; JSON arrays or comma-separated lists; ``none``
    for an optional value) with a message naming the variable.
    """

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        load: Load,
        sections: Mapping[str, type[BaseModel]],
    ) -> None:
        """Read the variables of ``load`` into the keys of ``sections`` (by section name)."""
        self._load = load
        self._sections = sections
        super().__init__(settings_cls)

    def _annotation(self, section: str, key: str) -> Any:
        """The type of ``section.key``."""
        return self._sections[section].model_fields[key].annotation

    def _load_env_vars(self) -> Mapping[str, str | None]:
        """The config variables by their long lower-case names (aliases resolved)."""
        found: dict[str, str] = {}
        parsed: dict[tuple[str, str], Any] = {}
        for var in sorted(self._load.env):
            upper = var.upper()
            if not upper.startswith(ENV_PREFIX) or upper in NON_CONFIG_ENV_VARS:
                continue
            target = env_target(upper, self._sections)
            if target is None:
                continue
            section, key = target
            raw = self._load.env[var]
            value = parse_env_value(raw, self._annotation(section, key), var, f"{section}.{key}")
            previous = self._load.env_vars.get(target)
            if previous is not None and parsed[target] != value:
                msg = (
                    f"{section}.{key} is set twice with different values, by {previous} and "
                    f"{var}; remove one of them"
                )
                raise ConfigError(msg)
            parsed[target] = value
            self._load.env_vars[target] = var
            found[f"{self.env_prefix}{section}{self.env_nested_delimiter}{key}".lower()] = raw
        return found

    def _coerce_env_val_strict(self, field: FieldInfo | None, value: Any) -> Any:
        return value  # parsed in __call__, with messages naming the variable

    def __call__(self) -> dict[str, Any]:
        """The nested data of the variables, each value parsed as its field's type."""
        data = super().__call__()
        for section, values in data.items():
            if not isinstance(values, dict):
                continue
            for key, raw in values.items():
                var = self._load.env_vars[(section, key)]
                values[key] = parse_env_value(
                    raw, self._annotation(section, key), var, f"{section}.{key}"
                )
        return {section: values for section, values in data.items() if values}
