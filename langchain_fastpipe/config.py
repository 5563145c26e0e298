"""One configuration for langchain-fastpipe: :class:`FastpipeConfig` and its feature flags.

The configuration accepts exactly the documented JSON::

    {"performance_optimizations": {
        "enable_model_preloading": true, "enable_optimized_pipeline": true,
        "enable_connection_pooling": true, "enable_response_streaming": true,
        "preload_timeout_seconds": 60, "connection_pool_size": 20, "api_timeout_seconds": 30}}

plus the sections ``backend``, ``preload`` and ``pipeline`` (see their classes).

:class:`FastpipeConfig` is a pydantic-settings ``BaseSettings``. Precedence (lowest to
highest), as :meth:`FastpipeConfig.load` applies it through its settings sources:

1. the defaults written on the fields below;
2. a JSON file: the ``path`` argument, else the file named by ``FASTPIPE_CONFIG``;
3. environment variables: ``FASTPIPE_<SECTION>__<KEY>`` (env prefix ``FASTPIPE_``, nested
   delimiter ``__``; for example
   ``FASTPIPE_PERFORMANCE_OPTIMIZATIONS__ENABLE_CONNECTION_POOLING=false``) and the short
   aliases of the seven documented keys (``FASTPIPE_ENABLE_CONNECTION_POOLING``,
   ``FASTPIPE_CONNECTION_POOL_SIZE``, ``FASTPIPE_API_TIMEOUT_SECONDS``, ...). Setting a key
   through both spellings with different values is an error;
4. overrides given in code (a nested dict, dotted keys, section keywords or short aliases).

Each layer is merged key by key into the one below, so a file that sets one key keeps every
other default. Booleans from the environment accept true/false, 1/0, yes/no and on/off;
lists accept a JSON array or comma-separated names; ``none`` clears an optional value.
``FastpipeConfig(...)`` itself validates what code gives, reading no file or variable.

Validation is strict: an unknown key (at any level, in a file, the environment or code) is
rejected with the nearest valid name, and a bad value is rejected with a message naming the
key, the value, the allowed range and where it came from, for example::

    performance_optimizations.connection_pool_size = -3 is out of range: must be between
    1 and 1000 (from env FASTPIPE_CONNECTION_POOL_SIZE)

Every error is a :class:`~langchain_fastpipe.errors.ConfigError`. ``backend.api_key`` is a
``SecretStr``: it never appears in a repr, str, JSON dump or error.

Every flag off gives the plain component behind the same interface: pooling off is a fresh
HTTP/1.1 client per request; streaming off waits for the whole answer (``astream`` yields it
as one chunk); preloading off loads a model on first use; the optimized pipeline off runs
the strategies in their fixed order, one after another.

The objects built from a configuration are built by their own classes:
``ChatFastpipe.from_config(cfg)``, ``AnswerPipeline.from_config(cfg)``,
``ModelPreloader.from_config(cfg)`` and ``EndpointConfig.from_config(cfg)``. This module
imports none of them.
"""

from __future__ import annotations

import os
import threading
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TypedDict
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from langchain_fastpipe._config_env import ENV_ALIASES as ENV_ALIASES
from langchain_fastpipe._config_env import ENV_PREFIX as ENV_PREFIX
from langchain_fastpipe._config_env import NON_CONFIG_ENV_VARS as NON_CONFIG_ENV_VARS
from langchain_fastpipe._config_errors import Label, config_error
from langchain_fastpipe._config_sources import LOADING, EnvSource, FileSource, Load
from langchain_fastpipe._config_sources import read_config_file as read_config_file
from langchain_fastpipe._validation import check_base_url, has_credentials
from langchain_fastpipe.errors import ConfigError

if TYPE_CHECKING:
    from typing_extensions import Self

    _Base = BaseModel
else:
    _Base = object

__all__ = [
    "BackendSettings",
    "FastpipeConfig",
    "PerformanceOptimizations",
    "PipelineSettings",
    "PreloadSettings",
    "get_config",
    "set_config",
]

_MASK = "**********"


