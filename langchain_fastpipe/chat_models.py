"""ChatFastpipe: a LangChain chat model over OpenAI-compatible servers and Ollama.

The model holds configuration only. Requests go through the shared pooled client of its
endpoint (:func:`langchain_fastpipe.transport.get_pool`); payloads and parsing live in
the pure :mod:`langchain_fastpipe.providers`; sync and async streams share one parser
core (:class:`langchain_fastpipe._chat._chunks.ChunkParser`). Structured output and the
``from_config`` mapping live in the private :mod:`langchain_fastpipe._chat`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Generator,
    Iterator,
    Mapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any, Literal, cast

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LangSmithParams, LanguageModelInput
from langchain_core.language_models.chat_models import (
    BaseChatModel,
    agenerate_from_stream,
    generate_from_stream,
)
from langchain_core.load.serializable import SerializedConstructor, SerializedNotImplemented
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticCustomError

from langchain_fastpipe._chat._chunks import ChunkParser as _ChunkParser
from langchain_fastpipe._chat._from_config import check_fields, config_kwargs, reject_removed_fields
from langchain_fastpipe._chat._preload import hand_to_preloader, set_preload_hook, warm_pending
from langchain_fastpipe._validation import field_error, has_credentials, quote_url, redact_url
from langchain_fastpipe.errors import ConfigError
from langchain_fastpipe.providers import PROVIDERS, Provider, get_provider
from langchain_fastpipe.providers._base import (
    ChatRequest,
    WarmupRequest,
    env_api_key,
    env_base_url,
)
from langchain_fastpipe.providers._convert import convert_tools, tool_choice_to_openai
from langchain_fastpipe.transport._config import (
    EndpointConfig,
    Engine,
    build_endpoint_config,
    knob,
    knob_paths,
)

if TYPE_CHECKING:
    from typing_extensions import Self

    from langchain_fastpipe.config import FastpipeConfig
    from langchain_fastpipe.transport._pool import PooledClient, ResponseInfo

__all__ = ["ChatFastpipe", "set_preload_hook"]

logger = logging.getLogger(__name__)


# The pool and its request machinery are imported when the first pool is created: at
# import they would allocate ~1,600 more objects for the garbage collector to track, enough
# to set off a full collection of the whole langchain heap (~50 ms).


def get_pool(config: EndpointConfig) -> PooledClient:
    """The shared pooled client of ``config`` (:func:`langchain_fastpipe.transport.get_pool`)."""
    from langchain_fastpipe.transport._pool import get_pool as shared_pool

    return shared_pool(config)


def _first_response_info() -> ResponseInfo:
    """A ResponseInfo; the first call imports the class and puts it in this one's place."""
    global _response_info
    from langchain_fastpipe.transport._pool import ResponseInfo

    _response_info = ResponseInfo
    return ResponseInfo()


#: Makes the ResponseInfo of a stream: the class itself after the first call.
_response_info: Callable[[], ResponseInfo] = _first_response_info


