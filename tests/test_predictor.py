"""A system of tiny members: build-system, Predictor, llmser predict (bad files skipped, resume, submission)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import tiny_models  # noqa: E402 - the tests folder is on sys.path under pytest
import torch

from llmser.inference.predictor import Predictor
from llmser.inference.system import build_system

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp: Path, name: str, model, branch: str, model_section: dict) -> Path:
    return tiny_models.save_run(tmp, name, model, branch, model_section)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from llmser.models.fusion.config import FusionBranchConfig
    from llmser.models.fusion.model import FusionEmotionModel
    from llmser.models.text_llm.config import TextLLMBranchConfig
    from llmser.models.text_llm.model import TextLLMEmotionModel
    from llmser.models.wavlm.config import WavLMBranchConfig
    from llmser.models.wavlm.model import WavLMEmotionModel

    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("runs")
    wavlm_section = tiny_models.section("wavlm")
    wavlm = WavLMEmotionModel.from_config(WavLMBranchConfig(**wavlm_section))
    text_section = tiny_models.section("text_llm")
    text = TextLLMEmotionModel.from_config(TextLLMBranchConfig(**text_section))
    fusion_section = {"streams": ["text_llm", "wavlm"], "hidden": 16, "heads": 2, "head_hidden_size": 16,
                      "stream_sizes": {"wavlm": wavlm.pooling.output_size,
                                       "text_llm": text.llm.get_base_model().config.hidden_size},
                      "sequence_sizes": {"wavlm": wavlm.encoder.config.hidden_size}}
    fusion = FusionEmotionModel(FusionBranchConfig(**fusion_section))
    return {"wavlm": _run(tmp, "wavlm", wavlm, "wavlm", wavlm_section),
            "text_llm": _run(tmp, "text", text, "text_llm", text_section),
            "fusion": _run(tmp, "fusion", fusion, "fusion", fusion_section)}


@pytest.fixture()
def clips(tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        sf.write(folder / f"clip{i}.wav", (0.1 * rng.standard_normal(16000 + 4000 * i)).astype(np.float32), 16000)
    (folder / "clip9.wav").write_bytes(b"RIFF....not really a wav")
    transcripts = {f"clip{i}": text for i, text in enumerate(["so happy", "i hate this", "fine", "oh no", "wow"])}
    transcripts["clip9"] = "unreadable audio, but a transcript"
    return folder, transcripts


@pytest.mark.parametrize("method", ["fusion", "average", "plurality"])
def test_system_predicts_every_readable_file_and_skips_the_bad_one(runs, clips, tmp_path, method):
    system = build_system(tmp_path / "system", {"wavlm": runs["wavlm"], "text_llm": runs["text_llm"]},
                          fusion=runs["fusion"] if method == "fusion" else None, method=method)
    manifest = json.loads((system / "llmser.json").read_text())
    assert [m["kind"] for m in manifest["members"]][:2] == ["wavlm", "text_llm"]
    assert not list(system.rglob("*.bin")) and (system / "README.md").is_file()
    folder, transcripts = clips
    result = Predictor.from_pretrained(system)(sorted(folder.glob("*.wav")), transcripts, batch_size=2,
                                               progress=False)
    preds = result.predictions
    assert preds.file_names == [f"clip{i}.wav" for i in range(5)]
    assert "clip9.wav" in result.skipped and "clip9.wav" in result.skipped["clip9.wav"]
    assert preds.probs.shape == (5, 8) and np.allclose(preds.probs.sum(1), 1, atol=1e-5)
    from llmser.models.text_llm.config import DEFAULT_TEXT_PROMPTS

    variants = {f"vote_text_llm_{v}" for v in DEFAULT_TEXT_PROMPTS}  # the text member votes over its variants
    assert preds.attributes.shape == (5, 3) and set(preds.extras) == {"vote_wavlm", "vote_text_llm"} | variants


def test_predictions_do_not_depend_on_batching(runs, clips, tmp_path):
    system = build_system(tmp_path / "system", {"wavlm": runs["wavlm"], "text_llm": runs["text_llm"]},
                          fusion=runs["fusion"])
    folder, transcripts = clips
    files = sorted(folder.glob("clip[0-4].wav"))
    predictor = Predictor.from_pretrained(system)
    one = predictor(files, transcripts, batch_size=1, progress=False).predictions
    many = predictor(files, transcripts, batch_size=5, progress=False).predictions
    np.testing.assert_allclose(one.probs, many.probs, atol=1e-4)


def test_predict_cli_writes_submission_and_resumes(runs, clips, tmp_path, capsys):
    from llmser.cli import main

    system = tmp_path / "system"
    assert main(["build-system", "--member", f"wavlm={runs['wavlm']}", "--member", f"text_llm={runs['text_llm']}",
                 "--fusion", str(runs["fusion"]), "--out", str(system)]) == 0
    folder, transcripts = clips
    tdir = tmp_path / "transcripts"
    tdir.mkdir()
    for stem, text in transcripts.items():
        (tdir / f"{stem}.txt").write_text(text)
    out = tmp_path / "pred" / "preds.csv"
    args = ["predict", "--model", str(system), "--audio", str(folder), "--transcripts", str(tdir), "--out", str(out)]
    assert main([*args, "--submission"]) == 0
    assert (out.parent / "task1_predictions.csv").is_file() and (out.parent / "task2_predictions.csv").is_file()
    first = out.read_text()
    assert "skipped clip9.wav" in capsys.readouterr().out
    assert main(args) == 0
    assert "5 file(s) already predicted, 1 to go" in capsys.readouterr().out
    assert out.read_text() == first


def test_build_system_needs_a_trained_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="recipe.yaml"):
        build_system(tmp_path / "s", {"wavlm": tmp_path})