class PipelineOptions(TypedDict):
    """The settings an answer pipeline takes (:meth:`FastpipeConfig.pipeline_options`).

    Attributes:
        optimized: ``enable_optimized_pipeline``: ranked, adaptive strategies; False runs
            them in fixed order, one after another.
        hedge: ``hedging``: race the next strategy when the leader is slow.
        first_chunk_timeout: ``first_chunk_timeout_seconds`` (None: no limit).
        streaming: ``enable_response_streaming``.
        min_success_rate: ``pipeline.min_success_rate``.
        probe_rate: ``pipeline.probe_rate``.
        store: ``pipeline.store``: ``"memory"``, ``"sqlite"`` or ``"redis"``.
        store_url: ``pipeline.store_url`` (may hold a password: never log it).
        extraction_model: The extraction step's model name (``backend.extraction_model``,
            else ``backend.model``).
        formatting_model: The formatting step's model name (likewise).
    """

    optimized: bool
    hedge: bool
    first_chunk_timeout: float | None
    streaming: bool
    min_success_rate: float
    probe_rate: float
    store: Literal["memory", "sqlite", "redis"]
    store_url: str | None
    extraction_model: str | None
    formatting_model: str | None


class PreloadOptions(TypedDict):
    """The settings a preloader takes (:meth:`FastpipeConfig.preload_options`).

    Attributes:
        enabled: ``enable_model_preloading``.
        models: The models to warm up (:meth:`FastpipeConfig.preload_models`; [] when off).
        timeout: ``preload_timeout_seconds``: time allowed for all warm-ups.
        keep_alive_refresh: ``preload.keep_alive_refresh_seconds`` (None: never).
    """

    enabled: bool
    models: list[str]
    timeout: float
    keep_alive_refresh: float | None


class _ConfigErrorsMixin(_Base):
    """Mixin of every config model: validation failures become one ConfigError."""

    def __init__(self, **data: Any) -> None:
        """Validate ``data``; raise ConfigError naming each bad key, value, range and layer."""
        error: ConfigError | None = None
        try:
            super().__init__(**data)
        except ValidationError as exc:
            load = LOADING.get()
            labels = load.label if load is not None and isinstance(self, FastpipeConfig) else None
            error = _config_error(exc, type(self), labels)
        if error is not None:
            raise error  # outside the handler: no chained ValidationError quoting raw input

    # Tell pydantic this __init__ only wraps BaseModel's (as pydantic's RootModel does), so
    # validating nested sections does not call it and wrap its ConfigError a second time.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> Self:
        """Validate a mapping like the constructor does, raising ConfigError on failure."""
        try:
            return super().model_validate(obj, *args, **kwargs)
        except ValidationError as exc:
            error = _config_error(exc, cls)
        raise error  # outside the handler: no chained ValidationError quoting raw input

    @classmethod
    def model_validate_json(cls, json_data: Any, *args: Any, **kwargs: Any) -> Self:
        """Validate a JSON document, raising ConfigError on failure."""
        try:
            return super().model_validate_json(json_data, *args, **kwargs)
        except ValidationError as exc:
            error = _config_error(exc, cls)
        raise error  # outside the handler: no chained ValidationError quoting raw input


