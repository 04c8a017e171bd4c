"""An offline byte-level BPE tokenizer with a ChatML chat template, for the ``tiny`` LLM preset.

Tests and the fast CPU path need a tokenizer without any download. Byte-level BPE covers any text (a
transcript never becomes unknown tokens) and training it on the prompt files and label words takes
milliseconds, so it is built on the fly and deterministically: the same inputs give the same vocabulary,
which keeps a saved tiny model loadable.
"""

from __future__ import annotations

from collections.abc import Iterable

from llmser.schema import CLASS_CODES, CLASS_DEFINITIONS, CLASS_NAMES, VERBALISATIONS

IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"

#: The ChatML template SmolLM2 uses, so tiny and smol render prompts the same way.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _seed_texts(extra: Iterable[str]) -> list[str]:
    words = [w for v in VERBALISATIONS.values() for w in v.words]
    texts = list(CLASS_NAMES) + list(CLASS_CODES) + words + list(CLASS_DEFINITIONS.values())
    texts += [str(d) for d in range(10)] + ["system", "user", "assistant", "arousal", "valence", "dominance"]
    return texts + list(extra)


def build_tiny_tokenizer(texts: Iterable[str] = (), vocab_size: int = 1024):
    """A ``PreTrainedTokenizerFast`` trained on the label vocabulary plus ``texts`` (e.g. prompt files)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT, IM_START, IM_END],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(_seed_texts(texts), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=IM_START, eos_token=IM_END,
                                   pad_token=END_OF_TEXT, chat_template=CHATML_TEMPLATE)
