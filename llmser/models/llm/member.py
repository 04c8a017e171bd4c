"""The life cycle both LoRA-LLM branches share (``text_llm``, ``audio_llm``), written once.

As peft's ``BaseTuner`` holds what every tuning method does (wrap the base, save and load adapters)
and each method only what differs, :class:`LoRAMember` holds what both LLM branches do with their
base LLM and adapter; a branch's model says only what it adds (its modules, its forward, its vote):

- **build**: ``from_config`` loads the base LLM (``load_base``), attaches a fresh LoRA adapter and any
  frozen parts the branch needs (``frozen_parts``: the audio-LLM's speech encoders);
- **save / load**: ``save_pretrained`` writes a standard PEFT adapter folder plus the branch's trained
  modules (``trained_modules()`` -> ``modules_file``), the tokenizer and the config; ``from_pretrained``
  rebuilds the model from such a folder or a Hub id;
- **reload**: ``load_trained_weights`` puts a saved adapter and modules into this model in place
  (no base reload: what the engine does with the best checkpoint, and the predictor across members);
- **the prefix cache**: instruction states cached for voting go stale whenever the weights may change
  (``train()``, ``load_state_dict``, ``load_trained_weights``);
- **voting**: ``voting_variants`` are the model's prompt variants that ``config.voting`` selects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from llmser.models.llm.adapter import attach_lora, load_lora, save_lora
from llmser.models.llm.prefix_cache import PrefixCache


class LoRAMember(nn.Module):
    """A LoRA-tuned causal LM (``llm``, a peft ``PeftModel``) plus the branch's own trained modules.

    Subclasses set ``config_cls`` (its ``save``/``load`` write ``llmser_config.json``), ``modules_file``
    and ``saved_by`` (for error messages), and implement ``trained_modules`` and ``variant_names``.
    """

    config_cls: ClassVar[Any]
    modules_file: ClassVar[str]
    saved_by: ClassVar[str]
    branch_kind: ClassVar[tuple[str, str]]  # (branch tag, how errors call it): another branch's folder is refused

    def __init__(self, config: Any, llm: Any, tokenizer: Any, base_name: str):
        super().__init__()
        self.config = config
        self.llm = llm
        self.tokenizer = tokenizer
        self.base_name = base_name
        self.prefix_cache = PrefixCache()  # instructions' key/value states for voting; cleared when weights change

    # ------------------------------------------------------------------ what a branch says

    def trained_modules(self) -> nn.Module:
        """Everything trained besides LoRA: what ``modules_file`` holds."""
        raise NotImplementedError(f"{type(self).__name__} must say which modules it trains besides LoRA")

    @property
    def variant_names(self) -> list[str]:
        """The model's prompt variants, in order."""
        raise NotImplementedError(f"{type(self).__name__} must name its prompt variants")

    @classmethod
    def frozen_parts(cls, config: Any) -> dict[str, Any]:
        """Constructor arguments besides the LLM that are loaded, not trained (none by default)."""
        return {}

    def upgrade_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A saved modules state as this version reads it (entries that older folders lack)."""
        return state

    # ------------------------------------------------------------------ build

    @staticmethod
    def load_base(config: Any, tokenizer: Any = None) -> Any:
        """The base causal LM and tokenizer of ``config`` (``LoadedLM``; its name canonical)."""
        from llmser.models.llm.identity import canonical_name
        from llmser.models.llm.loading import load_causal_lm

        loaded = load_causal_lm(config.llm, revision=config.revision, dtype=config.dtype,
                                quantization=config.quantization, quant_type=config.quant_type, tokenizer=tokenizer)
        loaded.name = canonical_name(loaded.name)
        return loaded

    @classmethod
    def from_config(cls, config: Any) -> LoRAMember:
        """A new model: the base LLM with a fresh LoRA adapter, the branch's modules freshly initialised."""
        loaded = cls.load_base(config)
        parts = cls.frozen_parts(config)
        return cls(config, llm=attach_lora(loaded.model, config), tokenizer=loaded.tokenizer, base_name=loaded.name,
                   **parts)

    def decoder(self) -> nn.Module:
        """The transformer stack without the LM head (LoRA layers included)."""
        base = self.llm.get_base_model()
        return base.get_decoder() if hasattr(base, "get_decoder") else base.model

    # ------------------------------------------------------------------ save / load

    def save_pretrained(self, directory: str | Path) -> Path:
        from llmser.utils.weights import save_safetensors

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_lora(self.llm, directory, self.base_name)
        save_safetensors(self.trained_modules().state_dict(), directory / self.modules_file)
        self.tokenizer.save_pretrained(str(directory))
        self.config.save(directory)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, base: str | None = None, trainable: bool = False,
                        revision: str | None = None) -> LoRAMember:
        """Rebuild from a saved folder or a Hub id (``revision``; offline from the cache with ``HF_HUB_OFFLINE=1``);
        ``base`` loads the adapter onto another copy of the same base (checked against the adapter's record)."""
        from transformers import AutoTokenizer

        from llmser.config import check_branch
        from llmser.models.llm.config import CONFIG_NAME
        from llmser.utils.hub import resolve_pretrained

        directory = resolve_pretrained(directory, revision)
        check_branch(directory, *cls.branch_kind)
        if not (directory / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}; is it a folder saved by "
                                    f"{cls.saved_by}.save_pretrained (or pull it from the Hub first)?")
        config = cls.config_cls.load(directory)
        if base is not None:
            config.llm = base
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        loaded = cls.load_base(config, tokenizer=tokenizer)
        llm = load_lora(loaded.model, directory, config.llm, trainable=trainable)
        model = cls(config, llm=llm, tokenizer=tokenizer, base_name=loaded.name, **cls.frozen_parts(config))
        model.load_modules(directory)
        return model

    def load_modules(self, directory: str | Path) -> None:
        """The branch's trained modules from a saved folder (every tensor present, of its shape, finite)."""
        from llmser.utils.weights import load_safetensors, load_state_checked

        path = Path(directory) / self.modules_file
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; the folder is incomplete (save it again)")
        load_state_checked(self.trained_modules(), path, state=self.upgrade_state(load_safetensors(path)))

    def load_trained_weights(self, directory: str | Path) -> None:
        """Load a saved folder's adapter and modules into this model in place (no base reload)."""
        from peft import set_peft_model_state_dict

        from llmser.models.llm.adapter import adapter_state, check_adapter_base

        check_adapter_base(directory, self.base_name)
        set_peft_model_state_dict(self.llm, adapter_state(self.llm, directory))
        self.prefix_cache.clear()
        self.load_modules(directory)

    def train(self, mode: bool = True) -> LoRAMember:
        if mode:
            self.prefix_cache.clear()  # the weights may change from here on: cached instruction states go stale
        return super().train(mode)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        self.prefix_cache.clear()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ------------------------------------------------------------------ voting

    @property
    def voting_variants(self) -> list[str]:
        """The prompt variants that vote (``config.voting.variants``), in order."""
        return self.config.voting.select(self.variant_names)