class _Section(_ConfigErrorsMixin, BaseModel):
    """Base of the sections: strict, frozen, unknown keys rejected with a suggestion."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class PerformanceOptimizations(_Section):
    """The documented ``performance_optimizations`` section: feature flags and limits."""

    enable_model_preloading: bool = True
    """Warm models up before the first request; off: a model loads on first use."""
    enable_optimized_pipeline: bool = True
    """Ranked, adaptive strategies; off: strategies run in fixed order, one after another."""
    enable_connection_pooling: bool = True
    """Shared pooled HTTP/2 clients; off: a fresh HTTP/1.1 client per request."""
    enable_response_streaming: bool = True
    """Stream tokens as they arrive; off: wait for the whole answer (one chunk)."""
    preload_timeout_seconds: float = Field(60.0, gt=0, le=3600)
    """Time allowed for warming up all preloaded models."""
    connection_pool_size: int = Field(20, ge=1, le=1000)
    """Keep-alive connections kept per endpoint (``PoolLimits.max_keepalive_connections``)."""
    api_timeout_seconds: float = Field(30.0, gt=0, le=3600)
    """Read timeout of one API call."""
    http2: bool = True
    """Negotiate HTTP/2 (ALPN over TLS); falls back to HTTP/1.1."""
    max_connections: int = Field(256, ge=1, le=1000)
    """Connections open at once per endpoint; raised to ``connection_pool_size`` if lower."""
    connect_timeout_seconds: float = Field(5.0, gt=0, le=3600)
    """Time allowed to open one connection (TCP, TLS and HTTP/2 handshakes)."""
    max_retries: int = Field(2, ge=0, le=10)
    """Retries of a failed call before its first byte (attempts = 1 + max_retries)."""
    first_chunk_timeout_seconds: float | None = Field(None, gt=0, le=3600)
    """Fail a stream whose first chunk takes longer than this; None: no limit."""
    hedging: bool = False
    """Send a duplicate request when the first is slow, keep whichever answers first."""


class BackendSettings(_Section):
    """The ``backend`` section: which server and models to talk to."""

    provider: Literal["openai", "ollama"] = "openai"
    """Wire protocol: an OpenAI-compatible server or Ollama's native API."""
    base_url: str | None = None
    """Server URL; None: the provider's default (OpenAI's API or a local Ollama)."""
    model: str | None = None
    """Default chat model."""
    extraction_model: str | None = None
    """Model for the pipeline's extraction step; None: ``model``."""
    formatting_model: str | None = None
    """Model for the pipeline's formatting step; None: ``model``."""
    api_key: SecretStr | None = None
    """API key; None: the chat model reads it from its own environment variable."""

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        found = check_base_url(value)
        if found is not None:
            raise PydanticCustomError(
                "fastpipe_url", "{reason}", {"reason": found.problem + found.hint_text()}
            )
        if has_credentials(value):
            raise PydanticCustomError(
                "fastpipe_url", "must not carry credentials: pass the key as backend.api_key"
            )
        return value

    @field_validator("api_key")
    @classmethod
    def _reject_masked_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value() in ("", _MASK):
            raise PydanticCustomError(
                "fastpipe_secret",
                "is empty or the masked placeholder of a dumped config; pass the real key "
                "(FASTPIPE_BACKEND__API_KEY or code) or leave it out",
            )
        return value


class PreloadSettings(_Section):
    """The ``preload`` section: which models to warm up and keep warm."""

    models: list[str] = Field(default_factory=list)
    """Models to warm up at start; empty: the backend's ``model`` when preloading is on."""
    keep_alive_refresh_seconds: float | None = Field(None, gt=0, le=86400)
    """Re-warm each model this often so the server keeps it loaded; None: never."""


class PipelineSettings(_Section):
    """The ``pipeline`` section: ranked fallbacks and where their statistics live."""

    min_success_rate: float = Field(0.5, ge=0, le=1)
    """Strategies whose success rate falls below this are demoted in the ranking."""
    probe_rate: float = Field(0.05, ge=0, le=1)
    """Share of calls that try a demoted strategy again, so rankings can recover."""
    store: Literal["memory", "sqlite", "redis"] = "memory"
    """Where strategy statistics are kept."""
    store_url: str | None = Field(None, repr=False)
    """SQLite path or Redis URL; required for ``redis``."""

    @model_validator(mode="after")
    def _check_store(self) -> Self:
        if self.store == "redis" and not self.store_url:
            raise PydanticCustomError(
                "fastpipe_store",
                "pipeline.store_url is required when pipeline.store = 'redis' "
                "(for example redis://127.0.0.1:6379/0)",
            )
        if self.store == "redis" and self.store_url:
            scheme = urlsplit(self.store_url).scheme
            if scheme not in ("redis", "rediss", "unix"):
                raise PydanticCustomError(
                    "fastpipe_store",
                    "pipeline.store_url must be a redis://, rediss:// or unix:// URL when "
                    f"pipeline.store = 'redis' (got scheme {scheme!r})",
                )
        return self


