"""LangChain serialization of ChatFastpipe: ``dumps``/``loads`` round-trip, the key as a secret.

The API key is written as ``{"lc": 1, "type": "secret", "id": ["FASTPIPE_API_KEY"]}`` and
given back to ``loads`` through ``secrets_map`` or ``secrets_from_env``; a key the model read
from the environment is left out (the loaded model reads its own environment). A loaded
model answers over the wire against the emulator, which refuses requests without the key.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.caches import InMemoryCache
from langchain_core.load import dumpd, dumps, loads

from langchain_fastpipe.chat_models import ChatFastpipe
from langchain_fastpipe.emulator import EmulatorConfig, EmulatorServer
from langchain_fastpipe.errors import AuthenticationError

MakeEmulator = Callable[..., EmulatorServer]

SECRET = "sk-test-SERDES-SECRET-42"
KEY_ENV = ("FASTPIPE_API_KEY", "OPENAI_API_KEY", "FASTPIPE_BASE_URL", "OPENAI_BASE_URL")
SECRET_REF = {"lc": 1, "type": "secret", "id": ["FASTPIPE_API_KEY"]}
PROMPT = "What is the capital of France?"

pytestmark = pytest.mark.filterwarnings("ignore:The function `loads` is in beta")

#: Non-default values of every ChatFastpipe field that is serialized (api_key aside).
NON_DEFAULTS: dict[str, Any] = {
    "temperature": 0.3,
    "max_tokens": 7,
    "stop": ["\n\n", "END"],
    "timeout": 12.5,
    "connect_timeout": 2.0,
    "max_retries": 4,
    "breaker_window": 12.0,
    "breaker_min_calls": 3,
    "breaker_failure_rate": 0.75,
    "breaker_cooldown": 0.5,
    "breaker_max_cooldown": 7.5,
    "breaker_cooldown_factor": 3.0,
    "streaming": True,
    "model_kwargs": {"top_p": 0.9, "seed": 7},
    "keep_alive": "5m",
    "http2": False,
    "verify": False,
    "max_connections": 7,
    "max_keepalive_connections": 3,
    "engine": "aiohttp",
    "pooling": False,
}


@pytest.fixture(autouse=True)
def _no_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in KEY_ENV:
        monkeypatch.delenv(name, raising=False)


def load_text(text: str, **kwargs: Any) -> ChatFastpipe:
    """``loads`` as a user loads a ChatFastpipe (its namespace and class allowed)."""
    loaded = loads(
        text,
        valid_namespaces=["langchain_fastpipe"],
        allowed_objects=[ChatFastpipe],
        **kwargs,
    )
    assert type(loaded) is ChatFastpipe
    return loaded


def fields_of(model: ChatFastpipe) -> dict[str, Any]:
    return {name: getattr(model, name) for name in ("provider", "model_name", "base_url",
                                                     *NON_DEFAULTS)}  # fmt: skip


@pytest.mark.parametrize("provider", ["openai", "ollama"])
def test_dumps_loads_round_trips_non_default_fields(provider: str) -> None:
    model = ChatFastpipe(
        model="emu-model", provider=provider, base_url="http://127.0.0.1:9/base",
        api_key=SECRET, **NON_DEFAULTS,
    )  # fmt: skip
    for name, value in NON_DEFAULTS.items():  # the values really are not the defaults
        assert value != ChatFastpipe.model_fields[name].get_default(call_default_factory=True)

    text = dumps(model)
    data = json.loads(text)
    assert data["id"] == ["langchain_fastpipe", "chat_models", "ChatFastpipe"]
    assert data["type"] == "constructor"
    loaded = load_text(text, secrets_map={"FASTPIPE_API_KEY": SECRET})

    assert fields_of(loaded) == fields_of(model)
    assert loaded.endpoint_config == model.endpoint_config  # the same shared pool
    assert loaded._identifying_params == model._identifying_params
    assert loaded.api_key is not None
    assert loaded.api_key.get_secret_value() == SECRET
    assert dumps(loaded) == text  # stable: a loaded model dumps the same text


def test_key_is_a_secret_reference_never_its_value() -> None:
    for model in (
        ChatFastpipe(model="m", base_url="http://127.0.0.1:9/v1", api_key=SECRET),
        ChatFastpipe(model="m", base_url="http://127.0.0.1:9/v1", openai_api_key=SECRET),
        ChatFastpipe(model="m", provider="ollama", base_url="http://127.0.0.1:9", api_key=SECRET),
    ):
        data = dumpd(model)
        assert data["kwargs"]["api_key"] == SECRET_REF
        assert "openai_api_key" not in data["kwargs"]
        for text in (dumps(model), dumps(model, pretty=True), repr(data)):
            assert SECRET not in text
            assert SECRET.replace("-", "") not in text.replace("-", "")


def test_secret_comes_back_from_secrets_map_or_env_only(monkeypatch: pytest.MonkeyPatch) -> None:
    text = dumps(ChatFastpipe(model="m", base_url="http://127.0.0.1:9/v1", api_key=SECRET))

    from_map = load_text(text, secrets_map={"FASTPIPE_API_KEY": SECRET})
    assert from_map._headers() == {"Authorization": f"Bearer {SECRET}"}

    monkeypatch.setenv("FASTPIPE_API_KEY", SECRET)
    from_env = load_text(text, secrets_from_env=True)
    assert from_env._headers() == {"Authorization": f"Bearer {SECRET}"}

    # Not given back: the loaded model has no key (a payload does not pull env secrets).
    without = load_text(text)
    assert without.api_key is None
    assert without._headers() == {}


@pytest.mark.parametrize(
    ("provider", "env", "expected"),
    [
        ("openai", {"FASTPIPE_API_KEY": SECRET}, SECRET),
        ("openai", {"OPENAI_API_KEY": SECRET}, SECRET),
        ("ollama", {"FASTPIPE_API_KEY": SECRET}, SECRET),
        ("ollama", {"OPENAI_API_KEY": SECRET}, None),  # never the OpenAI key to Ollama
    ],
)
def test_key_read_from_env_is_left_out_and_read_again_on_load(
    monkeypatch: pytest.MonkeyPatch, provider: str, env: dict[str, str], expected: str | None
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    model = ChatFastpipe(model="m", provider=provider, base_url="http://127.0.0.1:9/v1")
    assert (model.api_key.get_secret_value() if model.api_key else None) == expected
    text = dumps(model)
    assert SECRET not in text
    assert "api_key" not in json.loads(text)["kwargs"]
    loaded = load_text(text)
    assert (loaded.api_key.get_secret_value() if loaded.api_key else None) == expected


def test_explicit_no_key_stays_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTPIPE_API_KEY", SECRET)
    model = ChatFastpipe(model="m", base_url="http://127.0.0.1:9/v1", api_key=None)
    text = dumps(model)
    assert json.loads(text)["kwargs"]["api_key"] is None
    loaded = load_text(text, secrets_from_env=True)
    assert loaded.api_key is None
    assert loaded._headers() == {}


def test_repr_and_pickle_keep_working() -> None:
    model = ChatFastpipe(model="m", base_url="http://127.0.0.1:9/v1", api_key=SECRET,
                         temperature=0.5)  # fmt: skip
    loaded = load_text(dumps(model), secrets_map={"FASTPIPE_API_KEY": SECRET})
    for candidate in (model, loaded):
        assert SECRET not in repr(candidate)
        assert SECRET not in str(candidate)
        copy = pickle.loads(pickle.dumps(candidate))  # noqa: S301 - our own bytes
        assert copy.api_key is not None
        assert copy.api_key.get_secret_value() == SECRET
        assert fields_of(copy) == fields_of(model)


@pytest.mark.parametrize("provider", ["openai", "ollama"])
async def test_loaded_model_answers_over_the_wire(
    make_emulator: MakeEmulator, provider: str
) -> None:
    server = make_emulator(EmulatorConfig(api_key=SECRET))
    base = server.openai_base_url if provider == "openai" else server.base_url
    chat_path = "/v1/chat/completions" if provider == "openai" else "/api/chat"
    model = ChatFastpipe(
        model="emu", provider=provider, base_url=base, api_key=SECRET, temperature=0.0,
        max_tokens=64, stop=["ZZZ"], model_kwargs={"seed": 7}, keep_alive="5m", max_retries=0,
    )  # fmt: skip
    expected = model.invoke(PROMPT).text
    assert expected

    text = dumps(model)
    assert SECRET not in text
    loaded = load_text(text, secrets_map={"FASTPIPE_API_KEY": SECRET})
    assert loaded.invoke(PROMPT).text == expected
    assert "".join([chunk.text async for chunk in loaded.astream(PROMPT)]) == expected
    sent = server.recorded(chat_path)[-1].body
    assert sent["model"] == "emu"
    if provider == "openai":
        assert (sent["temperature"], sent["max_tokens"], sent["seed"]) == (0.0, 64, 7)
        assert sent["stop"] == ["ZZZ"]
    else:
        options = sent["options"]
        assert (options["temperature"], options["num_predict"], options["seed"]) == (0.0, 64, 7)
        assert options["stop"] == ["ZZZ"]
        assert sent["keep_alive"] == "5m"

    # the emulator does check the key: a model loaded without it is refused
    keyless = load_text(text)
    with pytest.raises(AuthenticationError):
        await keyless.ainvoke(PROMPT)


def test_llm_cache_key_follows_a_changed_field(emulator: EmulatorServer) -> None:
    # Serializable models are keyed on a serialized form computed once per instance; the
    # key must still follow a field changed afterwards (the answer is asked for again).
    model = ChatFastpipe(model="emu", base_url=emulator.openai_base_url, temperature=0.0,
                         cache=InMemoryCache())  # fmt: skip
    before = emulator.chat_requests
    model.invoke(PROMPT)
    model.invoke(PROMPT)
    assert emulator.chat_requests == before + 1  # the second call came from the cache
    model.temperature = 0.9
    model.invoke(PROMPT)
    assert emulator.chat_requests == before + 2
    changed = model.model_copy(update={"max_tokens": 5})
    changed.invoke(PROMPT)
    assert emulator.chat_requests == before + 3