class ChatFastpipe(BaseChatModel):
    """A fast chat model for OpenAI-compatible servers and Ollama.

    Requests share one pooled HTTP/2-capable client per endpoint configuration, streams
    are read to their end so connections return to the pool, and the API key travels only
    as an ``Authorization`` header.

    Example:
        .. code-block:: python

            from langchain_fastpipe.chat_models import ChatFastpipe

            llm = ChatFastpipe(model="gemma3", provider="ollama")
            for chunk in llm.stream("Hello"):
                print(chunk.text, end="")
    """

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)

    provider: str = "openai"
    """Wire format: ``"openai"`` (Chat Completions, any compatible server) or ``"ollama"``
    (native ``/api/chat``, which honours ``keep_alive``)."""

    model_name: str = Field(alias="model")
    """Model name sent to the server."""

    base_url: str | None = None
    """``http(s)://host[:port][/path]``. OpenAI's includes ``/v1``. Default: env
    ``FASTPIPE_BASE_URL`` or ``OPENAI_BASE_URL`` (else ``https://api.openai.com/v1``) for
    openai, ``http://127.0.0.1:11434`` for ollama."""

    api_key: SecretStr | None = Field(default=None, alias="openai_api_key")
    """API key, sent as ``Authorization: Bearer``. Default: env ``FASTPIPE_API_KEY``, and
    for ``provider="openai"`` only, ``OPENAI_API_KEY`` (the OpenAI key never goes to an
    Ollama or other non-OpenAI provider). Never shown in repr, logs, errors or statistics."""

    temperature: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    """Sampling temperature; None leaves the server's default."""

    max_tokens: int | None = Field(default=None, ge=1)
    """Most tokens to generate (``max_tokens``; Ollama ``options.num_predict``)."""

    stop: list[str] | None = None
    """Default stop sequences (a call's ``stop`` replaces them)."""

    # The transport knobs: each is declared once, on EndpointConfig and its policies, with
    # its default, bounds and description; ``knob(path)`` maps the field onto it.

    timeout: float = knob("timeout")
    """Read/write/pool timeout per request, in seconds (``EndpointConfig.timeout``)."""

    connect_timeout: float = knob("connect_timeout")
    """Time allowed to open one connection, in seconds (``EndpointConfig.connect_timeout``)."""

    max_retries: int = knob("retry.max_retries")
    """Retries of a failed request before any byte reached the caller."""

    breaker_window: float = knob("breaker.window")
    """Seconds over which this model's circuit breaker (per endpoint and model) judges the
    failure rate of its calls (``BreakerPolicy.window``)."""

    breaker_min_calls: int = knob("breaker.min_calls")
    """Calls that must have ended within the window before the breaker may open."""

    breaker_failure_rate: float = knob("breaker.failure_rate")
    """Fraction of those calls that failed (5xx, timeouts) that opens the breaker; the
    endpoint-wide breaker counts connection failures the same way and blocks every model."""

    breaker_cooldown: float = knob("breaker.cooldown")
    """Seconds an open breaker fails fast (CircuitOpenError) before a probe call goes."""

    breaker_max_cooldown: float = knob("breaker.max_cooldown")
    """Longest cooldown, as it grows by ``breaker_cooldown_factor`` each time it reopens."""

    breaker_cooldown_factor: float = knob("breaker.cooldown_factor")
    """Growth of the cooldown each time the breaker opens again (>= 1)."""

    streaming: bool = False
    """When True, ``invoke`` streams and aggregates the chunks (callbacks get tokens)."""

    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """More top-level payload keys (OpenAI), or options/top-level keys (Ollama: option
    names such as ``num_ctx`` go to ``options``)."""

    keep_alive: str | int | float | None = None
    """Ollama only: how long the model stays loaded after a call (``"5m"``, ``-1``)."""

    http2: bool = knob("http2")
    """Offer HTTP/2 by ALPN on https endpoints (falls back to HTTP/1.1)."""

    http2_prior_knowledge: bool = knob("http2_prior_knowledge")
    """Speak HTTP/2 directly (h2c) on plain http endpoints; opt-in."""

    verify: bool | str = knob("verify")
    """TLS verification: True, False, or the path of a CA bundle (e.g. a test CA)."""

    max_connections: int = knob("limits.max_connections")
    """Most connections the endpoint's pool opens at once."""

    max_keepalive_connections: int = knob("limits.max_keepalive_connections")
    """Idle connections the endpoint's pool keeps for reuse."""

    engine: Engine = knob("engine")
    """Engine of async calls: ``"auto"`` (default: aiohttp for ``http://`` servers, our
    HTTP/2 client ``"h2"`` for ``https://``), ``"h2"``, ``"httpx"`` or ``"aiohttp"``. Sync
    calls always use httpx. See ``EndpointConfig.engine``."""

    pooling: bool = knob("pooling")
    """Share one pooled client per endpoint. False makes a fresh client per request (the
    baseline of benchmarks)."""

    preload: bool = False
    """Record the model in the default preloader on construction (through its hook, see
    :func:`set_preload_hook`), contacting nothing; equal models are recorded once. It is
    warmed by ``fastpipe_lifespan``/``preload()``/``preload_sync()``, or, when nothing
    started those, the model's first call starts every pending warm-up in the background."""

    #: ``(provider, api_key)`` when the key was read from that provider's env variables.
    _env_key: tuple[str, SecretStr | None] | None = PrivateAttr(default=None)

    #: ``(EndpointConfig, PooledClient | None)`` of the current fields; any field
    #: assignment (and ``model_copy(update=...)``) drops it.
    _transport: tuple[EndpointConfig, PooledClient | None] | None = PrivateAttr(default=None)

    #: ``(base_url, redacted base_url)``: the redaction of the last base URL seen.
    _shown_url: tuple[str, str] | None = PrivateAttr(default=None)

    def __init__(self, **data: Any) -> None:
        """Create the model and validate its configuration.

        Raises:
            ConfigError: A field is out of range or the provider or base URL is invalid
                (the message names the field).
        """
        key_given = "api_key" in data or "openai_api_key" in data
        reject_removed_fields(data)
        error: ConfigError | None = None
        try:
            super().__init__(**data)
        except ValidationError as exc:
            error = field_error(exc, type(self), "ChatFastpipe")
        if error is not None:
            raise error  # outside the handler: no chained ValidationError quoting raw input
        if self.base_url is None:
            self.base_url = env_base_url(get_provider(self.provider))
        _ = self.endpoint_config  # the URL and the cross-field checks of the transport
        if not key_given:
            key = env_api_key(self.provider_adapter)
            self.api_key = SecretStr(key) if key is not None else None
            self._env_key = (self.provider, self.api_key)
        if self.preload:
            hand_to_preloader(self)

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        if value not in PROVIDERS:
            raise PydanticCustomError(
                "fastpipe_value",
                "must be one of {known}",
                {"known": ", ".join(map(repr, PROVIDERS))},
            )
        return value

    @field_validator("base_url")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        if value is not None and has_credentials(value):
            raise PydanticCustomError(
                "fastpipe_url",
                "{problem}",
                {
                    "problem": "must not carry credentials: pass the key as api_key",
                    "shown": quote_url(value),
                    "hint_text": "",
                },
            )
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        """Set a field; the endpoint configuration is rebuilt from the fields on next use."""
        super().__setattr__(name, value)
        if name in type(self).model_fields:
            self._transport = None

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy of the model (``update`` is applied unvalidated, as pydantic does).

        The copy builds its own endpoint configuration from its fields.
        """
        copied = super().model_copy(update=update, deep=deep)
        if update:
            copied._transport = None
        return copied

    @classmethod
    def from_config(cls, config: FastpipeConfig, **overrides: Any) -> ChatFastpipe:
        """A chat model built from a :class:`~langchain_fastpipe.config.FastpipeConfig`.

        The configuration's wire settings (timeouts, pool sizes, retries, HTTP/2,
        pooling) map onto the fields declared with the same knobs; streaming off gives
        ``streaming=False`` and ``disable_streaming=True`` (``astream`` yields the whole
        answer as one chunk); ``preload`` follows ``enable_model_preloading`` (the model is
        recorded in the default preloader; off, it loads on first use). ``backend.model``,
        ``base_url`` and ``api_key`` are used when set.

        Args:
            config: The configuration.
            **overrides: Fields that win over the configuration (``model=``,
                ``preload=False``, ``temperature=``...).

        Returns:
            The chat model.

        Raises:
            ConfigError: An override is not a field of ChatFastpipe (the message names
                it and the nearest field), or a value is not valid.
        """
        kwargs = {**config_kwargs(config, _KNOBS), **overrides}
        check_fields(ChatFastpipe.model_fields, kwargs, set(overrides))
        return cls(**kwargs)

    # ------------------------------------------------------------------ request building

    @property
    def endpoint_config(self) -> EndpointConfig:
        """The transport configuration (the key of the shared pool).

        Built from the current fields on first use and kept until a field changes (by
        assignment or ``model_copy(update=...)``).

        Raises:
            ConfigError: A changed field is not valid (the message names it).
        """
        cached = self._transport
        if cached is not None:
            return cached[0]
        base_url = self.base_url
        if base_url is None:  # only after a field was reset by assignment or model_copy
            base_url = env_base_url(get_provider(self.provider))
        values = {path: getattr(self, name) for name, path in _KNOBS.items()}
        values["base_url"] = base_url
        if has_credentials(base_url):  # set by assignment: refused as at construction
            msg = (
                f"ChatFastpipe.base_url must not carry credentials: pass the key as api_key, "
                f"got {quote_url(base_url)!r}"
            )
            raise ConfigError(msg)
        config = build_endpoint_config(values, owner="ChatFastpipe", names=_KNOB_NAMES)
        self._transport = (config, None)
        return config

    @property
    def pool(self) -> PooledClient:
        """The shared pooled client of :attr:`endpoint_config`, cached on the instance."""
        cached = self._transport
        if cached is not None and cached[1] is not None:
            return cached[1]
        config = self.endpoint_config
        client = get_pool(config)
        self._transport = (config, client)
        if self.preload:  # the first call: start the warm-ups nothing started yet
            warm_pending()
        return client

    def preload_key(self) -> tuple[str, str, str, str, str]:
        """What makes two models' warm-ups the same: server, model and load options.

        ``(provider, model, redacted base URL, warm-up path, warm-up payload)``; transport
        options such as timeouts are not part of it. Models with equal keys are handed
        to the preloader once.
        """
        warm = self.warmup_request()
        return (
            self.provider,
            self.model_name,
            self.endpoint_config.endpoint,
            warm.path,
            repr(sorted(warm.payload.items())),
        )

    @property
    def provider_adapter(self) -> Provider:
        """The pure wire-format adapter of :attr:`provider`."""
        return get_provider(self.provider)

    def _current_key(self) -> SecretStr | None:
        """The API key to send: an env key is re-read if the provider changed since."""
        key = self.api_key
        env = self._env_key
        if env is not None and key is env[1] and env[0] != self.provider:
            fresh = env_api_key(self.provider_adapter)  # never another provider's key
            return SecretStr(fresh) if fresh is not None else None
        return key

    def _headers(self) -> dict[str, str]:
        key = self._current_key()
        if key is None:
            return {}
        return {"Authorization": f"Bearer {key.get_secret_value()}"}

    def _chat_request(
        self, messages: Sequence[BaseMessage], stop: list[str] | None, kwargs: Mapping[str, Any]
    ) -> ChatRequest:
        """Merge fields, call kwargs and bound arguments into one ChatRequest (pure)."""
        extra = dict(kwargs)
        for key in ("stream", "ls_structured_output_format", "strict"):
            extra.pop(key, None)
        model = extra.pop("model", None) or self.model_name
        tools = extra.pop("tools", None)
        tool_choice = extra.pop("tool_choice", None)
        response_format = extra.pop("response_format", None)
        temperature = extra.pop("temperature", self.temperature)
        max_tokens = extra.pop("max_tokens", self.max_tokens)
        keep_alive = extra.pop("keep_alive", self.keep_alive)
        call_stop = extra.pop("stop", None)
        stop_seq = stop if stop is not None else (call_stop if call_stop is not None else self.stop)
        formatted_tools = convert_tools(tools) if tools else None
        names = [t["function"]["name"] for t in formatted_tools or () if "function" in t]
        if response_format is not None and not (
            isinstance(response_format, Mapping) and "type" in response_format
        ):
            from langchain_fastpipe._chat._structured import json_schema_response_format

            response_format = json_schema_response_format(response_format)
        return ChatRequest(
            model=model,
            messages=messages,
            temperature=temperature,
            max_tokens=max_tokens,
            stop=stop_seq or None,
            tools=formatted_tools,
            tool_choice=tool_choice_to_openai(tool_choice, names) if formatted_tools else None,
            response_format=response_format,
            keep_alive=keep_alive,
            extra={**self.model_kwargs, **extra},
        )

    def _payload(
        self,
        messages: Sequence[BaseMessage],
        stop: list[str] | None,
        kwargs: Mapping[str, Any],
        *,
        stream: bool,
    ) -> dict[str, Any]:
        request = self._chat_request(messages, stop, kwargs)
        return self.provider_adapter.build_payload(request, stream=stream)

    def warmup_request(self) -> WarmupRequest:
        """The request that loads this model as its real calls would (for the preloader).

        For Ollama it is ``/api/generate`` with no prompt, ``keep_alive`` and exactly the
        ``options`` of a real call; for OpenAI a one-token completion.
        """
        return self.provider_adapter.warmup_payload(self._chat_request([], None, {}))

    async def awarmup(self) -> ResponseInfo:
        """Send :meth:`warmup_request` through the shared pool; returns its response info."""
        warm = self.warmup_request()
        _, info = await self.pool.apost_json(
            warm.path, warm.payload, headers=self._headers(), model=warm.payload.get("model")
        )
        return info

    def warmup(self) -> ResponseInfo:
        """Synchronous :meth:`awarmup`."""
        warm = self.warmup_request()
        _, info = self.pool.post_json(
            warm.path, warm.payload, headers=self._headers(), model=warm.payload.get("model")
        )
        return info

    # ------------------------------------------------------------------ results

    def _finish_result(self, result: ChatResult, info: ResponseInfo) -> ChatResult:
        for generation in result.generations:
            meta = generation.message.response_metadata
            meta.setdefault("model_name", self.model_name)
            if info.http_version:
                meta["http_version"] = info.http_version
        return result

    # ------------------------------------------------------------------ LangChain overrides

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))
        payload = self._payload(messages, stop, kwargs, stream=False)
        pool = self.pool
        logger.debug("chat %s model=%s at %s", self.provider, payload["model"], pool.endpoint)
        body, info = pool.post_json(
            self.provider_adapter.chat_path,
            payload,
            headers=self._headers(),
            model=payload["model"],
        )
        result = self.provider_adapter.parse_response(body, endpoint=pool.endpoint)
        return self._finish_result(result, info)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))
        payload = self._payload(messages, stop, kwargs, stream=False)
        pool = self.pool
        logger.debug("chat %s model=%s at %s", self.provider, payload["model"], pool.endpoint)
        body, info = await pool.apost_json(
            self.provider_adapter.chat_path,
            payload,
            headers=self._headers(),
            model=payload["model"],
        )
        result = self.provider_adapter.parse_response(body, endpoint=pool.endpoint)
        return self._finish_result(result, info)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        payload = self._payload(messages, stop, kwargs, stream=True)
        pool = self.pool
        logger.debug("stream %s model=%s at %s", self.provider, payload["model"], pool.endpoint)
        info = _response_info()
        core = _ChunkParser(self.provider_adapter.stream_parser(endpoint=pool.endpoint), info=info)
        source = pool.stream(
            self.provider_adapter.chat_path,
            payload,
            headers=self._headers(),
            info=info,
            model=payload["model"],
        )
        with contextlib.closing(cast(Generator[bytes, None, None], source)):
            for data in source:  # read to the end: the connection goes back to the pool
                for chunk in core.feed(data):
                    if run_manager:
                        run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                    yield chunk
        for chunk in core.finish():
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        payload = self._payload(messages, stop, kwargs, stream=True)
        pool = self.pool
        logger.debug("stream %s model=%s at %s", self.provider, payload["model"], pool.endpoint)
        info = _response_info()
        core = _ChunkParser(self.provider_adapter.stream_parser(endpoint=pool.endpoint), info=info)
        source = pool.astream(
            self.provider_adapter.chat_path,
            payload,
            headers=self._headers(),
            info=info,
            model=payload["model"],
        )
        async with contextlib.aclosing(cast(AsyncGenerator[bytes, None], source)):
            async for data in source:  # read to the end: the connection goes back to the pool
                for chunk in core.feed(data):
                    if run_manager:
                        await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                    yield chunk
        for chunk in core.finish():
            if run_manager:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    @property
    def _llm_type(self) -> str:
        """``fastpipe-<provider>``, used by LangChain for tracing and caching."""
        return f"fastpipe-{self.provider}"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        """Parameters that identify this model (the base URL redacted, never the key)."""
        return {
            "provider": self.provider,
            "model_name": self.model_name,
            "base_url": self._redacted_base_url(),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "stop": self.stop,
            "keep_alive": self.keep_alive,
            **self.model_kwargs,
        }

    def _get_invocation_params(
        self, stop: list[str] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """LangChain's invocation parameters, without its per-call deprecation-warning guard.

        ``BaseChatModel`` builds them through the deprecated ``dict()`` inside a
        ``warnings.catch_warnings`` block (a few microseconds per call) only to honour
        subclasses that override ``dict()``; for those this defers to it unchanged.
        """
        if type(self).dict is not BaseChatModel.dict:
            return super()._get_invocation_params(stop=stop, **kwargs)
        params = self.asdict()
        params["stop"] = stop
        return {**params, **kwargs}

    def _redacted_base_url(self) -> str:
        """:func:`redact_url` of ``base_url``, computed once per base URL (runs every call)."""
        url = self.base_url or ""
        cached = self._shown_url
        if cached is not None and cached[0] == url:
            return cached[1]
        shown = redact_url(url)
        self._shown_url = (url, shown)
        return shown

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        """Standard LangSmith tracing parameters (a per-call ``model`` wins)."""
        params = LangSmithParams(
            ls_provider=self.provider,
            ls_model_name=kwargs.get("model") or self.model_name,
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
        )
        if max_tokens := kwargs.get("max_tokens", self.max_tokens):
            params["ls_max_tokens"] = max_tokens
        if ls_stop := stop or kwargs.get("stop") or self.stop:
            params["ls_stop"] = ls_stop
        return params

    # ------------------------------------------------------------------ LangChain serialization

    @classmethod
    def is_lc_serializable(cls) -> bool:
        """True: ``langchain_core.load.dumps``/``dumpd`` write the model, ``loads`` rebuilds it.

        The API key is written as a secret reference, ``{"lc": 1, "type": "secret",
        "id": ["FASTPIPE_API_KEY"]}``, never as its value. Loading needs the package's
        namespace and class allowed, and the key given back::

            loads(text, valid_namespaces=["langchain_fastpipe"],
                  allowed_objects=[ChatFastpipe],
                  secrets_map={"FASTPIPE_API_KEY": key})  # or secrets_from_env=True
        """
        return True

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        """``["langchain_fastpipe", "chat_models"]``: the module ``loads`` imports it from."""
        return ["langchain_fastpipe", "chat_models"]

    @property
    def lc_secrets(self) -> dict[str, str]:
        """``{"api_key": "FASTPIPE_API_KEY"}``: the key is serialized as that secret's id."""
        return {"api_key": "FASTPIPE_API_KEY"}

    def to_json(self) -> SerializedConstructor | SerializedNotImplemented:
        """LangChain's serialized form: constructor arguments, the key as a secret id.

        A key the model read from the environment is left out, so the loaded model reads
        its own environment as any new model does (``FASTPIPE_API_KEY``, or for OpenAI
        ``OPENAI_API_KEY``); a key explicitly set to None stays None.
        """
        data = super().to_json()
        if data["type"] != "constructor":
            return data
        kwargs = dict(data["kwargs"])
        env = self._env_key
        if env is not None and self.api_key is env[1]:
            kwargs.pop("api_key", None)
        elif self.api_key is None:
            kwargs["api_key"] = None
        data["kwargs"] = kwargs
        return data

    def _get_llm_string(self, stop: list[str] | None = None, **kwargs: Any) -> str:
        """The LLM-cache key: the current invocation parameters, as for unserializable models.

        ``BaseChatModel`` keys a serializable model on ``_serialized``, computed once per
        instance, so a field changed afterwards (by assignment or ``model_copy``) would
        still hit the entries of the old value.
        """
        params = {**self._get_invocation_params(stop=stop, **kwargs), **kwargs}
        return str(sorted(params.items()))

    # ------------------------------------------------------------------ tools and structure

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | Any],
        *,
        tool_choice: dict[str, Any] | str | bool | None = None,
        strict: bool | None = None,
        parallel_tool_calls: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (BaseTool, functions, pydantic models, JSON schemas) to the model.

        Args:
            tools: The tools; converted with ``convert_to_openai_tool``.
            tool_choice: ``"auto"``, ``"none"``, ``"required"``/``"any"``/``True``, the
                name of one of ``tools``, or an OpenAI ``tool_choice`` dict.
            strict: Ask for strict argument schemas (OpenAI structured outputs).
            parallel_tool_calls: Allow several tool calls per reply (OpenAI only).
            **kwargs: More arguments bound to every call.

        Returns:
            A runnable calling the model with the tools.

        Raises:
            ConfigError: A tool cannot be converted, or ``tool_choice`` is unknown.
        """
        formatted = convert_tools(tools, strict=strict)
        if tool_choice is not None and tool_choice is not False:
            names = [t["function"]["name"] for t in formatted if "function" in t]
            kwargs["tool_choice"] = tool_choice_to_openai(tool_choice, names)
        if parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = parallel_tool_calls
        return super().bind(tools=formatted, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """A runnable whose output follows ``schema`` (as langchain-openai does it).

        Args:
            schema: A pydantic class (output is an instance), or a TypedDict / JSON schema
                / OpenAI function dict (output is a dict). Optional for ``json_mode``.
            method: ``"json_schema"`` (``response_format`` / Ollama ``format`` with the
                schema; default), ``"function_calling"`` (a forced tool call) or
                ``"json_mode"`` (any JSON object; describe the shape in the prompt).
            include_raw: Return ``{"raw", "parsed", "parsing_error"}`` instead of raising
                on parsing errors.
            strict: Ask for strict schema adherence (not with ``json_mode``).
            **kwargs: More arguments bound to every call.

        Returns:
            The structured-output runnable.

        Raises:
            ValueError: An unknown method, a missing schema, or ``strict`` with json_mode.
        """
        # Imported here: output parsers and function-calling utilities are ~5 ms of import
        # a chat model that never asks for structured output does not pay.
        from langchain_fastpipe._chat._structured import structured_output

        return structured_output(
            self, schema, method=method, include_raw=include_raw, strict=strict, kwargs=kwargs
        )


#: ChatFastpipe's transport fields -> their knob paths in EndpointConfig (from ``knob``).
_KNOBS: dict[str, str] = knob_paths(ChatFastpipe)
#: Knob path -> the ChatFastpipe field (errors name the field the user wrote).
_KNOB_NAMES: dict[str, str] = {path: name for name, path in _KNOBS.items()}


# LangChain inspects ``self._agenerate``'s / ``self._generate``'s signature on every call (to
# see whether they take ``run_manager``); a precomputed ``__signature__`` makes that a lookup.
for _method in (ChatFastpipe._generate, ChatFastpipe._agenerate):
    _method.__signature__ = inspect.signature(_method)  # type: ignore[union-attr]
