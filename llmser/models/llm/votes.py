"""Running an LLM branch's prompt-variant vote over a dataset: what the test report, ``collect-outputs``
and ``llmser predict`` share.

A model votes when it is ``VotesOverPrompts`` (both LLM branches) and its dataset
can be switched to voting examples (``with_voting``): every file once, with what each voting variant
needs. The result keeps each variant's probabilities next to the vote, so every report can say what the
vote is worth over a single variant.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmser.models.branch import VotesOverPrompts
from llmser.schema import CLASS_CODES


def votes(model: Any, dataset: Any) -> bool:
    """Whether ``model`` votes over prompt variants (``VotesOverPrompts``) on ``dataset``."""
    return isinstance(model, VotesOverPrompts) and hasattr(dataset, "with_voting")


@dataclass
class Votes:
    """A vote over N files: ``variant_probs`` (N, K, 8), the vote's ``labels`` (N,) and mean ``probs`` (N, 8)."""

    file_names: list[str]
    variant_names: list[str]
    variant_probs: np.ndarray
    probs: np.ndarray
    labels: np.ndarray
    attributes: np.ndarray | None
    embedding: np.ndarray
    rule: str = "plurality"
    variant_attributes: np.ndarray | None = None  # (N, K, 3) where each variant has its own

    def vote_columns(self, prefix: str = "vote_") -> dict[str, list[str]]:
        """Each variant's class per file as prediction-file columns (``vote_<variant>``)."""
        return {f"{prefix}{name}": [CLASS_CODES[i] for i in self.variant_probs[:, k].argmax(1)]
                for k, name in enumerate(self.variant_names)}

    def predictions(self) -> Any:
        """The vote as ``Predictions`` (class = the vote, probabilities = the mean), with the variants' votes."""
        from llmser.evaluation.predictions import Predictions

        return Predictions(list(self.file_names), [CLASS_CODES[i] for i in self.labels], self.probs, self.attributes,
                           self.vote_columns())

    def subset(self, names: Sequence[str], rule: str) -> Votes:
        """The vote of the variants ``names`` alone under ``rule`` (attributes: those variants' mean where each
        variant has its own), from the probabilities already collected: no model runs."""
        from llmser.models.voting import vote

        picks = [self.variant_names.index(n) for n in names]
        probs = self.variant_probs[:, picks]  # (N, k, 8)
        result = vote(probs.transpose(1, 0, 2), list(names), rule)
        per_variant = None if self.variant_attributes is None else self.variant_attributes[:, picks]
        attributes = self.attributes if per_variant is None else per_variant.mean(axis=1)
        return Votes(list(self.file_names), list(names), probs, result.probs, result.labels, attributes,
                     self.embedding, rule, per_variant)

    def variant_predictions(self, name: str) -> Any:
        """One variant alone as ``Predictions`` (the same attributes: they do not vote)."""
        from llmser.evaluation.predictions import Predictions

        probs = self.variant_probs[:, self.variant_names.index(name)]
        return Predictions.from_probs(list(self.file_names), probs, attributes=self.attributes)


@torch.no_grad()
def collect_votes(model: Any, dataset: Any, collate_fn: Callable, *, batch_size: int = 8, device: Any = None,
                  progress: bool = True, indices: Sequence[int] | None = None, desc: str = "voting",
                  max_tokens: int | None = None) -> Votes:
    """Every file of ``dataset`` through ``model.vote_batch``, batched; files in dataset order.

    ``max_tokens`` (``data.eval_max_tokens``) caps one forward's rows x padded length - K rows per file, one
    per voting variant: a batch over it is split into fewer files per forward (same votes)."""
    from tqdm.auto import tqdm

    from llmser.utils.budget import budget_batches

    device = torch.device(device) if device is not None else next(model.parameters()).device
    voting = dataset.with_voting(model.voting_variants)
    order = list(range(len(voting))) if indices is None else list(indices)
    names, parts = [], []
    for start in tqdm(range(0, len(order), batch_size), disable=not progress, desc=desc, leave=False):
        examples = [voting[i] for i in order[start:start + batch_size]]
        for part, batch in budget_batches(examples, collate_fn, max_tokens):
            names += [str(e["file_name"]) for e in part]
            parts.append(model.vote_batch(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}))
    return join_votes(names, parts, model.config.voting.rule)


def vote_with_every_variant(model: Any, dataset: Any, collate_fn: Callable, **kwargs: Any) -> tuple[Votes, Votes]:
    """The model's configured vote and every prompt variant alone, from one pass: (every variant's votes, the
    configured vote). Reports keep a row per variant even when only some of them vote."""
    from llmser.models.voting import VotingConfig

    configured = model.config.voting
    chosen = model.voting_variants
    model.config.voting = VotingConfig(variants="all", rule=configured.rule)
    try:
        every = collect_votes(model, dataset, collate_fn, **kwargs)
    finally:
        model.config.voting = configured
    return every, every.subset(chosen, configured.rule)


def report_rows(every: Votes, chosen: Votes, utterances: Sequence) -> list[dict[str, Any]]:
    """The configured vote's row, then one per prompt variant (every variant, voting or not)."""
    return scores(chosen, utterances)[:1] + scores(every, utterances)[1:]


def join_votes(names: list[str], parts: list[Any], rule: str) -> Votes:
    """``VotedOutput`` batches -> one ``Votes``."""
    if not parts:
        raise ValueError("no files to vote on")
    cat = lambda key: torch.cat([getattr(p, key).float().cpu() for p in parts]).numpy()  # noqa: E731
    return Votes(names, list(parts[0].variant_names), cat("variant_probs"), cat("probs"),
                 torch.cat([p.labels.cpu() for p in parts]).numpy(),
                 cat("attributes") if parts[0].attributes is not None else None, cat("embedding"), rule,
                 cat("variant_attributes") if parts[0].variant_attributes is not None else None)


