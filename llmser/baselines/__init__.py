"""Classical reference systems: what every results table needs beside the neural branches.

- ``egemaps``: the 88 eGeMAPS functionals (openSMILE), the field's standard acoustic feature set,
- ``tfidf``: word and character n-gram TF-IDF of the transcripts,
- ``late_fusion``: the average of the two systems' class probabilities and attributes,

each with a class-balanced logistic regression (task 1) and one ridge regression per attribute
(task 2), regularisation chosen on the dev split only. ``llmser baseline classical`` runs them.

This package is imported by the command line at start-up, so it imports nothing heavy here:
``from llmser.baselines.classical import run_classical``.
"""


class BaselineError(ValueError):
    """A baseline that cannot run as asked (a missing package, transcripts, a split); says what to do."""


__all__ = ["BaselineError"]
