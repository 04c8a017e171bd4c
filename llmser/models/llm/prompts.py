"""Prompt variants: plain YAML files under ``prompts/``, rendered with the tokenizer's chat template.

A prompt file names itself (``name``, equal to its file stem), its task (``class`` or ``attributes``),
what it reads (``transcript``, ``speech`` or ``speech+transcript``), how the classes are verbalised,
in which order they are listed, and the ``system``/``user`` messages. Placeholders in the messages:

- ``{transcript}``: the utterance's transcript (required when the prompt reads a transcript);
- ``{speech}``: where an audio-LLM splices its speech tokens (required when it reads speech);
- ``{labels}``: the label words in the prompt's order; ``{definitions}``: one line per label;
- ``{attribute}``, ``{attribute_description}``: for attribute prompts, rendered once per attribute.

``layout`` says how the messages become text: ``chat`` (default) through the tokenizer's chat
template; ``vicuna`` as SALMONN and Vicuna v1.1 write it, for bases without a chat template:
``<bos>[system\n]USER: {user}\nASSISTANT:`` (SALMONN's ``prompt_template: "USER: {}\nASSISTANT:"``
with ``<Speech><SpeechHere></Speech>`` in the user text, as ``prompts/speech_salmonn.yaml`` has it).

A user adds a variant by dropping a file in the folder. Placeholders are substituted literally (never
with ``str.format``), and special-token strings are stripped from transcripts, so a transcript cannot
inject chat turns; answers are scored over a fixed label set, so no text can produce an invalid label.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmser.schema import ATTRIBUTES, CLASS_CODES, CLASS_DEFINITIONS, VERBALISATIONS

SPEECH_PLACEHOLDER = "<|speech|>"
RATINGS: tuple[str, ...] = ("1", "2", "3", "4", "5", "6", "7")
ATTRIBUTE_DESCRIPTIONS = {
    "arousal": "1 = very calm and passive, 7 = very excited and active",
    "valence": "1 = very negative, 7 = very positive",
    "dominance": "1 = very weak and submissive, 7 = very strong and in control",
}
_INPUTS = ("transcript", "speech", "speech+transcript")
_KEYS = {"name", "task", "inputs", "verbalisation", "label_order", "system", "user", "layout"}
#: How messages become prompt text: None = the tokenizer's chat template; else a format of (system, user).
LAYOUTS: dict[str, str | None] = {"chat": None, "vicuna": "{system}USER: {user}\nASSISTANT:"}


class PromptError(ValueError):
    """A prompt file llmser cannot use; the message names the file and the fix."""


def default_prompt_dir() -> Path:
    """The ``prompts/`` folder at the project root (``LLMSER_PROMPTS`` overrides it)."""
    import os

    return Path(os.environ.get("LLMSER_PROMPTS", Path(__file__).resolve().parents[3] / "prompts"))


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    task: str  # "class" | "attributes"
    inputs: str  # "transcript" | "speech" | "speech+transcript"
    user: str
    system: str | None = None
    verbalisation: str = "name"
    label_order: tuple[str, ...] = CLASS_CODES
    source: str = "<memory>"
    layout: str = "chat"

    def __post_init__(self) -> None:
        self._validate()

    # ------------------------------------------------------------------ checks

    def _validate(self) -> None:
        where = f"prompt {self.source}"
        if self.task not in ("class", "attributes"):
            raise PromptError(f"{where}: task must be 'class' or 'attributes', got {self.task!r}")
        if self.inputs not in _INPUTS:
            raise PromptError(f"{where}: inputs must be one of {', '.join(_INPUTS)}, got {self.inputs!r}")
        if self.layout not in LAYOUTS:
            raise PromptError(f"{where}: unknown layout {self.layout!r}; choose one of {', '.join(LAYOUTS)}")
        if self.verbalisation not in VERBALISATIONS:
            raise PromptError(f"{where}: unknown verbalisation {self.verbalisation!r}; "
                              f"choose one of {', '.join(VERBALISATIONS)}")
        if sorted(self.label_order) != sorted(CLASS_CODES):
            raise PromptError(f"{where}: label_order must list each of {', '.join(CLASS_CODES)} exactly once, "
                              f"got {list(self.label_order)}")
        text = (self.system or "") + self.user
        needed = [p for p, on in (("{transcript}", "transcript" in self.inputs), ("{speech}", "speech" in self.inputs),
                                  ("{attribute}", self.task == "attributes")) if on]
        for placeholder in needed:
            if text.count(placeholder) != 1:
                raise PromptError(f"{where}: reads {self.inputs} for task {self.task} so its messages need "
                                  f"{placeholder} exactly once (found {text.count(placeholder)}); add it "
                                  "where the input should go")
        if "{speech}" in text and "speech" not in self.inputs:
            raise PromptError(f"{where}: has {{speech}} but inputs is {self.inputs!r}; set inputs to speech")

    # ------------------------------------------------------------------ answers

    @property
    def candidates(self) -> tuple[str, ...]:
        """The answer strings scored as continuations: class words in CLASS_CODES order, or digits 1-7."""
        if self.task == "attributes":
            return RATINGS
        return VERBALISATIONS[self.verbalisation].words

    @property
    def targets(self) -> tuple[str, ...]:
        """What each candidate means: a class code, or the rating it stands for."""
        return CLASS_CODES if self.task == "class" else RATINGS

    def answer(self, code: str) -> str:
        """The verbalised answer for a class code (the SFT target)."""
        return VERBALISATIONS[self.verbalisation].word(code)

    # ------------------------------------------------------------------ rendering

    def messages(self, transcript: str | None = None, attribute: str | None = None,
                 special_tokens: tuple[str, ...] = ()) -> list[dict[str, str]]:
        """Chat messages with every placeholder filled; ``{speech}`` becomes ``SPEECH_PLACEHOLDER``."""
        if "transcript" in self.inputs and transcript is None:
            raise PromptError(f"prompt {self.name!r} reads a transcript but none was given")
        if self.task == "attributes" and attribute not in ATTRIBUTES:
            raise PromptError(f"prompt {self.name!r} rates one attribute of {ATTRIBUTES}; got {attribute!r}")
        values = {
            "{transcript}": _sanitise(transcript or "", special_tokens),
            "{speech}": SPEECH_PLACEHOLDER,
            "{labels}": ", ".join(VERBALISATIONS[self.verbalisation].word(c) for c in self.label_order),
            "{definitions}": "\n".join(f"- {VERBALISATIONS[self.verbalisation].word(c)}: {CLASS_DEFINITIONS[c]}"
                                       for c in self.label_order),
            "{attribute}": attribute or "",
            "{attribute_description}": ATTRIBUTE_DESCRIPTIONS.get(attribute or "", ""),
        }
        out = []
        if self.system:
            out.append({"role": "system", "content": _fill(self.system, values).strip()})
        out.append({"role": "user", "content": _fill(self.user, values).strip()})
        return out

    def render(self, tokenizer: Any, transcript: str | None = None, attribute: str | None = None) -> str:
        """The full prompt text up to where the answer starts (chat template + generation prompt)."""
        specials = tuple(tokenizer.all_special_tokens) + (SPEECH_PLACEHOLDER,)
        msgs = self.messages(transcript, attribute, special_tokens=specials)
        layout = LAYOUTS[self.layout]
        if layout is None:
            return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        system = "".join(m["content"] + "\n" for m in msgs if m["role"] == "system")
        user = next(m["content"] for m in msgs if m["role"] == "user")
        # No chat template: the tokenizer's BOS starts the text, as SALMONN prepends it before the prompt.
        return (tokenizer.bos_token or "") + layout.replace("{system}", system).replace("{user}", user)


def _fill(text: str, values: dict[str, str]) -> str:
    # One pass over the template, so a transcript containing "{labels}" stays literal text.
    out, i = [], 0
    while i < len(text):
        for key, value in values.items():
            if text.startswith(key, i):
                out.append(value)
                i += len(key)
                break
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _sanitise(transcript: str, special_tokens: tuple[str, ...]) -> str:
    text = " ".join(transcript.split())
    for token in special_tokens:
        if token:
            text = text.replace(token, " ")
    return " ".join(text.split())


# ---------------------------------------------------------------------- loading


def load_prompt_file(path: str | Path) -> PromptTemplate:
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PromptError(f"cannot read prompt file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise PromptError(f"prompt file {path} must be a YAML mapping with name, task, inputs and user")
    unknown = set(data) - _KEYS
    if unknown:
        raise PromptError(f"prompt file {path}: unknown keys {sorted(unknown)}; allowed: {sorted(_KEYS)}")
    for key in ("name", "task", "inputs", "user"):
        if not data.get(key):
            raise PromptError(f"prompt file {path}: missing {key!r}")
    if data["name"] != path.stem:
        raise PromptError(f"prompt file {path}: name {data['name']!r} must equal the file name {path.stem!r} "
                          "(names are the stable ids recorded with trained adapters)")
    order = data.get("label_order", CLASS_CODES)
    return PromptTemplate(name=data["name"], task=data["task"], inputs=data["inputs"], user=data["user"],
                          system=data.get("system"), verbalisation=data.get("verbalisation", "name"),
                          label_order=tuple(str(c) for c in order), source=str(path),
                          layout=data.get("layout", "chat"))


def load_prompts(names: list[str] | None = None, *, task: str | None = None, inputs: str | None = None,
                 folder: str | Path | None = None) -> list[PromptTemplate]:
    """Prompt variants by name (in the given order) or all matching ``task``/``inputs``, sorted by name."""
    folder = Path(folder) if folder else default_prompt_dir()
    if not folder.is_dir():
        raise PromptError(f"prompt folder {folder} does not exist; set LLMSER_PROMPTS or pass a folder")
    available = {p.stem: p for p in sorted(folder.glob("*.yaml"))}
    if names:
        missing = [n for n in names if n not in available]
        if missing:
            raise PromptError(f"prompts {missing} not found in {folder}; available: {', '.join(available)}")
        prompts = [load_prompt_file(available[n]) for n in names]
    else:
        prompts = [load_prompt_file(p) for p in available.values()]
    prompts = [p for p in prompts if (task is None or p.task == task) and (inputs is None or p.inputs == inputs)]
    if not prompts:
        raise PromptError(f"no prompt in {folder} matches task={task} inputs={inputs} names={names}")
    return prompts
