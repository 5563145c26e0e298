"""Secrets: the API key never leaks, and TLS verification is on by default.

The key (a distinctive ``SECRET``) must not appear in any repr/str of the model, the
configuration or the pool, in any log record at DEBUG (root, httpx, httpcore, hpack, h2 and
the package's loggers, message and arguments and formatted tracebacks), in the ``get_stats()``
JSON, or in any exception (message, args, notes, chained causes, formatted traceback), while
calls succeed, fail with statuses, fail to connect and fail TLS -- over HTTP/1.1 and HTTP/2.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from langchain_fastpipe.chat_models import ChatFastpipe
from langchain_fastpipe.config import FastpipeConfig
from langchain_fastpipe.emulator import EmulatorConfig, EmulatorServer, Fault
from langchain_fastpipe.errors import (
    AuthenticationError,
    ConfigError,
    EndpointConnectError,
    FastpipeError,
    ServerError,
)
from langchain_fastpipe.stats import get_stats
from langchain_fastpipe.transport import EndpointConfig, get_pool

MakeEmulator = Callable[..., EmulatorServer]

SECRET = "sk-test-SECRET-123"
WRONG = "sk-test-WRONGKEY-456"
PROMPT = "keep it secret"
LOGGERS = ("", "httpx", "httpcore", "hpack", "h2", "langchain_fastpipe", "langchain_core")


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets or (SECRET,):
        assert secret not in text
        assert secret.replace("-", "") not in text.replace("-", "")


def exception_text(exc: BaseException) -> str:
    """Everything an exception can show: formatted chain, str/repr, args, attributes."""
    parts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts += [str(current), repr(current), repr(current.args)]
        parts += [repr(v) for v in vars(current).values()]
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Capture every record at DEBUG on the root and the HTTP stack's loggers."""
    levels = {name: logging.getLogger(name).level for name in LOGGERS}
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    with caplog.at_level(logging.DEBUG):
        yield caplog
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def client_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Records of the client side: the emulator runs in this process, in its own thread,
    and its (server-side) HTTP/2 stack logs the headers it decodes; that is test
    infrastructure, not the package."""
    return [r for r in caplog.records if not r.threadName.startswith("fastpipe-emulator")]


def logs_text(caplog: pytest.LogCaptureFixture) -> str:
    formatter = logging.Formatter("%(name)s %(threadName)s %(levelname)s %(message)s")
    out = []
    for record in client_records(caplog):
        out.append(formatter.format(record))  # message, args and exc_info formatted
        out.append(repr(record.args))
        out.append(repr(record.__dict__))
    return "\n".join(out)


def keyed_model(server: EmulatorServer, provider: str, key: str = SECRET,
                **kwargs: Any) -> ChatFastpipe:  # fmt: skip
    base = server.openai_base_url if provider == "openai" else server.base_url
    return ChatFastpipe(provider=provider, model="emu", base_url=base, api_key=key,
                        verify=server.ca_cert_path or True, **kwargs)  # fmt: skip


@pytest.mark.parametrize("proto", ["h1", "h2"])
@pytest.mark.parametrize("provider", ["openai", "ollama"])
async def test_key_never_in_logs_stats_or_errors(
    make_emulator: MakeEmulator, all_logs: pytest.LogCaptureFixture, provider: str, proto: str
) -> None:
    h2 = proto == "h2"
    server = make_emulator(EmulatorConfig(api_key=SECRET), http2=h2, tls=h2)
    model = keyed_model(server, provider)
    # success, sync and async, streamed and not (the key does reach the server: no 401)
    text = (await model.ainvoke(PROMPT)).text
    assert text
    assert "".join([c.text async for c in model.astream(PROMPT)]) == text
    assert model.invoke(PROMPT).text == text
    assert "".join(c.text for c in model.stream(PROMPT)) == text
    errors: list[BaseException] = []
    # a persistent server error (retried, then raised) and a rejected (wrong) key
    server.inject(Fault.status(503, message="upstream overloaded"), times=10)
    with pytest.raises(ServerError) as server_error:
        await keyed_model(server, provider, max_retries=0).ainvoke(PROMPT)
    errors.append(server_error.value)
    server.clear_faults()
    wrong = keyed_model(server, provider, key=WRONG)
    with pytest.raises(AuthenticationError) as auth_error:
        await wrong.ainvoke(PROMPT)
    errors.append(auth_error.value)
    with pytest.raises(AuthenticationError) as auth_stream_error:
        list(wrong.stream(PROMPT))
    errors.append(auth_stream_error.value)

    for exc in errors:
        assert_no_secret(exception_text(exc), SECRET, WRONG)
    assert client_records(all_logs), "DEBUG logging captured nothing: the scan would prove nothing"
    assert_no_secret(logs_text(all_logs), SECRET, WRONG)
    assert_no_secret(json.dumps(get_stats(), default=str), SECRET, WRONG)
    assert_no_secret(json.dumps(get_pool(model.endpoint_config).stats(), default=str))
    assert server.chat_requests >= 5  # the calls did reach the emulator (401s are not counted)


async def test_key_never_in_connect_or_tls_errors(
    emulator_h2: EmulatorServer, all_logs: pytest.LogCaptureFixture
) -> None:
    refused = ChatFastpipe(model="emu", base_url="http://127.0.0.1:9/v1", api_key=SECRET,
                           max_retries=0)  # fmt: skip
    with pytest.raises(EndpointConnectError) as connect_error:
        await refused.ainvoke(PROMPT)
    untrusted = ChatFastpipe(model="emu", base_url=emulator_h2.openai_base_url, api_key=SECRET,
                             max_retries=0)  # fmt: skip
    with pytest.raises(EndpointConnectError) as tls_error:
        list(untrusted.stream(PROMPT))
    for exc in (connect_error.value, tls_error.value):
        assert_no_secret(exception_text(exc))
    assert_no_secret(logs_text(all_logs))


def test_key_never_in_repr_str_or_dumps() -> None:
    model = ChatFastpipe(model="emu", base_url="http://127.0.0.1:9/v1", api_key=SECRET)
    assert model.api_key is not None
    assert model.api_key.get_secret_value() == SECRET
    pool = get_pool(model.endpoint_config)
    for text in (
        repr(model), str(model), model.model_dump_json(), repr(model.model_dump()),
        repr(model._identifying_params), repr(model.endpoint_config), repr(pool),
        json.dumps(pool.stats()),
    ):  # fmt: skip
        assert_no_secret(text)


def test_key_from_env_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTPIPE_API_KEY", SECRET)
    model = ChatFastpipe(model="emu", base_url="http://127.0.0.1:9/v1")
    assert model.api_key is not None
    assert model.api_key.get_secret_value() == SECRET
    assert_no_secret(repr(model) + str(model) + model.model_dump_json())


def test_config_never_shows_the_key() -> None:
    config = FastpipeConfig(backend={"api_key": SECRET, "base_url": "http://127.0.0.1:9/v1"})
    for text in (repr(config), str(config), config.to_json(), repr(config.model_dump()),
                 repr(config.backend)):  # fmt: skip
        assert_no_secret(text)
    with pytest.raises(ConfigError) as info:
        FastpipeConfig(backend={"api_key": SECRET}, performance_optimizations={"max_retries": -1})
    assert_no_secret(exception_text(info.value))
    with pytest.raises(ConfigError) as info:
        FastpipeConfig.load(env={"FASTPIPE_BACKEND__API_KEY": SECRET, "FASTPIPE_MAX_RETRIES": "x"})
    assert_no_secret(exception_text(info.value))


def test_bad_field_errors_never_show_the_key() -> None:
    for kwargs in (
        {"timeout": -1}, {"provider": "nope"}, {"max_connections": 0},
        {"base_url": f"https://user:{SECRET}@example.com/v1"}, {"temperature": "hot"},
    ):  # fmt: skip
        with pytest.raises((FastpipeError, ValueError)) as info:
            ChatFastpipe(model="emu", api_key=SECRET, **{"base_url": "http://h/v1", **kwargs})
        assert_no_secret(exception_text(info.value))


def test_query_string_secret_is_rejected_or_redacted() -> None:
    """A key in the URL's query is either refused (without echoing it) or never shown."""
    url = f"http://127.0.0.1:9/v1?key={SECRET}"
    try:
        model = ChatFastpipe(model="emu", base_url=url)
    except ConfigError as exc:
        assert_no_secret(exception_text(exc))
        return
    pool = get_pool(model.endpoint_config)
    for text in (repr(model), str(model), repr(model.endpoint_config), repr(pool),
                 json.dumps(pool.stats()), repr(model._identifying_params)):  # fmt: skip
        assert_no_secret(text)


def test_tls_verification_is_on_by_default() -> None:
    assert ChatFastpipe(model="emu", base_url="https://example.com/v1").verify is True
    assert EndpointConfig(base_url="https://example.com").verify is True
    config = FastpipeConfig(
        backend={"base_url": "https://example.com/v1"},
        performance_optimizations={"enable_model_preloading": False},  # no warm-up request
    )
    assert EndpointConfig.from_config(config).verify is True
    assert ChatFastpipe.from_config(config, model="emu").verify is True
