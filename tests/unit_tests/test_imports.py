"""The public surface: what `from langchain_fastpipe import *` gives, pinned."""

from __future__ import annotations

import subprocess
import sys

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


def test_lazy_names_resolve_and_unknown_names_raise() -> None:
    from langchain_fastpipe.pipeline import AnswerPipeline

    assert langchain_fastpipe.AnswerPipeline is AnswerPipeline
    assert set(langchain_fastpipe.__all__) <= set(dir(langchain_fastpipe))
    with pytest.raises(AttributeError, match="NoSuchThing"):
        langchain_fastpipe.NoSuchThing  # noqa: B018
