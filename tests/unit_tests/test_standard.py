"""LangChain's standard unit tests for ChatFastpipe."""

from __future__ import annotations

from typing import Any

from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_fastpipe.chat_models import ChatFastpipe


class TestChatFastpipeStandard(ChatModelUnitTests):
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
