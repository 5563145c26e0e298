"""An OpenAI- and Ollama-compatible model-server emulator for tests, demos and benchmarks.

Endpoints (plain ASGI app in :mod:`._app`, served by hypercorn in a thread in :mod:`._server`):

- ``POST /v1/chat/completions``: JSON, or SSE when ``stream: true`` (ends with
  ``data: [DONE]``; ``stream_options.include_usage`` adds a final chunk with ``usage`` and
  empty ``choices``). Honours ``max_tokens``/``max_completion_tokens`` (finish ``length``),
  ``stop``, ``tools``/``tool_choice`` and ``response_format`` (``json_schema``/``json_object``).
- ``GET /v1/models``, ``GET /health``.
- ``POST /api/chat`` and ``POST /api/generate`` (Ollama): NDJSON unless ``stream: false``;
  the final line has ``done: true``, ``done_reason``, ``prompt_eval_count``, ``eval_count``
  and nanosecond durations. Empty messages/prompt only loads the model (``done_reason:
  "load"``; with ``keep_alive: 0`` it unloads, ``"unload"``). ``options.num_predict``,
  ``options.stop``, ``format`` ("json" or a schema) and ``tools`` are honoured.
- ``GET /api/tags``, ``GET /api/ps`` (loaded models).

Answers are deterministic: the same request gives the same text. Tool calls take the
arguments the last user message states (a written call such as ``magic_function(3)``, else
quoted text for string parameters and numbers for numeric ones) and generate the rest from
the tool's JSON schema. JSON mode (no schema) answers an object with the keys the prompt
names in quotes (``'setup' and 'punchline'``), else ``{"answer": ...}``. Tokens are words with
their leading space, so a stream's concatenation equals the JSON reply's content. Prompt
tokens are the words of the messages; completion tokens are the tokens emitted (for a tool
call: its argument pieces).

Knobs: :class:`ModelProfile` per model name (``load_seconds`` cold start shared by concurrent
first requests, ``first_token_seconds``, ``inter_token_seconds``, ``answer_tokens``,
``ttft_tail_rate``/``ttft_tail_seconds`` heavy tail, ``fail_rate``/``fail_fault``,
``context_tokens``) inside :class:`EmulatorConfig` (``seed``, ``goaway_after``, ``api_key``,
``strict_models``). Faults: :class:`Fault` constructors, played by
``server.inject(fault, times=n, model=None)`` on the next n completion requests.

Test helpers on :class:`EmulatorServer`: ``connections_opened`` (TCP connections accepted),
``requests``, ``active_requests``, ``chat_requests``, ``loaded_models``, ``load_counts``,
``bodies(path)``/``recorded(path)`` (recent request bodies and redacted headers, e.g. the
``options`` and ``keep_alive`` of Ollama warm-ups), ``unload()``, ``reset_state()``.
"""

from __future__ import annotations

from langchain_fastpipe.emulator._app import EmulatorApp, EmulatorConfig, Fault, ModelProfile
from langchain_fastpipe.emulator._server import EmulatorServer

__all__ = ["EmulatorApp", "EmulatorConfig", "EmulatorServer", "Fault", "ModelProfile"]
