"""One logger namespace for llmser; under ``accelerate launch`` only the main process logs at INFO."""

from __future__ import annotations

import logging
import os
import sys

_CONFIGURED = False


def get_logger(name: str) -> logging.Logger:
    """Logger under the ``llmser`` namespace, configured once to print ``[llmser] message`` on stderr."""
    global _CONFIGURED
    if not _CONFIGURED:
        root = logging.getLogger("llmser")
        if not root.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("[llmser] %(levelname)s %(message)s"))
            root.addHandler(handler)
        # Non-main ranks (RANK set by torchrun/accelerate) only report warnings, so logs are not doubled.
        rank = int(os.environ.get("RANK", "0") or 0)
        root.setLevel(os.environ.get("LLMSER_LOG_LEVEL", "INFO" if rank == 0 else "WARNING"))
        root.propagate = False
        _CONFIGURED = True
    return logging.getLogger(name if name.startswith("llmser") else f"llmser.{name}")
