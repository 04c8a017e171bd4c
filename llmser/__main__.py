"""``python -m llmser`` is the same as the ``llmser`` console script."""

from llmser.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
