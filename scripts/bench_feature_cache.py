"""Benchmark: per-epoch training time of a frozen-encoder WavLM branch with and without the feature cache.

    python scripts/bench_feature_cache.py --quick          # < 1 minute on 2 CPU cores
    python scripts/bench_feature_cache.py                  # WavLM-base-sized encoder, more clips
    python scripts/bench_feature_cache.py --encoder microsoft/wavlm-large --corpus /data/MSP-Podcast

Both paths train the same heads (layer weights, attentive pooling, class + attribute heads) on the
same clips in the same order, in one run. Without the cache every epoch loads and resamples the
audio and runs the frozen encoder; with it, one filling pass encodes each clip once and every epoch
reads the hidden states from disk. Ends with a machine-readable line ``cache_speedup: X``
(per-epoch time without the cache / with it; the one-off filling pass is reported separately).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from llmser.data.examples import AudioExampleDataset, CachedHiddenDataset, collate_hidden, collate_waveforms
from llmser.data.feature_cache import FeatureCache, encoder_fingerprint
from llmser.models.wavlm import WavLMBranchConfig, WavLMEmotionModel
from llmser.models.wavlm.config import ENCODER_PRESETS

#: microsoft/wavlm-base-plus's architecture (random weights): a realistic encoder cost without a download.
WAVLM_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
              "feat_extract_norm": "group", "do_stable_layer_norm": False, "apply_spec_augment": False,
              "layerdrop": 0.0}


class _Clip:
    """The few Utterance fields the datasets read."""

    def __init__(self, path: Path, index: int):
        self.audio_path = path
        self.file_name = path.name
        self.class_index = index % 8
        self.soft_label = None
        self.arousal, self.valence, self.dominance = 4.0, 4.0, 4.0
        self.annotations = ()


def make_clips(directory: Path, n: int, seconds: float, seed: int = 0) -> list[_Clip]:
    """Write ``n`` synthetic 22.05 kHz clips (resampled on load, as real corpora often need)."""
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(n):
        t = np.arange(int(22050 * seconds)) / 22050
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 300) * t) + 0.05 * rng.standard_normal(t.size)
        path = directory / f"clip_{i:04d}.wav"
        sf.write(path, wave.astype(np.float32), 22050)
        clips.append(_Clip(path, i))
    return clips


def build_encoder_folder(name: str, directory: Path) -> str:
    """Presets are saved as a folder so the model loads them like any pretrained checkpoint."""
    from transformers import WavLMConfig, WavLMModel

    presets = {"tiny": ENCODER_PRESETS["tiny"], "base": WAVLM_BASE}
    if name not in presets:
        return name  # a Hub id or a local folder
    torch.manual_seed(0)
    WavLMModel(WavLMConfig(**presets[name])).save_pretrained(directory / name)
    return str(directory / name)


def run_epochs(model: WavLMEmotionModel, dataset, collate, epochs: int, batch_size: int) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    times = []
    for epoch in range(epochs):
        order = np.random.default_rng(epoch).permutation(len(dataset))
        start = time.perf_counter()
        for lo in range(0, len(order), batch_size):
            batch = collate([dataset[int(i)] for i in order[lo:lo + batch_size]])
            model.train()
            out = model(**batch)
            loss = torch.nn.functional.cross_entropy(out.class_logits, batch["label"]) + out.attributes.mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny encoder, few clips: under a minute")
    parser.add_argument("--encoder", default=None, help="tiny | base | a Hub id or folder (default: base; tiny with --quick)")
    parser.add_argument("--clips", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    encoder = args.encoder or ("tiny" if args.quick else "base")
    n_clips = args.clips or (48 if args.quick else 96)
    epochs = args.epochs or (2 if args.quick else 3)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clips = make_clips(tmp, n_clips, args.seconds)
        encoder_path = build_encoder_folder(encoder, tmp)
        config = WavLMBranchConfig(encoder=encoder_path, encoder_mode="frozen", dropout=0.0)

        torch.manual_seed(0)
        model = WavLMEmotionModel.from_config(config)
        plain = run_epochs(model, AudioExampleDataset(clips, max_seconds=args.seconds), collate_waveforms,
                           epochs, args.batch_size)

        torch.manual_seed(0)
        model = WavLMEmotionModel.from_config(config)
        cache = FeatureCache(tmp / "cache", encoder_fingerprint(model.encoder), {"max_seconds": args.seconds})
        from llmser.data.examples import fill_feature_cache

        start = time.perf_counter()
        fill_feature_cache(model, clips, cache, max_seconds=args.seconds, batch_size=args.batch_size, progress=False)
        fill = time.perf_counter() - start
        cached = run_epochs(model, CachedHiddenDataset(clips, cache), collate_hidden, epochs, args.batch_size)

    per_plain, per_cached = float(np.mean(plain)), float(np.mean(cached))
    print(f"encoder: {encoder} | clips: {n_clips} x {args.seconds:.1f} s | epochs: {epochs} | "
          f"threads: {torch.get_num_threads()}")
    print(f"{'':28}{'per epoch (s)':>14}")
    print(f"{'without cache':28}{per_plain:14.3f}")
    print(f"{'with cache':28}{per_cached:14.3f}")
    print(f"{'one-off cache fill':28}{fill:14.3f}")
    print(f"break-even after {fill / max(per_plain - per_cached, 1e-9):.2f} epochs")
    print(f"cache_speedup: {per_plain / per_cached:.2f}")


if __name__ == "__main__":
    main()