def scores(votes_: Votes, utterances: Sequence) -> list[dict[str, Any]]:
    """One row per voting variant and one for the vote: n, macro-F1 and the three CCCs on the labelled files.

    The first row is the vote; a variant row reads that variant's own attributes where it has them
    (the text branch's heads), else the shared ones (the audio-LLM's attribute head does not vote).
    """
    from llmser.evaluation.metrics import ccc, macro_f1
    from llmser.schema import ATTRIBUTES

    by_name = {u.file_name: u for u in utterances}
    refs = [by_name.get(name) for name in votes_.file_names]
    classed = np.array([r is not None and r.class_index is not None for r in refs])
    truth = np.array([r.class_index if c else -1 for r, c in zip(refs, classed)])
    rows = []
    columns = [("vote", votes_.labels, votes_.attributes)]
    for k, name in enumerate(votes_.variant_names):
        attrs = votes_.variant_attributes[:, k] if votes_.variant_attributes is not None else votes_.attributes
        columns.append((name, votes_.variant_probs[:, k].argmax(1), attrs))
    for name, labels, attrs in columns:
        row: dict[str, Any] = {"variant": name, "n": int(classed.sum()),
                               "macro_f1": macro_f1(truth[classed], labels[classed]) if classed.any() else None}
        for a, attribute in enumerate(ATTRIBUTES):
            values = np.array([np.nan if r is None or getattr(r, attribute) is None else getattr(r, attribute)
                               for r in refs], dtype=float)
            known = ~np.isnan(values)
            row[f"ccc_{attribute}"] = ccc(values[known], attrs[known, a]) if attrs is not None and known.any() else None
        rows.append(row)
    return rows


def choose_voting(dev: Votes, utterances: Sequence) -> tuple[list[str], str, list[dict[str, Any]]]:
    """The voting variants and rule that score best on dev: the k variants best on dev alone (k = 1..K), each
    under plurality and mean; the best macro-F1 wins, ties going to more variants (a wider vote is steadier).

    The best single variant is a candidate, so the chosen vote never scores below it on dev. Returns the
    variants, the rule and the candidates' table (macro-F1 and CCCs on dev).
    """
    singles = scores(dev, utterances)[1:]
    if all(r["macro_f1"] is None for r in singles):  # dev has no class labels: nothing to choose on
        return list(dev.variant_names), dev.rule, []
    ranked = [r["variant"] for r in sorted(singles, key=lambda r: -r["macro_f1"])]  # stable: model order on ties
    table = []
    for k in range(1, len(ranked) + 1):
        for rule in ("plurality", "mean") if k > 1 else (dev.rule,):
            row = scores(dev.subset(ranked[:k], rule), utterances)[0]
            table.append({"variants": ranked[:k], "rule": rule, **{key: v for key, v in row.items() if key != "variant"}})
    best = max(table, key=lambda r: (r["macro_f1"], len(r["variants"]), r["rule"] == dev.rule))
    return list(best["variants"]), best["rule"], table


def adopt_saved_voting(model: Any, directory: str | Path) -> None:
    """Put the vote saved with a model's weights (chosen on dev when training ended) in place of the recipe's
    (``voting.variants: auto`` in a recipe means "whatever dev chose", and only the saved config knows it)."""
    if not isinstance(model, VotesOverPrompts) or not (Path(directory) / "llmser_config.json").is_file():
        return
    saved = type(model.config).load(directory).voting
    if saved != model.config.voting:
        model.config.voting = saved


def best_single(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The variant row (not the vote) with the highest macro-F1 (the first on ties)."""
    singles = [r for r in rows if r["variant"] != "vote"]
    return max(singles, key=lambda r: -1.0 if r["macro_f1"] is None else r["macro_f1"])


def voting_markdown(tables: dict[str, list[dict[str, Any]]], rule: str) -> str:
    """The per-split tables as markdown, with a plain sentence on whether the vote beat the best variant on dev."""
    lines = [f"# Prompt voting ({rule})", ""]
    for split, rows in tables.items():
        lines += [f"## {split}", "", "| variant | n | macro-F1 | CCC arousal | CCC valence | CCC dominance |",
                  "|---|---|---|---|---|---|"]
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        for r in rows:
            lines.append(f"| {r['variant']} | {r['n']} | {fmt(r['macro_f1'])} | {fmt(r['ccc_arousal'])} | "
                         f"{fmt(r['ccc_valence'])} | {fmt(r['ccc_dominance'])} |")
        lines.append("")
    if "dev" in tables:
        lines.append(verdict(tables["dev"]))
    return "\n".join(lines) + "\n"


def verdict(dev_rows: list[dict[str, Any]]) -> str:
    """Whether the vote beat the best single variant on dev, said plainly either way."""
    vote_row, best = dev_rows[0], best_single(dev_rows)
    if vote_row["macro_f1"] is None or best["macro_f1"] is None:
        return "Dev has no class labels: what voting is worth is not measured."
    if vote_row["macro_f1"] > best["macro_f1"]:
        return (f"On dev the vote (macro-F1 {vote_row['macro_f1']:.4f}) beats the best single variant "
                f"{best['variant']} ({best['macro_f1']:.4f}).")
    return (f"On dev the vote (macro-F1 {vote_row['macro_f1']:.4f}) does NOT beat the best single variant "
            f"{best['variant']} ({best['macro_f1']:.4f}).")
