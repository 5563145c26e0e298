"""The private mechanics of :class:`~langchain_fastpipe.chat_models.ChatFastpipe`.

- :mod:`._chunks`: :class:`~._chunks.ChunkParser`, the pure core of sync and async streams;
- :mod:`._structured`: ``response_format`` building and the ``with_structured_output``
  runnables;
- :mod:`._from_config`: the ``FastpipeConfig`` -> field mapping of ``from_config`` and
  the checks of constructor keys;
- :mod:`._preload`: ``preload=True`` models handed to the preload hook, once each.
"""
