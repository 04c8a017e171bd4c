"""``llmser import-salmonn``: a released SALMONN checkpoint -> an llmser audio-LLM folder (safetensors + PEFT).

    llmser import-salmonn salmonn_v1.pth --out models/salmonn-13b --drop-beats
    llmser import-salmonn ckpt.pth --out models/salmonn-7b --llm lmsys/vicuna-7b-v1.5 --whisper openai/whisper-large-v2

The ``.pth`` is read once with ``torch.load(weights_only=True)`` (a file that needs full unpickling is
refused); the folder it writes loads with ``AudioLLMEmotionModel.from_pretrained`` and its adapter with
plain peft. The mapping and what differs from SALMONN: ``llmser/models/audio_llm/salmonn.py``.
"""

from __future__ import annotations

import argparse

from llmser.models import presets

SALMONN_LLM = "lmsys/vicuna-13b-v1.1"  # as in llmser.models.audio_llm.salmonn (not imported: --help stays instant)
SALMONN_WHISPER = presets.from_name("large-v2", "whisper").hub_id


def add_import_salmonn(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-salmonn", help="convert a SALMONN checkpoint into an llmser audio-LLM folder",
                       description="Read a SALMONN checkpoint (.pth with weights_only=True, or a safetensors copy of "
                                   "its 'model' dict) and write an audio-LLM folder: safetensors speech modules, a "
                                   "standard PEFT adapter, the config and the base's tokenizer.")
    p.add_argument("checkpoint", help="SALMONN checkpoint (salmonn_v1.pth, checkpoint_best.pth, or .safetensors)")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--llm", default=SALMONN_LLM, help=f"base LLM it was trained on (default: {SALMONN_LLM})")
    p.add_argument("--whisper", default=SALMONN_WHISPER, help=f"Whisper encoder it reads (default: {SALMONN_WHISPER})")
    p.add_argument("--dtype", default="float16", choices=("auto", "float32", "bfloat16", "float16"),
                   help="dtype the base LLM loads in (default: float16, SALMONN's)")
    beats = p.add_mutually_exclusive_group()
    beats.add_argument("--drop-beats", action="store_true",
                       help="a checkpoint trained with BEATs: import it Whisper-only (its BEATs columns are cut)")
    beats.add_argument("--second-encoder", default=None, help="a 768-wide encoder (Hub id/folder) in BEATs' place")
    p.set_defaults(handler=run_import_salmonn)


def run_import_salmonn(args: argparse.Namespace) -> int:
    from llmser.models.audio_llm.salmonn import import_salmonn

    overrides = {"llm": args.llm, "whisper": args.whisper, "dtype": args.dtype}
    if args.second_encoder:
        overrides["second_encoder"] = args.second_encoder
    out, weights = import_salmonn(args.checkpoint, args.out, drop_beats=args.drop_beats, **overrides)
    print(f"imported {len(weights.speech)} speech tensors and {len(weights.lora)} LoRA tensors "
          f"({len(weights.ignored)} frozen-encoder tensors and buffers left out) into {out}")
    return 0
