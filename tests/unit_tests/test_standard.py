"""LangChain's standard unit tests for ChatFastpipe.

``test_serdes`` runs unchanged against the snapshot in ``__snapshots__/test_standard.ambr``
(``--snapshot-update`` rewrites it when the serialized form changes on purpose).
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_fastpipe.chat_models import ChatFastpipe


class TestChatFastpipeStandard(ChatModelUnitTests):
    @pytest.fixture(autouse=True)
    def _in_cores_serialization_mapping(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Let ``allowed_objects="all"`` admit ChatFastpipe, as it admits ChatOpenAI.

        The stock ``test_serdes`` loads with ``allowed_objects="all"``, which (since
        langchain-core 1.2.5) admits only the classes listed in langchain-core's own
        serialization mapping; a partner gets there by a langchain-core release. Users
        load with ``allowed_objects=[ChatFastpipe]``: see ``test_serialization.py``.
        """
        load_module = importlib.import_module("langchain_core.load.load")  # not the function
        path = tuple(ChatFastpipe.lc_id())
        monkeypatch.setitem(load_module.ALL_SERIALIZABLE_MAPPINGS, path, path)
        monkeypatch.setattr(load_module, "_default_class_paths_cache", {})

    @property
    def chat_model_class(self) -> type[ChatFastpipe]:
        return ChatFastpipe

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "emulator", "base_url": "http://127.0.0.1:9/v1"}

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return (
            {"FASTPIPE_API_KEY": "env-key", "FASTPIPE_BASE_URL": "http://127.0.0.1:8080/v1"},
            {"model": "emulator"},
            {"api_key": "env-key", "base_url": "http://127.0.0.1:8080/v1"},
        )


class TestChatFastpipeOllamaStandard(TestChatFastpipeStandard):
    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "emulator", "provider": "ollama"}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return (
            {"FASTPIPE_API_KEY": "env-key"},
            {"model": "emulator", "provider": "ollama"},
            {"api_key": "env-key", "base_url": "http://127.0.0.1:11434"},
        )
