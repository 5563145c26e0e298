"""The machinery of ``fastpipe bench`` (private; the command is :mod:`langchain_fastpipe.bench`).

- :mod:`.results`: configurations, samples, the pure reductions (summary, verdicts, table,
  JSON), the progress bar and the plot;
- :mod:`.run`: the measuring coroutines (fresh emulators or local servers, a pipeline per
  configuration) and :func:`~.run.run_bench`;
- :mod:`.command`: the argument parser and ``main``.
"""
