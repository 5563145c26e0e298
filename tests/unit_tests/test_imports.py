"""The public surface: what `from langchain_fastpipe import *` gives, pinned."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
import types

import pytest

import langchain_fastpipe

EXPECTED_ALL = [
    "AnswerPipeline",
    "BreakerPolicy",
    "ChatFastpipe",
    "EndpointConfig",
    "FastpipeConfig",
    "ModelPreloader",
    "PoolLimits",
    "PooledClient",
    "PreloadResult",
    "RankedFallbacks",
    "RetryPolicy",
    "StreamResult",
    "StreamStats",
    "StreamingChunk",
    "TimeToFirstTokenHandler",
    "__version__",
    "aclose_pools",
    "acollect",
    "aconsume",
    "astream_chunks",
    "collect",
    "consume",
    "default_preloader",
    "fastpipe_lifespan",
    "get_config",
    "get_pool",
    "get_stats",
    "guard_stream",
    "set_config",
    "stream_chunks",
]


def test_all_is_pinned_and_sorted() -> None:
    assert langchain_fastpipe.__all__ == EXPECTED_ALL
    assert sorted(langchain_fastpipe.__all__) == langchain_fastpipe.__all__


def test_every_public_name_exists_and_is_documented() -> None:
    for name in langchain_fastpipe.__all__:
        obj = getattr(langchain_fastpipe, name)
        if name != "__version__" and callable(obj):
            assert (obj.__doc__ or "").strip(), f"{name} has no docstring"


def test_version_comes_from_package_metadata() -> None:
    from importlib.metadata import version

    assert langchain_fastpipe.__version__ == version("langchain-fastpipe")


def test_submodules_are_not_shadowed_by_exports() -> None:
    import langchain_fastpipe.preload as preload_module
    import langchain_fastpipe.streaming as streaming_module

    assert preload_module.__name__ == "langchain_fastpipe.preload"
    assert streaming_module.__name__ == "langchain_fastpipe.streaming"


def test_import_has_no_side_effects_on_the_network() -> None:
    # Importing must neither block nor fail, even with a preload spec naming a dead server.
    code = "import langchain_fastpipe; print('ok')"
    env = {"FASTPIPE_PRELOAD": "openai:m@http://127.0.0.1:9", "PATH": ""}
    out = subprocess.run(  # noqa: S603 - our interpreter, fixed code
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "ok"


def test_importing_the_chat_model_loads_only_what_it_needs() -> None:
    # Public names are imported on first use: the chat model does not drag in the
    # pipeline, streaming, configuration, preloading, emulator or local-server modules.
    code = (
        "import sys\n"
        "from langchain_fastpipe import ChatFastpipe\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('langchain_fastpipe'))))\n"
    )
    out = subprocess.run(  # noqa: S603 - our interpreter, fixed code
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(out.stdout.split())
    assert "langchain_fastpipe.chat_models" in loaded
    for heavy in ("pipeline", "streaming", "config", "preload", "emulator", "local", "bench"):
        assert f"langchain_fastpipe.{heavy}" not in loaded, sorted(loaded)
    # The transport imports tenacity at the first retry, h2 when an HTTP/2-capable client
    # is built, aiohttp when the aiohttp engine is built.
    for lazy in ("_retrying", "_h2", "_aiohttp"):
        assert f"langchain_fastpipe.transport.{lazy}" not in loaded, sorted(loaded)


#: What the chat model needs only once a model is built or called, not at import: the
#: provider adapters (one is loaded when a model of its provider is built), the pool and its
#: request machinery, and the runtime and metrics behind them (at the first call).
#: Importing them with the class allocated enough objects to set off a full garbage
#: collection of the langchain heap (~50 ms).
FIRST_CALL_MODULES = (
    "langchain_fastpipe._metrics",
    "langchain_fastpipe._runtime",
    "langchain_fastpipe.providers._decoders",
    "langchain_fastpipe.providers._fastchunk",
    "langchain_fastpipe.providers._ollama",
    "langchain_fastpipe.providers._openai",
    "langchain_fastpipe.stats",
    "langchain_fastpipe.transport._admission",
    "langchain_fastpipe.transport._attempt",
    "langchain_fastpipe.transport._breaker",
    "langchain_fastpipe.transport._loops",
    "langchain_fastpipe.transport._pool",
    "langchain_fastpipe.transport._retry",
    "langchain_fastpipe.transport._stats",
)


def _fastpipe_modules_after(code: str) -> set[str]:
    """The ``langchain_fastpipe`` modules in ``sys.modules`` after ``code``, in a fresh process."""
    code += (
        "\nimport sys\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('langchain_fastpipe'))))\n"
    )
    out = subprocess.run(  # noqa: S603 - our interpreter, fixed code
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return set(out.stdout.split())


def test_importing_the_chat_model_leaves_the_pool_and_providers_for_the_first_call() -> None:
    loaded = _fastpipe_modules_after("from langchain_fastpipe import ChatFastpipe")
    assert "langchain_fastpipe.chat_models" in loaded
    assert "langchain_fastpipe.transport._config" in loaded  # the fields are its knobs
    early = sorted(loaded.intersection(FIRST_CALL_MODULES))
    assert not early, early


def test_building_a_model_loads_its_provider_only_and_no_pool() -> None:
    loaded = _fastpipe_modules_after(
        "from langchain_fastpipe import ChatFastpipe\n"
        "ChatFastpipe(model='m', provider='ollama', base_url='http://127.0.0.1:9')"
    )
    assert "langchain_fastpipe.providers._ollama" in loaded
    assert "langchain_fastpipe.providers._openai" not in loaded
    assert "langchain_fastpipe.transport._pool" not in loaded


@pytest.mark.parametrize(
    "module_name", ["langchain_fastpipe.transport", "langchain_fastpipe.providers"]
)
def test_lazy_submodule_names_resolve_and_unknown_names_raise(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert set(module.__all__) <= set(dir(module))
    for name in module.__all__:
        obj = getattr(module, name)
        assert getattr(module, name) is obj
        assert obj.__module__.startswith(module_name), (name, obj.__module__)
    with pytest.raises(AttributeError, match="NoSuchThing"):
        module.NoSuchThing  # noqa: B018


def _modules_after(statement: str) -> set[str]:
    """Top-level module names in ``sys.modules`` after ``statement``, in a fresh interpreter."""
    names = "{m.partition('.')[0] for m in sys.modules}"
    code = f"import sys\n{statement}\nprint(' '.join(sorted({names})))\n"
    out = subprocess.run(  # noqa: S603 - our interpreter, fixed code
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return set(out.stdout.split())


def test_importing_the_chat_model_loads_no_heavy_transport_dependency() -> None:
    # tenacity drags in tornado where that is installed (~65 ms); h2 and aiohttp wait for a
    # request. langchain-core itself imports aiohttp (through langsmith), so what counts is
    # what the chat model adds to a bare BaseChatModel import.
    base = _modules_after("from langchain_core.language_models import BaseChatModel")
    ours = _modules_after("from langchain_fastpipe import ChatFastpipe")
    for heavy in ("tenacity", "tornado", "aiohttp", "h2"):
        assert heavy not in ours - base, sorted(ours - base)
    assert "tenacity" not in ours
    assert "tornado" not in ours
    assert "h2" not in ours


def test_lazy_names_resolve_and_unknown_names_raise() -> None:
    from langchain_fastpipe.pipeline import AnswerPipeline

    assert langchain_fastpipe.AnswerPipeline is AnswerPipeline
    assert set(langchain_fastpipe.__all__) <= set(dir(langchain_fastpipe))
    with pytest.raises(AttributeError, match="NoSuchThing"):
        langchain_fastpipe.NoSuchThing  # noqa: B018


#: Each public module's ``__all__``: what a user imports from it. Everything else in these
#: modules (and all of ``_bench``, ``pipeline._*``, ``providers._*``, ...) is private.
PUBLIC_MODULES: dict[str, list[str]] = {
    "langchain_fastpipe.bench": ["main"],
    "langchain_fastpipe.cli": ["main"],
    "langchain_fastpipe.config": [
        "BackendSettings",
        "FastpipeConfig",
        "PerformanceOptimizations",
        "PipelineSettings",
        "PreloadSettings",
        "get_config",
        "set_config",
    ],
    "langchain_fastpipe.emulator": [
        "EmulatorApp",
        "EmulatorConfig",
        "EmulatorServer",
        "Fault",
        "ModelProfile",
    ],
    "langchain_fastpipe.errors": [
        "AllStrategiesFailedError",
        "AuthenticationError",
        "BadRequestError",
        "CircuitOpenError",
        "ConfigError",
        "ContextLengthError",
        "EndpointConnectError",
        "EndpointTimeoutError",
        "FastpipeError",
        "FirstChunkTimeoutError",
        "HTTPStatusError",
        "InterChunkTimeoutError",
        "LocalServerError",
        "NotFoundError",
        "PermissionDeniedError",
        "PipelineError",
        "PreloadError",
        "ProtocolViolationError",
        "RateLimitError",
        "ResponseTooLargeError",
        "ServerError",
        "StrategyTimeoutError",
        "StrategyValidationError",
        "StreamStallError",
        "TransportError",
    ],
    "langchain_fastpipe.local": ["LocalModelServer", "find_binary", "find_free_port"],
    "langchain_fastpipe.pipeline": [
        "AnswerPipeline",
        "FixedOrderPolicy",
        "MemoryStore",
        "Outcome",
        "RankedFallbacks",
        "Ranking",
        "RankingPolicy",
        "RankingState",
        "RedisStore",
        "SQLiteStore",
        "StatsStore",
        "Strategy",
        "StrategyStats",
        "StrategyTimeoutError",
        "StrategyValidationError",
        "ThompsonPolicy",
        "is_answer",
    ],
    "langchain_fastpipe.preload": [
        "ModelPreloader",
        "PreloadResult",
        "PreloadStatus",
        "Warmable",
        "default_preloader",
        "fastpipe_lifespan",
        "preload",
        "preload_sync",
        "register",
    ],
    "langchain_fastpipe.prometheus": ["PrometheusCollector", "render_prometheus", "stats_app"],
    "langchain_fastpipe.prompts": ["FEW_SHOT_PROMPT"],
    "langchain_fastpipe.providers": [
        "OllamaProvider",
        "OpenAIProvider",
        "Provider",
        "get_provider",
    ],
    "langchain_fastpipe.stats": ["get_stats"],
    "langchain_fastpipe.transport": [
        "BreakerPolicy",
        "BreakerRegistry",
        "CircuitBreaker",
        "EndpointConfig",
        "PoolLimits",
        "PooledClient",
        "ResponseInfo",
        "RetryPolicy",
        "aclose_pools",
        "get_pool",
    ],
}


def _docstring(module: types.ModuleType, name: str) -> str:
    """The object's own docstring; for a module-level instance, its ``#:`` comment."""
    obj = getattr(module, name)
    if inspect.isclass(obj):
        doc = vars(obj).get("__doc__") or ""
        # A dataclass without a docstring gets its signature as one: that is not a doc.
        return "" if doc.startswith(f"{obj.__name__}(") else doc.strip()
    if inspect.isroutine(obj):
        return (obj.__doc__ or "").strip()
    lines = inspect.getsource(module).splitlines()
    for i, line in enumerate(lines):
        if re.match(rf"{re.escape(name)}\s*[:=]", line):
            comment: list[str] = []
            while i and lines[i - 1].startswith("#:"):
                i -= 1
                comment.insert(0, lines[i].removeprefix("#:").strip())
            return " ".join(comment)
    return ""


@pytest.mark.parametrize(("module_name", "expected"), sorted(PUBLIC_MODULES.items()))
def test_public_modules_all_is_pinned_and_sorted(module_name: str, expected: list[str]) -> None:
    module = importlib.import_module(module_name)
    assert module.__all__ == expected
    assert sorted(expected) == expected


@pytest.mark.parametrize("module_name", sorted(PUBLIC_MODULES))
def test_public_modules_names_exist_and_are_documented(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert (module.__doc__ or "").strip(), f"{module_name} has no module docstring"
    for name in module.__all__:
        assert hasattr(module, name), f"{module_name}.{name} does not exist"
        assert _docstring(module, name), f"{module_name}.{name} has no docstring"


def test_strategy_errors_are_in_the_one_tree_and_still_importable_from_the_pipeline() -> None:
    from langchain_fastpipe import errors, pipeline

    for name in ("StrategyTimeoutError", "StrategyValidationError"):
        cls = getattr(errors, name)
        assert getattr(pipeline, name) is cls
        assert cls.__module__ == "langchain_fastpipe.errors"
        assert issubclass(cls, errors.PipelineError)
        assert name in (errors.__doc__ or "")  # drawn in the tree of the module docstring
