"""LangChain's standard integration tests for ChatFastpipe, against the emulator.

Five variants: the OpenAI and Ollama wire formats, each over plain HTTP/1.1 (the default
``engine="auto"``: aiohttp for async calls) and over TLS with HTTP/2 (ALPN), plus OpenAI over
plain HTTP/1.1 on ``engine="httpx"``. The emulator is the session fixture of
``tests/conftest.py``; an autouse fixture stores it on the test instance, so
``chat_model_params`` (a property the standard tests read both through their ``model``
fixture and directly) can point at it.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_fastpipe.chat_models import ChatFastpipe
from langchain_fastpipe.emulator import EmulatorServer

#: Standard tests the emulator cannot pass, with the reason. The emulator answers
#: deterministically from the request's shape (schemas, tools), it does not read prompts.


class _EmulatorStandardTests(ChatModelIntegrationTests):
    provider = "openai"
    server_fixture = "emulator"
    engine = "auto"  # plain http: aiohttp for async calls; https: httpx with HTTP/2
    _server: EmulatorServer

    @pytest.fixture(autouse=True)
    def _use_emulator(self, request: pytest.FixtureRequest) -> None:
        self._server = request.getfixturevalue(self.server_fixture)

    @property
    def chat_model_class(self) -> type[ChatFastpipe]:
        return ChatFastpipe

    @property
    def chat_model_params(self) -> dict[str, Any]:
        server = self._server
        suffix = "/v1" if self.provider == "openai" else ""
        return {
            "model": "emulator",
            "provider": self.provider,
            "base_url": server.base_url + suffix,
            "verify": server.ca_cert_path or True,
            "engine": self.engine,
        }

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
    def model_override_value(self) -> str:
        return "emulator-other"


class TestOpenAIHTTP1(_EmulatorStandardTests):
    provider = "openai"
    server_fixture = "emulator"


class TestOpenAIHTTP1HttpxEngine(_EmulatorStandardTests):
    provider = "openai"
    server_fixture = "emulator"
    engine = "httpx"  # httpcore's HTTP/1.1 for async calls too


class TestOpenAIHTTP2TLS(_EmulatorStandardTests):
    provider = "openai"
    server_fixture = "emulator_h2"


class TestOllamaHTTP1(_EmulatorStandardTests):
    provider = "ollama"
    server_fixture = "emulator"


class TestOllamaHTTP2TLS(_EmulatorStandardTests):
    provider = "ollama"
    server_fixture = "emulator_h2"