class FastpipeConfig(_ConfigErrorsMixin, BaseSettings):
    """The whole configuration of langchain-fastpipe (pydantic-settings).

    Build it with :meth:`load` (defaults < JSON file < environment < code), or directly
    from code: ``FastpipeConfig(performance_optimizations={...})`` (no file or
    environment is read). Instances are frozen; :meth:`with_overrides` returns a
    validated copy.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
        enable_decoding=False,  # env values are parsed by the field's type (EnvSource)
        extra="forbid",
        frozen=True,
        strict=True,
    )

    performance_optimizations: PerformanceOptimizations = Field(
        default_factory=PerformanceOptimizations
    )
    """Feature flags, pool sizes and timeouts."""
    backend: BackendSettings = Field(default_factory=BackendSettings)
    """Provider, server URL, models and API key."""
    preload: PreloadSettings = Field(default_factory=PreloadSettings)
    """Models to warm up."""
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    """Ranked fallbacks and their statistics store."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The layers, highest first: code, then (in :meth:`load`) environment and file."""
        load = LOADING.get()
        if load is None:
            return (init_settings,)
        sources = (EnvSource(settings_cls, load, _SECTIONS), FileSource(settings_cls, load))
        return (init_settings, *sources)

    # ----------------------------------------------------------------- loading
    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        env: Mapping[str, str] = os.environ,
        overrides: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> FastpipeConfig:
        """Load the configuration: defaults < JSON file < environment < code.

        Args:
            path: A JSON file; None: the file named by ``FASTPIPE_CONFIG`` in ``env``, if any.
            env: The environment to read ``FASTPIPE_*`` variables from.
            overrides: Values from code: nested (``{"backend": {"model": "m"}}``), dotted
                (``{"backend.model": "m"}``) or bare keys (``{"connection_pool_size": 5}``).
            **kwargs: More overrides, same forms as ``overrides``; they win over it.

        Returns:
            The validated configuration.

        Raises:
            ConfigError: A missing or malformed file, an unknown key or variable, or a value
                of the wrong type or out of range; the message names the key, the value, the
                allowed range and the layer it came from.
        """
        if path is None and env.get("FASTPIPE_CONFIG"):
            path = env["FASTPIPE_CONFIG"]
        code = normalize_overrides({**(overrides or {}), **kwargs})
        token = LOADING.set(Load(env=env, path=path, code=code))
        try:
            return cls(**code)
        finally:
            LOADING.reset(token)

    def with_overrides(
        self, overrides: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> FastpipeConfig:
        """A validated copy with ``overrides`` applied (same forms as :meth:`load`)."""
        data = self._plain_dump()
        code = normalize_overrides({**(overrides or {}), **kwargs})
        _deep_merge(data, code)
        try:
            validated = type(self).__pydantic_validator__.validate_python(data)
            return typing.cast("FastpipeConfig", validated)
        except ValidationError as exc:
            error = _config_error(exc, type(self), Load(env={}, path=None, code=code).label)
        raise error  # outside the handler: no chained ValidationError quoting raw input

    def to_json(self, *, indent: int | None = 2) -> str:
        """This configuration as JSON that :meth:`load` reads back; the API key is left out."""
        return self.model_dump_json(indent=indent, exclude={"backend": {"api_key"}})

    def _plain_dump(self) -> dict[str, Any]:
        """A nested dict of plain values, keeping the API key as a SecretStr (never text)."""
        data = self.model_dump()
        data["backend"]["api_key"] = self.backend.api_key
        return data

    # ------------------------------------------------------------- the knobs
    @property
    def flags(self) -> dict[str, bool]:
        """The four feature flags and hedging, by their documented names."""
        po = self.performance_optimizations
        return {
            "enable_model_preloading": po.enable_model_preloading,
            "enable_optimized_pipeline": po.enable_optimized_pipeline,
            "enable_connection_pooling": po.enable_connection_pooling,
            "enable_response_streaming": po.enable_response_streaming,
            "hedging": po.hedging,
        }

    def resolved_base_url(self, env: Mapping[str, str] | None = None) -> str:
        """``backend.base_url``, else the provider's default as ChatFastpipe resolves it.

        The default comes from ``providers.env_base_url``, the one place that resolves
        it: ``FASTPIPE_BASE_URL`` / ``OPENAI_BASE_URL`` for openai, else the provider's
        built-in URL.

        Args:
            env: The environment to read; None reads ``os.environ``.
        """
        if self.backend.base_url:
            return self.backend.base_url
        from langchain_fastpipe.providers import get_provider
        from langchain_fastpipe.providers._base import env_base_url

        return env_base_url(get_provider(self.backend.provider), env)

    def pipeline_options(self) -> PipelineOptions:
        """The settings an answer pipeline reads (pure; see :class:`PipelineOptions`)."""
        po, pipe, backend = self.performance_optimizations, self.pipeline, self.backend
        return PipelineOptions(
            optimized=po.enable_optimized_pipeline,
            hedge=po.hedging,
            first_chunk_timeout=po.first_chunk_timeout_seconds,
            streaming=po.enable_response_streaming,
            min_success_rate=pipe.min_success_rate,
            probe_rate=pipe.probe_rate,
            store=pipe.store,
            store_url=pipe.store_url,
            extraction_model=backend.extraction_model or backend.model,
            formatting_model=backend.formatting_model or backend.model,
        )

    def preload_options(self) -> PreloadOptions:
        """The settings a preloader reads (pure; see :class:`PreloadOptions`)."""
        po = self.performance_optimizations
        return PreloadOptions(
            enabled=po.enable_model_preloading,
            models=self.preload_models(),
            timeout=po.preload_timeout_seconds,
            keep_alive_refresh=self.preload.keep_alive_refresh_seconds,
        )

    def preload_models(self) -> list[str]:
        """Models to warm up: ``preload.models``, else the backend model; [] when off."""
        if not self.performance_optimizations.enable_model_preloading:
            return []
        if self.preload.models:
            return list(self.preload.models)
        return [self.backend.model] if self.backend.model else []


_SECTIONS: dict[str, type[_Section]] = {
    "performance_optimizations": PerformanceOptimizations,
    "backend": BackendSettings,
    "preload": PreloadSettings,
    "pipeline": PipelineSettings,
}

#: Every key name -> its section (key names are unique across sections).
_LEAVES: dict[str, str] = {k: s for s, m in _SECTIONS.items() for k in m.model_fields}


def normalize_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Turn code overrides into nested config data.

    Accepts section keys (a mapping or a section model), dotted keys
    (``"backend.model"``) and bare key names, which are unique across sections
    (``connection_pool_size``, ``model``). Unknown names are kept as they are, so validation rejects
    them with the nearest valid key.
    """
    out: dict[str, Any] = {}
    for name, value in overrides.items():
        if isinstance(value, BaseModel):
            value = _dump_section(value)
        if "." in name:
            section, _, key = name.partition(".")
            out.setdefault(section, {})[key] = value
        elif name in _SECTIONS:
            if isinstance(value, Mapping):
                out.setdefault(name, {}).update(value)
            else:
                out[name] = value
        elif name in _LEAVES:
            section = _LEAVES[name]
            out.setdefault(section, {})[name] = value
        else:
            out[name] = value
    return out


def _dump_section(model: BaseModel) -> dict[str, Any]:
    """A section model as a dict, keeping SecretStr values as they are."""
    data = model.model_dump()
    for key in type(model).model_fields:
        value = getattr(model, key)
        if isinstance(value, SecretStr):
            data[key] = value
    return data


def _deep_merge(base: dict[str, Any], layer: Mapping[str, Any]) -> None:
    """Merge ``layer`` into ``base`` key by key."""
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = dict(value) if isinstance(value, Mapping) else value


def _config_error(
    exc: ValidationError, root: type[BaseModel], label: Label | None = None
) -> ConfigError:
    """One ConfigError describing every problem of ``exc`` (see :func:`config_error`).

    A key of a section written at the top level of the whole configuration is suggested
    as ``section.key``.
    """
    leaves = _LEAVES if root is FastpipeConfig else None
    return config_error(exc, root, label, leaves)


# ----------------------------------------------------------- process-wide config
_current: FastpipeConfig | None = None
_current_lock = threading.Lock()


def get_config() -> FastpipeConfig:
    """The process-wide configuration, loaded on first use with :meth:`FastpipeConfig.load`."""
    global _current
    with _current_lock:
        if _current is None:
            _current = FastpipeConfig.load()
        return _current


def set_config(config: FastpipeConfig | None) -> None:
    """Replace the process-wide configuration; None makes the next get_config() reload it."""
    global _current
    if config is not None and not isinstance(config, FastpipeConfig):
        raise ConfigError(
            f"set_config() takes a FastpipeConfig or None, got {type(config).__name__}"
        )
    with _current_lock:
        _current = config
