"""Config of the fusion adapter: which cached branch outputs it combines, and how.

The adapter never runs a branch itself: it reads the branches' cached outputs (see
:mod:`llmser.data.branch_outputs`), so ``outputs_dir`` names the folder ``collect_branch_outputs``
wrote. The input sizes (``stream_sizes``, ``sequence_sizes``) are read from that folder when
training starts and saved beside the weights, so ``FusionEmotionModel.from_pretrained`` can rebuild the
model without the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from llmser.config import check_ranges, load_branch_config, save_branch_config

FUSION_MODES = ("attention", "concat")


@dataclass
class FusionBranchConfig:
    """What the fusion adapter combines and how.

    ``mode: attention``: every stream is projected to ``hidden``; the ``query`` stream (default: the
    first one, e.g. the audio-LLM speech-token states) attends to the other streams' tokens (frame
    states where ``sequences`` is on and the cache has them, else each pooled embedding as one token);
    a learned sigmoid gate mixes the attended and the original query, which is pooled and, beside the
    key streams' pooled embeddings, fed to the heads. ``mode: concat``: the pooled embeddings, each layer-normed,
    are concatenated and fed to MLP heads; the baseline the attention mode must beat.
    """

    streams: list[str] = field(default_factory=lambda: ["wavlm", "text_llm"], metadata={"help": "branches whose cached outputs are fused (subfolders of outputs_dir)"})
    outputs_dir: str = field(default="", metadata={"help": "the branch-outputs folder: <outputs_dir>/<stream>/<split>.safetensors"})
    mode: Literal["attention", "concat"] = field(default="attention", metadata={"help": "attention (cross-attention over the streams) or concat (the baseline: concatenated embeddings)"})
    query: str | None = field(default=None, metadata={"help": "the attending stream in attention mode; None = streams[0]"})
    sequences: bool = field(default=True, metadata={"help": "use cached sequence states (B, T, D) where a stream has them"})
    hidden: int = field(default=128, metadata={"help": "width of the fusion layers", "min": 1})
    heads: int = field(default=4, metadata={"help": "attention heads of the fusion", "min": 1})
    dropout: float = field(default=0.1, metadata={"help": "dropout of the fusion and heads", "min": 0, "lt": 1})
    head_hidden_size: int = field(default=128, metadata={"help": "hidden size of the class and attribute heads", "min": 1})
    residual: bool = field(default=False, metadata={"help": "start from the streams' weighted average (their cached "
                                                              "probabilities and attributes, weights learned) and "
                                                              "learn a correction from the fused states, zero at "
                                                              "the start: the adapter begins as the average ensemble"})
    class_head: bool = field(default=True, metadata={"help": "predict the 8 classes (task 1)"})
    attribute_head: bool = field(default=True, metadata={"help": "predict arousal, valence, dominance (task 2)"})
    # Filled from the cached outputs at training time (and saved), not written in a recipe by hand.
    stream_sizes: dict[str, int] = field(default_factory=dict, metadata={"help": "stream -> pooled embedding size D"})
    sequence_sizes: dict[str, int] = field(default_factory=dict, metadata={"help": "stream -> sequence state size"})

    def __post_init__(self) -> None:
        check_ranges(self)
        issues = []
        if not self.streams:
            issues.append("streams is empty; name at least one branch, e.g. streams: [wavlm, text_llm]")
        if len(set(self.streams)) != len(self.streams):
            issues.append(f"streams has repeated names: {self.streams}")
        if self.mode not in FUSION_MODES:
            issues.append(f"mode {self.mode!r} is not one of {', '.join(FUSION_MODES)}")
        if self.mode == "attention" and len(self.streams) < 2:
            issues.append("mode: attention needs at least two streams (one attends to the others); "
                          "use mode: concat for a single stream")
        if self.query is not None and self.query not in self.streams:
            issues.append(f"query {self.query!r} is not one of the streams {self.streams}")
        if self.hidden > 0 and self.heads > 0 and self.hidden % self.heads:
            issues.append(f"hidden ({self.hidden}) must be a positive multiple of heads ({self.heads})")
        if not (self.class_head or self.attribute_head):
            issues.append("enable at least one of class_head / attribute_head")
        unknown = sorted((set(self.stream_sizes) | set(self.sequence_sizes)) - set(self.streams))
        if unknown:
            issues.append(f"stream_sizes/sequence_sizes name streams {unknown} that are not in streams")
        if issues:
            raise ValueError("; ".join(issues))

    @property
    def query_stream(self) -> str:
        return self.query or self.streams[0]

    @property
    def is_resolved(self) -> bool:
        """Whether the input sizes are known (read from cached outputs or a saved model)."""
        return all(s in self.stream_sizes for s in self.streams)

    def save(self, directory: str | Path) -> None:
        save_branch_config(self, Path(directory) / "config.json", "fusion")

    @classmethod
    def load(cls, directory: str | Path) -> FusionBranchConfig:
        return load_branch_config(cls, Path(directory) / "config.json", "fusion", "FusionEmotionModel.save_pretrained", "a fusion adapter")
