"""Evaluation: challenge metrics, reports with figures, llmser prediction files and submission files.

- :mod:`~llmser.evaluation.metrics`: macro-F1, CCC and the diagnostics behind the reports (numpy only).
- :mod:`~llmser.evaluation.predictions`: the prediction CSV that ``llmser predict`` writes.
- :mod:`~llmser.evaluation.submission`: the challenge's task-1 / task-2 submission files and validators.
- :mod:`~llmser.evaluation.report`: ``report.json``, ``report.md`` and PNGs for one system on one split.

Submodules are imported on use, so importing this package stays cheap (matplotlib loads only for figures).
"""
