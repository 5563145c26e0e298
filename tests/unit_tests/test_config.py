"""Tests of langchain_fastpipe.config: validation messages, loading precedence, secrets, knobs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr

from langchain_fastpipe import chat_models
from langchain_fastpipe import config as config_module
from langchain_fastpipe._chat import _preload as chat_preload
from langchain_fastpipe.chat_models import ChatFastpipe
from langchain_fastpipe.config import (
    ENV_ALIASES,
    BackendSettings,
    FastpipeConfig,
    PerformanceOptimizations,
    PipelineSettings,
    PreloadSettings,
    get_config,
    set_config,
)
from langchain_fastpipe.errors import ConfigError
from langchain_fastpipe.transport import EndpointConfig, PoolLimits

DOCUMENTED = {
    "performance_optimizations": {
        "enable_model_preloading": True,
        "enable_optimized_pipeline": True,
        "enable_connection_pooling": True,
        "enable_response_streaming": True,
        "preload_timeout_seconds": 60,
        "connection_pool_size": 20,
        "api_timeout_seconds": 30,
    }
}

SECRET = "sk-test-DO-NOT-LEAK-1234567890"


def write_json(tmp_path: Path, data: Any, name: str = "fastpipe.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _reset_current_config():
    yield
    set_config(None)


# ----------------------------------------------------------------- the documented JSON
def test_documented_json_loads_from_file_exactly(tmp_path: Path) -> None:
    cfg = FastpipeConfig.load(write_json(tmp_path, DOCUMENTED), env={})
    po = cfg.performance_optimizations
    assert po.enable_model_preloading is True
    assert po.enable_optimized_pipeline is True
    assert po.enable_connection_pooling is True
    assert po.enable_response_streaming is True
    assert po.preload_timeout_seconds == 60
    assert po.connection_pool_size == 20
    assert po.api_timeout_seconds == 30
    # The documented keys round-trip to the same JSON values.
    dumped = json.loads(cfg.to_json())["performance_optimizations"]
    assert {k: dumped[k] for k in DOCUMENTED["performance_optimizations"]} == DOCUMENTED[
        "performance_optimizations"
    ]


def test_documented_json_from_code_and_json_text() -> None:
    assert FastpipeConfig(**DOCUMENTED) == FastpipeConfig.model_validate_json(
        json.dumps(DOCUMENTED)
    )
    assert FastpipeConfig.model_validate(DOCUMENTED) == FastpipeConfig()


def test_documented_flags_all_off_are_read() -> None:
    off = {
        k: (False if k.startswith("enable_") else v)
        for k, v in DOCUMENTED["performance_optimizations"].items()
    }
    cfg = FastpipeConfig(performance_optimizations=off)
    assert cfg.flags == {
        "enable_model_preloading": False,
        "enable_optimized_pipeline": False,
        "enable_connection_pooling": False,
        "enable_response_streaming": False,
        "hedging": False,
    }


# ------------------------------------------------------------------ range errors
OUT_OF_RANGE = [
    ("performance_optimizations", "connection_pool_size", -3, "between 1 and 1000"),
    ("performance_optimizations", "connection_pool_size", 0, "between 1 and 1000"),
    ("performance_optimizations", "connection_pool_size", 1001, "between 1 and 1000"),
    ("performance_optimizations", "max_connections", 0, "between 1 and 1000"),
    ("performance_optimizations", "max_connections", 5000, "between 1 and 1000"),
    ("performance_optimizations", "preload_timeout_seconds", 0, "> 0 and <= 3600"),
    ("performance_optimizations", "preload_timeout_seconds", 3600.5, "> 0 and <= 3600"),
    ("performance_optimizations", "api_timeout_seconds", -1.0, "> 0 and <= 3600"),
    ("performance_optimizations", "api_timeout_seconds", 7200, "> 0 and <= 3600"),
    ("performance_optimizations", "connect_timeout_seconds", 0, "> 0 and <= 3600"),
    ("performance_optimizations", "first_chunk_timeout_seconds", 0, "> 0 and <= 3600"),
    ("performance_optimizations", "first_chunk_timeout_seconds", 4000, "> 0 and <= 3600"),
    ("performance_optimizations", "max_retries", -1, "between 0 and 10"),
    ("performance_optimizations", "max_retries", 11, "between 0 and 10"),
    ("preload", "keep_alive_refresh_seconds", 0, "> 0 and <= 86400"),
    ("preload", "keep_alive_refresh_seconds", 86401, "> 0 and <= 86400"),
    ("pipeline", "min_success_rate", -0.1, "between 0 and 1"),
    ("pipeline", "min_success_rate", 1.5, "between 0 and 1"),
    ("pipeline", "probe_rate", -1, "between 0 and 1"),
    ("pipeline", "probe_rate", 2, "between 0 and 1"),
]


@pytest.mark.parametrize(("section", "key", "value", "allowed"), OUT_OF_RANGE)
def test_out_of_range_names_key_value_and_range(
    section: str, key: str, value: float, allowed: str
) -> None:
    with pytest.raises(ConfigError) as info:
        FastpipeConfig(**{section: {key: value}})
    assert str(info.value) == f"{section}.{key} = {value!r} is out of range: must be {allowed}"


def test_every_constrained_field_has_an_out_of_range_case() -> None:
    sections = {
        "performance_optimizations": PerformanceOptimizations,
        "backend": BackendSettings,
        "preload": PreloadSettings,
        "pipeline": PipelineSettings,
    }
    constrained = {
        (name, key)
        for name, model in sections.items()
        for key, field in model.model_fields.items()
        if field.metadata
    }
    assert constrained == {(s, k) for s, k, _, _ in OUT_OF_RANGE}


def test_exact_message_from_the_issue() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^performance_optimizations\.connection_pool_size = -3 "
        r"is out of range: must be between 1 and 1000$",
    ):
        FastpipeConfig(performance_optimizations={"connection_pool_size": -3})


def test_boundaries_are_accepted() -> None:
    cfg = FastpipeConfig(
        performance_optimizations={
            "connection_pool_size": 1000,
            "max_connections": 1,
            "api_timeout_seconds": 3600,
            "max_retries": 0,
            "first_chunk_timeout_seconds": 0.001,
        },
        pipeline={"min_success_rate": 0, "probe_rate": 1},
    )
    assert cfg.performance_optimizations.connection_pool_size == 1000


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"performance_optimizations": {"enable_connection_pooling": "yes"}},
            "performance_optimizations.enable_connection_pooling = 'yes' is not valid: "
            "expected true or false",
        ),
        (
            {"performance_optimizations": {"connection_pool_size": 2.5}},
            "performance_optimizations.connection_pool_size = 2.5 is not valid: "
            "expected an integer between 1 and 1000",
        ),
        (
            {"performance_optimizations": {"connection_pool_size": True}},
            "performance_optimizations.connection_pool_size = True is not valid: "
            "expected an integer",
        ),
        (
            {"performance_optimizations": {"api_timeout_seconds": "30"}},
            "performance_optimizations.api_timeout_seconds = '30' is not valid: expected a number",
        ),
        (
            {"backend": {"provider": "anthropic"}},
            "backend.provider = 'anthropic' is not allowed: must be one of 'openai' or 'ollama'",
        ),
        (
            {"pipeline": {"store": "postgres"}},
            "pipeline.store = 'postgres' is not allowed: must be one of 'memory', 'sqlite' or "
            "'redis'",
        ),
        (
            {"preload": {"models": ["a", 3]}},
            "preload.models[1] = 3 is not valid: expected a string",
        ),
        (
            {"performance_optimizations": [1, 2]},
            "performance_optimizations must be an object (a JSON mapping), got list",
        ),
    ],
)
def test_wrong_types_are_named(data: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        FastpipeConfig(**data)
    assert str(info.value).startswith(expected)


def test_several_errors_are_all_listed_without_pydantic_noise() -> None:
    with pytest.raises(ConfigError) as info:
        FastpipeConfig(
            performance_optimizations={"connection_pool_size": 0, "max_retries": 99},
            backend={"provider": "x"},
        )
    text = str(info.value)
    assert text.startswith("3 configuration errors:")
    assert "performance_optimizations.connection_pool_size = 0" in text
    assert "performance_optimizations.max_retries = 99" in text
    assert "backend.provider = 'x'" in text
    assert "Value error" not in text
    assert "pydantic" not in text


def test_section_models_raise_config_error_too() -> None:
    with pytest.raises(ConfigError, match=r"^max_retries = 11 is out of range"):
        PerformanceOptimizations(max_retries=11)
    with pytest.raises(ConfigError, match="did you mean 'probe_rate'"):
        PipelineSettings(prob_rate=0.1)


def test_invalid_base_url_is_named_without_credentials() -> None:
    with pytest.raises(ConfigError) as info:
        FastpipeConfig(backend={"base_url": "ftp://user:hunter2@example.com"})
    text = str(info.value)
    assert text.startswith("backend.base_url = 'ftp://example.com' must use http or https")
    assert "hunter2" not in text


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:9/v1?key=" + SECRET, "must not have a query or fragment"),
        ("http://127.0.0.1:9/v1#" + SECRET, "must not have a query or fragment"),
        ("HTTP://127.0.0.1:9/v1?x", "must not have a query or fragment"),  # scheme any case
        ("http:///v1", "has no host"),
        ("https://user:" + SECRET + "@example.com/v1", "must not carry credentials"),
    ],
)
def test_base_url_uses_the_transport_validator(url: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as info:
        FastpipeConfig(backend={"base_url": url})
    assert SECRET not in str(info.value)


def test_upper_case_scheme_is_accepted_like_the_transport_does() -> None:
    cfg = FastpipeConfig(backend={"base_url": "HTTPS://example.com/v1"})
    assert EndpointConfig.from_config(cfg).base_url == "HTTPS://example.com/v1"


def test_redis_store_needs_a_redis_url() -> None:
    with pytest.raises(ConfigError, match=r"pipeline\.store_url is required when pipeline\.store"):
        FastpipeConfig(pipeline={"store": "redis"})
    with pytest.raises(ConfigError, match="redis://, rediss:// or unix://"):
        FastpipeConfig(pipeline={"store": "redis", "store_url": "http://x"})
    cfg = FastpipeConfig(pipeline={"store": "redis", "store_url": "redis://:pw@127.0.0.1:6379/0"})
    assert "pw" not in repr(cfg)


# ------------------------------------------------------------------ unknown keys
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"performance_optimisations": {}},
            "unknown key 'performance_optimisations': did you mean 'performance_optimizations'?",
        ),
        (
            {"performance_optimizations": {"conection_pool_size": 3}},
            "unknown key 'performance_optimizations.conection_pool_size': did you mean "
            "'performance_optimizations.connection_pool_size'?",
        ),
        ({"backend": {"modle": "m"}}, "unknown key 'backend.modle': did you mean 'backend.model'?"),
        (
            {"preload": {"model": ["m"]}},
            "unknown key 'preload.model': did you mean 'preload.models'?",
        ),
        (
            {"pipeline": {"min_sucess_rate": 0.2}},
            "unknown key 'pipeline.min_sucess_rate': did you mean 'pipeline.min_success_rate'?",
        ),
        (
            {"connection_pool_size": 3},
            "unknown key 'connection_pool_size': did you mean "
            "'performance_optimizations.connection_pool_size'?",
        ),
        (
            {"zzz": 1},
            "unknown key 'zzz': valid keys are "
            "performance_optimizations, backend, preload, pipeline",
        ),
    ],
)
def test_unknown_keys_suggest_the_nearest_name(data: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        FastpipeConfig.model_validate(data)
    assert str(info.value) == expected


def test_unknown_key_in_file_names_the_file(tmp_path: Path) -> None:
    path = write_json(tmp_path, {"performance_optimizations": {"enable_conection_pooling": False}})
    with pytest.raises(ConfigError) as info:
        FastpipeConfig.load(path, env={})
    assert "did you mean 'performance_optimizations.enable_connection_pooling'?" in str(info.value)
    assert f"(from file {path})" in str(info.value)


def test_key_names_are_unique_across_sections() -> None:
    names = [
        key
        for model in (PerformanceOptimizations, BackendSettings, PreloadSettings, PipelineSettings)
        for key in model.model_fields
    ]
    assert len(names) == len(set(names))


# --------------------------------------------------------------------- loading
def test_precedence_defaults_file_env_code(tmp_path: Path) -> None:
    path = write_json(tmp_path, {"performance_optimizations": {"connection_pool_size": 10}})
    env = {"FASTPIPE_CONNECTION_POOL_SIZE": "11"}
    assert FastpipeConfig.load(env={}).performance_optimizations.connection_pool_size == 20
    assert FastpipeConfig.load(path, env={}).performance_optimizations.connection_pool_size == 10
    assert FastpipeConfig.load(path, env=env).performance_optimizations.connection_pool_size == 11
    cfg = FastpipeConfig.load(path, env=env, overrides={"connection_pool_size": 12})
    assert cfg.performance_optimizations.connection_pool_size == 12
    # kwargs win over the overrides mapping.
    cfg = FastpipeConfig.load(
        path, env=env, overrides={"connection_pool_size": 12}, connection_pool_size=13
    )
    assert cfg.performance_optimizations.connection_pool_size == 13


def test_layers_merge_key_by_key(tmp_path: Path) -> None:
    path = write_json(
        tmp_path,
        {
            "performance_optimizations": {"connection_pool_size": 7, "max_retries": 5},
            "backend": {"provider": "ollama", "model": "gemma3:270m"},
        },
    )
    cfg = FastpipeConfig.load(
        path,
        env={"FASTPIPE_API_TIMEOUT_SECONDS": "12.5"},
        overrides={"backend": {"model": "other"}},
    )
    po = cfg.performance_optimizations
    assert (po.connection_pool_size, po.max_retries, po.api_timeout_seconds) == (7, 5, 12.5)
    assert (cfg.backend.provider, cfg.backend.model) == ("ollama", "other")
    assert po.connect_timeout_seconds == 5.0  # untouched default


def test_fastpipe_config_env_names_the_file_and_path_arg_wins(tmp_path: Path) -> None:
    from_env = write_json(tmp_path, {"backend": {"model": "from-env-file"}}, "a.json")
    from_arg = write_json(tmp_path, {"backend": {"model": "from-arg"}}, "b.json")
    env = {"FASTPIPE_CONFIG": str(from_env)}
    assert FastpipeConfig.load(env=env).backend.model == "from-env-file"
    assert FastpipeConfig.load(from_arg, env=env).backend.model == "from-arg"


def test_override_forms_are_equivalent() -> None:
    forms = [
        {"overrides": {"backend": {"model": "m"}, "performance_optimizations": {"max_retries": 0}}},
        {"overrides": {"backend.model": "m", "performance_optimizations.max_retries": 0}},
        {"model": "m", "max_retries": 0},
        {"backend": BackendSettings(model="m"), "max_retries": 0},
    ]
    results = [FastpipeConfig.load(env={}, **form) for form in forms]
    assert all(r == results[0] for r in results)
    assert results[0].backend.model == "m"
    assert results[0].performance_optimizations.max_retries == 0


def test_errors_name_the_layer_that_set_the_value(tmp_path: Path) -> None:
    path = write_json(tmp_path, {"pipeline": {"probe_rate": 3}})
    with pytest.raises(ConfigError, match=rf"\(from file {path}\)$"):
        FastpipeConfig.load(path, env={})
    with pytest.raises(ConfigError, match=r"\(from env FASTPIPE_CONNECTION_POOL_SIZE\)$"):
        FastpipeConfig.load(env={"FASTPIPE_CONNECTION_POOL_SIZE": "-3"})
    with pytest.raises(ConfigError, match=r"\(from code\)$"):
        FastpipeConfig.load(env={}, connection_pool_size=-3)


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match=f"cannot read config file {missing}"):
        FastpipeConfig.load(env={"FASTPIPE_CONFIG": str(missing)})


def test_malformed_file_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n  "backend": {"model": "m",}\n}', encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"config file {path} is not valid JSON: .* line 2"):
        FastpipeConfig.load(path, env={})


def test_file_must_hold_an_object(tmp_path: Path) -> None:
    path = write_json(tmp_path, [1, 2])
    with pytest.raises(ConfigError, match="must hold a JSON object, got list"):
        FastpipeConfig.load(path, env={})


# ------------------------------------------------------------------ environment
def test_env_nested_and_short_forms() -> None:
    cfg = FastpipeConfig.load(
        env={
            "FASTPIPE_PERFORMANCE_OPTIMIZATIONS__ENABLE_CONNECTION_POOLING": "false",
            "FASTPIPE_ENABLE_RESPONSE_STREAMING": "off",
            "FASTPIPE_PERFORMANCE_OPTIMIZATIONS__FIRST_CHUNK_TIMEOUT_SECONDS": "2.5",
            "FASTPIPE_BACKEND__PROVIDER": "ollama",
            "FASTPIPE_PRELOAD__MODELS": "gemma3:270m, qwen3:0.6b",
            "FASTPIPE_PIPELINE__PROBE_RATE": "0.2",
        }
    )
    po = cfg.performance_optimizations
    assert po.enable_connection_pooling is False
    assert po.enable_response_streaming is False
    assert po.first_chunk_timeout_seconds == 2.5
    assert cfg.backend.provider == "ollama"
    assert cfg.preload.models == ["gemma3:270m", "qwen3:0.6b"]
    assert cfg.pipeline.probe_rate == 0.2


def test_env_short_aliases_cover_the_seven_documented_keys() -> None:
    assert {key for _, key in ENV_ALIASES.values()} == set(DOCUMENTED["performance_optimizations"])
    env = {
        "FASTPIPE_ENABLE_MODEL_PRELOADING": "0",
        "FASTPIPE_ENABLE_OPTIMIZED_PIPELINE": "no",
        "FASTPIPE_ENABLE_CONNECTION_POOLING": "FALSE",
        "FASTPIPE_ENABLE_RESPONSE_STREAMING": "off",
        "FASTPIPE_PRELOAD_TIMEOUT_SECONDS": "90",
        "FASTPIPE_CONNECTION_POOL_SIZE": "33",
        "FASTPIPE_API_TIMEOUT_SECONDS": "45",
    }
    po = FastpipeConfig.load(env=env).performance_optimizations
    assert not any(
        (
            po.enable_model_preloading,
            po.enable_optimized_pipeline,
            po.enable_connection_pooling,
            po.enable_response_streaming,
        )
    )
    assert (po.preload_timeout_seconds, po.connection_pool_size, po.api_timeout_seconds) == (
        90,
        33,
        45,
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("on", True),
        (" True ", True),
        ("false", False),
        ("0", False),
        ("No", False),
        ("off", False),
    ],
)
def test_env_bool_spellings(raw: str, expected: bool) -> None:
    cfg = FastpipeConfig.load(env={"FASTPIPE_PERFORMANCE_OPTIMIZATIONS__HEDGING": raw})
    assert cfg.performance_optimizations.hedging is expected


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"FASTPIPE_ENABLE_CONNECTION_POOLING": "maybe"},
            "FASTPIPE_ENABLE_CONNECTION_POOLING = 'maybe' is not a boolean "
            "(performance_optimizations.enable_connection_pooling): use true/false, 1/0, yes/no or "
            "on/off",
        ),
        (
            {"FASTPIPE_CONNECTION_POOL_SIZE": "twenty"},
            "FASTPIPE_CONNECTION_POOL_SIZE = 'twenty' is not an integer "
            "(performance_optimizations.connection_pool_size)",
        ),
        (
            {"FASTPIPE_CONNECTION_POOL_SIZE": "2.5"},
            "FASTPIPE_CONNECTION_POOL_SIZE = '2.5' is not an integer",
        ),
        (
            {"FASTPIPE_API_TIMEOUT_SECONDS": "soon"},
            "FASTPIPE_API_TIMEOUT_SECONDS = 'soon' is not a number "
            "(performance_optimizations.api_timeout_seconds)",
        ),
        (
            {"FASTPIPE_API_TIMEOUT_SECONDS": "inf"},
            "FASTPIPE_API_TIMEOUT_SECONDS = 'inf' is not a finite number",
        ),
        (
            {"FASTPIPE_PRELOAD__MODELS": "[1, "},
            "FASTPIPE_PRELOAD__MODELS = '[1, ' is not a JSON array (preload.models)",
        ),
    ],
)
def test_env_parse_errors_name_the_variable(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        FastpipeConfig.load(env=env)
    assert str(info.value).startswith(expected)


def test_env_none_clears_an_optional_value_and_json_lists(tmp_path: Path) -> None:
    path = write_json(tmp_path, {"performance_optimizations": {"first_chunk_timeout_seconds": 3}})
    cfg = FastpipeConfig.load(
        path,
        env={
            "FASTPIPE_PERFORMANCE_OPTIMIZATIONS__FIRST_CHUNK_TIMEOUT_SECONDS": "none",
            "FASTPIPE_PRELOAD__MODELS": '["a", "b,c"]',
        },
    )
    assert cfg.performance_optimizations.first_chunk_timeout_seconds is None
    assert cfg.preload.models == ["a", "b,c"]


@pytest.mark.parametrize(
    ("var", "expected"),
    [
        (
            "FASTPIPE_CONECTION_POOL_SIZE",
            "unknown environment variable FASTPIPE_CONECTION_POOL_SIZE: did you mean "
            "FASTPIPE_CONNECTION_POOL_SIZE?",
        ),
        (
            "FASTPIPE_MAX_RETRIES",
            "unknown environment variable FASTPIPE_MAX_RETRIES: did you mean "
            "FASTPIPE_PERFORMANCE_OPTIMIZATIONS__MAX_RETRIES?",
        ),
        (
            "FASTPIPE_PERFORMANCE_OPTIMISATIONS__HTTP2",
            "unknown environment variable FASTPIPE_PERFORMANCE_OPTIMISATIONS__HTTP2: no config "
            "section 'performance_optimisations'; did you mean "
            "FASTPIPE_PERFORMANCE_OPTIMIZATIONS__HTTP2?",
        ),
        (
            "FASTPIPE_PERFORMANCE_OPTIMIZATIONS__HTTP_2",
            "unknown environment variable FASTPIPE_PERFORMANCE_OPTIMIZATIONS__HTTP_2: "
            "performance_optimizations has no key 'http_2'; did you mean "
            "FASTPIPE_PERFORMANCE_OPTIMIZATIONS__HTTP2?",
        ),
        (
            "FASTPIPE_PERFORMANCE_OPTIMIZATIONS__CONECTION_POOL_SIZE",
            "did you mean FASTPIPE_CONNECTION_POOL_SIZE?",
        ),
        (
            "FASTPIPE_BACKEND__MODLE",
            "backend has no key 'modle'; did you mean FASTPIPE_BACKEND__MODEL?",
        ),
    ],
)
def test_unknown_env_vars_suggest_the_nearest_name(var: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        FastpipeConfig.load(env={var: "1"})
    assert expected in str(info.value)


def test_non_config_env_vars_are_ignored() -> None:
    env = {
        "FASTPIPE_PRELOAD": "gemma3:270m",
        "FASTPIPE_API_KEY": SECRET,
        "FASTPIPE_BASE_URL": "http://127.0.0.1:1/v1",
        "FASTPIPE_EMULATOR_LOG_DIR": "logs",
        "FASTPIPE_LOCAL_MODEL": "/models/gemma.gguf",
        "FASTPIPE_LLAMA_SERVER": "/usr/bin/llama-server",
        "PATH": "/usr/bin",
        "FASTPIPE_CONNECTION_POOL_SIZE_X": "1",  # near a real key: rejected, not ignored
    }
    # A name within difflib's reach of a real key is rejected rather than ignored.
    with pytest.raises(ConfigError, match="did you mean FASTPIPE_CONNECTION_POOL_SIZE"):
        FastpipeConfig.load(env=env)
    del env["FASTPIPE_CONNECTION_POOL_SIZE_X"]
    assert FastpipeConfig.load(env=env) == FastpipeConfig()


def test_both_env_spellings_must_agree() -> None:
    same = {
        "FASTPIPE_CONNECTION_POOL_SIZE": "5",
        "FASTPIPE_PERFORMANCE_OPTIMIZATIONS__CONNECTION_POOL_SIZE": "5",
    }
    assert FastpipeConfig.load(env=same).performance_optimizations.connection_pool_size == 5
    differ = {**same, "FASTPIPE_CONNECTION_POOL_SIZE": "6"}
    with pytest.raises(ConfigError, match="set twice with different values"):
        FastpipeConfig.load(env=differ)


# ---------------------------------------------------------------------- secrets
def _with_key() -> FastpipeConfig:
    return FastpipeConfig.load(env={"FASTPIPE_BACKEND__API_KEY": SECRET})


def test_api_key_never_in_repr_str_or_dumps() -> None:
    cfg = _with_key()
    assert cfg.backend.api_key is not None
    assert cfg.backend.api_key.get_secret_value() == SECRET
    for text in (
        repr(cfg),
        str(cfg),
        repr(cfg.backend),
        cfg.model_dump_json(),
        cfg.to_json(),
        json.dumps(cfg.model_dump(mode="json")),
        repr(ChatFastpipe.from_config(cfg, model="m", preload=False)),
    ):
        assert SECRET not in text


def test_api_key_never_in_errors() -> None:
    with pytest.raises(ConfigError) as info:
        FastpipeConfig(backend={"api_kye": SECRET})
    assert SECRET not in str(info.value)
    assert "did you mean 'backend.api_key'" in str(info.value)
    with pytest.raises(ConfigError) as info:
        FastpipeConfig(backend={"api_key": 12345})
    assert "12345" not in str(info.value)
    assert "backend.api_key = <redacted>" in str(info.value)


def test_masked_placeholder_is_rejected() -> None:
    dumped = json.loads(_with_key().model_dump_json())
    assert dumped["backend"]["api_key"] == "**********"
    with pytest.raises(ConfigError, match="masked placeholder"):
        FastpipeConfig.model_validate(dumped)


def test_key_survives_with_overrides() -> None:
    cfg = _with_key().with_overrides(max_retries=0)
    assert cfg.performance_optimizations.max_retries == 0
    assert cfg.backend.api_key is not None
    assert cfg.backend.api_key.get_secret_value() == SECRET


# -------------------------------------------------------------------- round trip
def test_json_round_trip_through_a_file(tmp_path: Path) -> None:
    cfg = FastpipeConfig(
        performance_optimizations={
            "connection_pool_size": 3,
            "first_chunk_timeout_seconds": 1.5,
            "enable_response_streaming": False,
            "hedging": True,
        },
        backend={"provider": "ollama", "base_url": "http://127.0.0.1:11434", "model": "m"},
        preload={"models": ["m", "n"], "keep_alive_refresh_seconds": 240},
        pipeline={"store": "sqlite", "store_url": str(tmp_path / "s.db"), "probe_rate": 0.1},
    )
    path = tmp_path / "round.json"
    path.write_text(cfg.to_json(), encoding="utf-8")
    assert FastpipeConfig.load(path, env={}) == cfg
    assert FastpipeConfig.model_validate_json(cfg.model_dump_json()) == cfg


def test_key_is_left_out_of_to_json_so_it_loads_back() -> None:
    cfg = _with_key()
    assert "api_key" not in cfg.to_json()
    assert FastpipeConfig.model_validate_json(cfg.to_json()).backend.api_key is None


def test_config_is_frozen() -> None:
    cfg = FastpipeConfig()
    with pytest.raises(ValueError, match="frozen"):
        cfg.performance_optimizations.connection_pool_size = 3  # type: ignore[misc]


# ------------------------------------------------------------------ knobs & flags
def test_endpoint_from_config_applies_pool_and_flags() -> None:
    cfg = FastpipeConfig(
        performance_optimizations={
            "enable_connection_pooling": False,
            "connection_pool_size": 80,
            "max_connections": 50,
            "api_timeout_seconds": 9,
            "connect_timeout_seconds": 2,
            "max_retries": 4,
            "http2": False,
        },
        backend={"base_url": "http://127.0.0.1:9/v1"},
    )
    ep = EndpointConfig.from_config(cfg)
    assert (ep.base_url, ep.http2, ep.pooling) == ("http://127.0.0.1:9/v1", False, False)
    assert (ep.timeout, ep.connect_timeout, ep.retry.max_retries) == (9.0, 2.0, 4)
    assert (ep.limits.max_keepalive_connections, ep.limits.max_connections) == (80, 80)


def test_default_base_url_per_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FASTPIPE_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    assert FastpipeConfig().resolved_base_url() == "https://api.openai.com/v1"
    ollama = FastpipeConfig(backend={"provider": "ollama"})
    assert ollama.resolved_base_url() == "http://127.0.0.1:11434"


def test_resolved_base_url_honours_the_env_like_the_chat_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FASTPIPE_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://10.0.0.1:8000/v1")
    cfg = FastpipeConfig(performance_optimizations={"enable_model_preloading": False})
    assert cfg.resolved_base_url() == "http://10.0.0.1:8000/v1"
    chat = ChatFastpipe.from_config(cfg, model="m")
    assert EndpointConfig.from_config(cfg).base_url == chat.endpoint_config.base_url
    assert cfg.resolved_base_url(env={"FASTPIPE_BASE_URL": "http://h:1/v1"}) == "http://h:1/v1"
    ollama = FastpipeConfig(backend={"provider": "ollama"})
    assert ollama.resolved_base_url() == "http://127.0.0.1:11434"  # OpenAI's variables only


def test_chat_model_from_config_streaming_off_disables_streaming() -> None:
    cfg = FastpipeConfig.load(
        env={
            "FASTPIPE_ENABLE_RESPONSE_STREAMING": "false",
            "FASTPIPE_BACKEND__API_KEY": SECRET,
            "FASTPIPE_ENABLE_CONNECTION_POOLING": "false",
            "FASTPIPE_ENABLE_MODEL_PRELOADING": "0",
        },
        model="m",
    )
    model = ChatFastpipe.from_config(cfg)
    assert model.streaming is False
    assert model.disable_streaming is True
    assert model.pooling is False
    assert model.preload is False  # preloading off: the model loads on first use
    assert model.model_name == "m"
    assert isinstance(model.api_key, SecretStr)
    assert model.api_key.get_secret_value() == SECRET
    on = ChatFastpipe.from_config(FastpipeConfig(), model="m", preload=False)
    assert on.streaming is True
    assert on.disable_streaming is False
    assert FastpipeConfig().flags["enable_model_preloading"] is True  # from_config: preload


def test_preload_models() -> None:
    assert FastpipeConfig(backend={"model": "m"}).preload_models() == ["m"]
    assert FastpipeConfig(backend={"model": "m"}, preload={"models": ["a"]}).preload_models() == [
        "a"
    ]
    off = FastpipeConfig(
        backend={"model": "m"}, performance_optimizations={"enable_model_preloading": False}
    )
    assert off.preload_models() == []


def test_endpoint_config_builds_the_transport_config() -> None:
    cfg = FastpipeConfig(
        performance_optimizations={"enable_connection_pooling": False, "connection_pool_size": 7},
        backend={"base_url": "http://127.0.0.1:9/v1"},
    )
    ep = EndpointConfig.from_config(cfg, verify=False)
    assert isinstance(ep, EndpointConfig)
    assert ep.pooling is False
    assert ep.limits.max_keepalive_connections == 7
    assert ep.limits.max_connections == PoolLimits().max_connections  # the declared default
    assert ep.retry.max_retries == 2
    assert ep.verify is False
    hash(ep)  # the shared pool's key


def test_chat_model_applies_flags() -> None:
    cfg = FastpipeConfig(
        performance_optimizations={"enable_response_streaming": False},
        backend={"base_url": "http://127.0.0.1:9/v1", "model": "m"},
    )
    model = ChatFastpipe.from_config(cfg, max_retries=0)
    assert isinstance(model, ChatFastpipe)
    assert model.disable_streaming is True
    assert model.max_retries == 0


def test_every_chat_model_setting_reaches_the_chat_model() -> None:
    cfg = FastpipeConfig(
        performance_optimizations={
            "connect_timeout_seconds": 1.5, "api_timeout_seconds": 12, "max_retries": 4,
            "connection_pool_size": 7, "max_connections": 9, "http2": False,
        },
        backend={"base_url": "http://127.0.0.1:9/v1", "model": "m"},
    )  # fmt: skip
    model = ChatFastpipe.from_config(cfg)
    assert model.endpoint_config == EndpointConfig.from_config(cfg)
    assert model.endpoint_config.connect_timeout == 1.5


def test_chat_model_raises_on_keys_it_would_drop(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = FastpipeConfig(backend={"base_url": "http://127.0.0.1:9/v1", "model": "m"})
    with pytest.raises(ConfigError, match=r"'temprature' \(override\), did you mean 'temperature'"):
        ChatFastpipe.from_config(cfg, temprature=0.5)
    real = chat_models.config_kwargs

    def with_stray_key(config: FastpipeConfig, knobs: dict[str, str]) -> dict[str, Any]:
        return {**real(config, knobs), "preload_timeout": 60.0}

    monkeypatch.setattr(chat_models, "config_kwargs", with_stray_key)
    with pytest.raises(ConfigError, match=r"'preload_timeout' \(configuration setting\)"):
        ChatFastpipe.from_config(cfg)


def test_chat_model_preloads_when_the_flag_is_on_once_per_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[Any] = []
    monkeypatch.setattr(chat_preload, "_preload_hook", seen.append)
    monkeypatch.setattr(chat_preload, "_preloaded", set())
    cfg = FastpipeConfig(backend={"base_url": "http://127.0.0.1:9/v1", "model": "m"})
    assert cfg.flags["enable_model_preloading"] is True
    model = ChatFastpipe.from_config(cfg)
    assert model.preload is True
    assert seen == [model]
    ChatFastpipe.from_config(cfg)  # the same endpoint and model: handed over only once
    assert seen == [model]
    off = ChatFastpipe.from_config(cfg.with_overrides(enable_model_preloading=False), model="o")
    assert off.preload is False
    assert seen == [model]


def test_step_models_fall_back_to_the_backend_model() -> None:
    cfg = FastpipeConfig(
        backend={"base_url": "http://127.0.0.1:9/v1", "model": "m", "formatting_model": "f"}
    )
    assert cfg.pipeline_options()["extraction_model"] == "m"
    assert cfg.pipeline_options()["formatting_model"] == "f"


def test_pipeline_and_preload_options_carry_every_setting() -> None:
    cfg = FastpipeConfig(
        performance_optimizations={
            "enable_optimized_pipeline": False, "hedging": True,
            "first_chunk_timeout_seconds": 2.5, "preload_timeout_seconds": 9,
            "enable_response_streaming": False,
        },
        backend={"model": "m", "extraction_model": "e"},
        pipeline={"min_success_rate": 0.7, "probe_rate": 0.1, "store": "sqlite",
                  "store_url": "stats.db"},
        preload={"models": ["a", "b"], "keep_alive_refresh_seconds": 30},
    )  # fmt: skip
    assert cfg.pipeline_options() == {
        "optimized": False, "hedge": True, "first_chunk_timeout": 2.5, "streaming": False,
        "min_success_rate": 0.7, "probe_rate": 0.1, "store": "sqlite", "store_url": "stats.db",
        "extraction_model": "e", "formatting_model": "m",
    }  # fmt: skip
    assert cfg.preload_options() == {
        "enabled": True, "models": ["a", "b"], "timeout": 9.0, "keep_alive_refresh": 30.0,
    }  # fmt: skip
    off = cfg.with_overrides(enable_model_preloading=False)
    assert off.preload_options()["models"] == []
    assert off.preload_options()["enabled"] is False


# ----------------------------------------------------------- process-wide config
def test_get_config_loads_lazily_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FASTPIPE_CONFIG", raising=False)
    monkeypatch.setenv("FASTPIPE_CONNECTION_POOL_SIZE", "17")
    set_config(None)
    first = get_config()
    assert first.performance_optimizations.connection_pool_size == 17
    monkeypatch.setenv("FASTPIPE_CONNECTION_POOL_SIZE", "18")
    assert get_config() is first  # loaded once
    set_config(None)
    assert get_config().performance_optimizations.connection_pool_size == 18


def test_set_config_replaces_and_checks_type() -> None:
    mine = FastpipeConfig(backend={"model": "mine"})
    set_config(mine)
    assert get_config() is mine
    with pytest.raises(ConfigError, match="takes a FastpipeConfig or None, got dict"):
        set_config({})  # type: ignore[arg-type]


def test_module_docstring_documents_precedence() -> None:
    doc = config_module.__doc__ or ""
    order = ["defaults", "JSON file", "environment variables", "overrides given in code"]
    positions = [doc.index(word) for word in order]
    assert positions == sorted(positions)


def test_section_types_are_pydantic_models() -> None:
    for section in ("performance_optimizations", "backend", "preload", "pipeline"):
        assert issubclass(FastpipeConfig.model_fields[section].annotation, BaseModel)  # type: ignore[arg-type]


def test_config_imports_nothing_above_it() -> None:
    code = (
        "import sys, langchain_fastpipe.config\n"
        "above = ('chat_models', 'pipeline', 'preload', 'transport')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[1:2] and "
        "m.split('.')[0] == 'langchain_fastpipe' and m.split('.')[1] in above))"
    )
    out = subprocess.run(  # noqa: S603 - our interpreter, fixed code
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_field_descriptions_cost_no_source_reading() -> None:
    # use_attribute_docstrings reads the source of every loaded module at class creation
    for model in (FastpipeConfig, PerformanceOptimizations, BackendSettings):
        assert not model.model_config.get("use_attribute_docstrings")


def test_settings_sources_follow_the_documented_precedence(tmp_path: Path) -> None:
    path = write_json(tmp_path, {"backend": {"model": "file", "extraction_model": "file"}})
    cfg = FastpipeConfig.load(
        path, env={"FASTPIPE_BACKEND__MODEL": "env", "FASTPIPE_BACKEND__FORMATTING_MODEL": "env"},
        overrides={"backend.model": "code"},
    )  # fmt: skip
    assert (cfg.backend.model, cfg.backend.extraction_model) == ("code", "file")
    assert cfg.backend.formatting_model == "env"
    assert FastpipeConfig.model_config["env_prefix"] == "FASTPIPE_"
    assert FastpipeConfig.model_config["env_nested_delimiter"] == "__"


def test_wire_defaults_agree_with_the_knob_declarations() -> None:
    # The documented section writes its own defaults (api_timeout_seconds: 30, ...); they
    # must equal the knobs' declared defaults on EndpointConfig and its policies.
    cfg = FastpipeConfig(backend={"base_url": "http://127.0.0.1:9/v1"})
    assert EndpointConfig.from_config(cfg) == EndpointConfig(base_url="http://127.0.0.1:9/v1")
