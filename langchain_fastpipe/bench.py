"""``fastpipe bench``: baseline vs optimized, measured against response-time targets.

For each configuration -- every flag off (``baseline``), each optimization alone
(``preloading``, ``pooling``, ``streaming``, ``optimized_pipeline``) and every flag on
(``all_on``) -- it measures, on each backend:

* **first query**: a question asked against a cold backend. Without preloading the clock
  includes the model load (emulator: ``load_seconds``; local model: the ``llama-server``
  start and its first query). With preloading the backend is warmed by a
  :class:`~langchain_fastpipe.preload.ModelPreloader` *before* the clock starts, as an
  application would at startup.
* **average** and **p95 response time** of the following (warm) queries, each timed until
  its complete answer. The cold first query is not part of them.
* **time to first chunk** (mean over the warm queries). With streaming off the first chunk
  IS the whole answer: that is the point of the streaming flag.

One "query" is a question through the :class:`~langchain_fastpipe.pipeline.AnswerPipeline`
built from the configuration's flags (optimized on: ranked, learning strategies; off: the
fixed order ``structured``, ``direct``, ``few_shot``, one after another), streamed with
:func:`~langchain_fastpipe.streaming.astream_chunks`. The chat models come from
:meth:`FastpipeConfig.chat_model`, so pooling and streaming are the config's own flags.

Backends:

* ``emulator``: the package's emulator with a realistic profile (10 s model load, 300 ms
  first token, 30 tokens/s, 30-token answers). Each configuration gets its own fresh
  emulator, and the six configurations run concurrently (the emulator's times are sleeps,
  so they do not compete for the CPU), which keeps the 10 s load unscaled.
* ``local``: the real Gemma 3 270M model under a managed ``llama-server``, one fresh server
  per configuration, configurations one after another (they do compete for the CPU). Its
  pipeline has two strategies fit for a 270M base model: a few-shot answer (the prompt of
  ``fastpipe ask``, newline stop, bounded ``max_tokens``) and the default ``direct``; the
  default structured-extraction strategies are left out because grammar-constrained JSON
  takes this model 10-40 s on a 2-core CPU and is cut at ``max_tokens``.

Targets (each metric must be strictly below its own): first query < 5 s, average < 8 s,
p95 < 10 s, time to first chunk < 2 s. Run it as ``fastpipe bench`` (``fastpipe bench -h``
lists the options) or ``python -m langchain_fastpipe.bench``; its machinery lives in the
private package ``langchain_fastpipe._bench``.
"""

from __future__ import annotations

import sys

from langchain_fastpipe._bench.command import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
