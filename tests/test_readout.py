"""The closed-form ridge readout (``llmser.models.readout``): the solution, the penalty choice, missing targets,
saving; and the audio-LLM's ``attribute_readout: ridge`` end to end on tiny presets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmser.models.layers import bounded_attributes, unbounded_attributes
from llmser.models.readout import RidgeReadout, _RidgePath

ROOT = Path(__file__).resolve().parents[1]


def _data(n: int = 40, f: int = 6, noise: float = 0.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, f, generator=g) * torch.linspace(0.5, 3.0, f) + 2.0
    w = torch.randn(f, 3, generator=g)
    y = 4.0 + 0.3 * ((x - x.mean(0)) / x.std(0, unbiased=False)) @ w + noise * torch.randn(n, 3, generator=g)
    return x, y


def _explicit_ridge(x: torch.Tensor, y: torch.Tensor, alpha: float):
    """The textbook solution on standardised features: (Z'Z + alpha I)^-1 Z'(y - mean y), intercept by centring."""
    x, y = x.double(), y.double()
    z = (x - x.mean(0)) / x.std(0, unbiased=False)
    zc = z - z.mean(0)
    w = torch.linalg.solve(zc.T @ zc + alpha * torch.eye(z.shape[1], dtype=z.dtype), zc.T @ (y - y.mean()))
    return z @ w + (y.mean() - z.mean(0) @ w)


def test_the_fit_is_the_textbook_ridge_solution_at_the_penalty_chosen_on_dev():
    x, y = _data(n=70, noise=0.5)
    x, y, dev_x, dev_y = x[:40], y[:40], x[40:], y[40:]
    readout = RidgeReadout(x.shape[1])
    report = readout.fit(x, y, dev_x, dev_y, alphas=(0.1, 10.0, 1000.0), rescale=False)
    for k, choice in enumerate(report):
        assert set(choice) == {"alpha", "dev_ccc", "scale"} and choice["scale"] == 1.0 and choice["alpha"] == pytest.approx(float(readout.alpha[k]))
        torch.testing.assert_close(readout(x)[:, k].double(), _explicit_ridge(x, y[:, k], choice["alpha"]),
                                   atol=1e-4, rtol=1e-4)
    # the chosen penalty is the one with the best dev CCC among those offered
    from llmser.models.readout import concordance
    for k in range(3):
        scores = {}
        for alpha in (0.1, 10.0, 1000.0):
            other = RidgeReadout(x.shape[1])
            other.fit(x, y, dev_x, dev_y, alphas=(alpha,), rescale=False)
            scores[alpha] = concordance(other(dev_x)[:, k], dev_y[:, k])
        assert report[k]["alpha"] == max(scores, key=scores.get)
        assert report[k]["dev_ccc"] == pytest.approx(max(scores.values()), abs=1e-5)


def test_without_dev_the_penalty_is_chosen_by_exact_leave_one_out_predictions():
    x, y = _data(n=12, noise=0.3)
    path = _RidgePath((x.double() - x.double().mean(0)) / x.double().std(0, unbiased=False), y[:, 0].double())
    loo = path.leave_one_out(2.0)
    for i in range(12):  # refit without row i, on the standardisation of the whole train set (as the readout does)
        keep = torch.arange(12) != i
        z = (x.double() - x.double().mean(0)) / x.double().std(0, unbiased=False)
        zi, yi = z[keep], y[keep, 0].double()
        zc = zi - zi.mean(0)
        w = torch.linalg.solve(zc.T @ zc + 2.0 * torch.eye(z.shape[1], dtype=z.dtype), zc.T @ (yi - yi.mean()))
        assert float(loo[i]) == pytest.approx(float(z[i] @ w + yi.mean() - zi.mean(0) @ w), abs=1e-8)
    readout = RidgeReadout(x.shape[1])
    report = readout.fit(x, y, alphas=(0.01, 2.0, 500.0), rescale=False)
    assert all("loo_ccc" in choice and "dev_ccc" not in choice for choice in report)


def _explicit_leave_one_out(x: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    """Refit without each row in turn, on the standardisation of the whole train set (as the readout does)."""
    z = (x.double() - x.double().mean(0)) / x.double().std(0, unbiased=False)
    out = torch.empty(len(y), dtype=torch.float64)
    for i in range(len(y)):
        keep = torch.arange(len(y)) != i
        zi, yi = z[keep], y[keep].double()
        zc = zi - zi.mean(0)
        w = torch.linalg.solve(zc.T @ zc + alpha * torch.eye(z.shape[1], dtype=z.dtype), zc.T @ (yi - yi.mean()))
        out[i] = z[i] @ w + yi.mean() - zi.mean(0) @ w
    return out


def test_rescaling_stretches_each_output_to_the_spread_of_its_targets_out_of_sample():
    """CCC punishes ridge's shrinkage: with rescale the weights are the plain ridge's times std(y) / std(the
    leave-one-out predictions), the mean kept, and the penalty is chosen on the rescaled dev predictions."""
    x, y = _data(n=60, noise=1.5, seed=3)
    x, y, dev_x, dev_y = x[:30], y[:30], x[30:], y[30:]
    alphas = (1.0, 30.0, 1000.0)
    plain, stretched = RidgeReadout(x.shape[1]), RidgeReadout(x.shape[1])
    stretched_report = stretched.fit(x, y, dev_x, dev_y, alphas=alphas, rescale=True)
    from llmser.models.readout import concordance
    for k, choice in enumerate(stretched_report):
        alpha = choice["alpha"]
        plain.fit(x, y, alphas=(alpha,), rescale=False)
        loo = _explicit_leave_one_out(x, y[:, k], alpha)
        scale = float(y[:, k].double().std(unbiased=False) / loo.std(unbiased=False))
        assert choice["scale"] == pytest.approx(scale, rel=1e-6) and scale > 1.0  # ridge shrank: stretched
        expected = y[:, k].double().mean() + scale * (plain(dev_x)[:, k].double() - y[:, k].double().mean())
        torch.testing.assert_close(stretched(dev_x)[:, k].double(), expected, atol=1e-4, rtol=1e-4)
        dev_scores = {}
        for other_alpha in alphas:
            other = RidgeReadout(x.shape[1])
            other.fit(x, y, alphas=(other_alpha,), rescale=True)
            dev_scores[other_alpha] = concordance(other(dev_x)[:, k], dev_y[:, k])
        assert alpha == max(dev_scores, key=dev_scores.get)
    # without dev, the rescaled leave-one-out predictions are what choose; they spread as the targets do
    path = _RidgePath((x.double() - x.double().mean(0)) / x.double().std(0, unbiased=False), y[:, 0].double(),
                      rescale=True)
    assert float(path.leave_one_out(30.0).std(unbiased=False)) == pytest.approx(
        float(y[:, 0].double().std(unbiased=False)), rel=1e-6)


def test_rows_without_a_target_are_left_out_of_that_attribute_only():
    x, y = _data(noise=0.2)
    holes = y.clone()
    holes[:10, 1] = float("nan")
    readout, reference = RidgeReadout(x.shape[1]), RidgeReadout(x.shape[1])
    readout.fit(x, holes, alphas=(1.0,), rescale=False)
    reference.fit(x[10:], y[10:], alphas=(1.0,), rescale=False)
    assert torch.isfinite(readout(x)).all()
    # attribute 1 saw rows 10-39 only; the standardisation still uses every row, so compare predictions' order
    assert torch.corrcoef(torch.stack([readout(x)[:, 1], reference(x)[:, 1]]))[0, 1] > 0.999
    few = y.clone()
    few[2:, 2] = float("nan")
    with pytest.raises(ValueError, match="output 2 has 2 train rows"):
        RidgeReadout(x.shape[1]).fit(x, few, alphas=(1.0,), rescale=False)


def test_an_unfitted_readout_refuses_to_predict_and_a_fitted_one_saves_as_buffers(tmp_path):
    from safetensors.torch import load_file, save_file

    x, y = _data()
    readout = RidgeReadout(x.shape[1])
    with pytest.raises(RuntimeError, match="has not been fitted"):
        readout(x)
    readout.fit(x, y, alphas=(1.0, 100.0), rescale=False)
    assert not list(readout.parameters())  # nothing for an optimizer: the closed form is the training
    save_file(readout.state_dict(), str(tmp_path / "readout.safetensors"))
    again = RidgeReadout(x.shape[1])
    again.load_state_dict(load_file(str(tmp_path / "readout.safetensors")))
    torch.testing.assert_close(again(x), readout(x))
    with pytest.raises(ValueError, match="features must be"):
        readout.fit(x, y[:, :2], alphas=(1.0,), rescale=False)


@pytest.mark.parametrize("train, dev, features", [(150, 50, 400), (60, 20, 500), (300, 0, 200)])
def test_the_fit_holds_the_tensors_its_memory_formula_counts(train, dev, features):
    """``RidgeReadout.fit_bytes`` (what ``llmser plan`` and the fit's up-front check use) against the live tensor
    storage of a real fit, wide (N < F) and tall (N > F), with and without dev; LAPACK's own copy and workspace
    are outside what tensors show (scripts/bench_readout_memory.py measures the whole process)."""
    from llmser.planning.measure import LiveStorage

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(train, features, generator=g), torch.randn(train, 3, generator=g)
    dev_x, dev_y = (torch.randn(dev, features, generator=g), torch.randn(dev, 3, generator=g)) if dev else (None, None)
    readout = RidgeReadout(features)
    live = LiveStorage().hold([t for t in (x, y, dev_x, dev_y) if t is not None] + list(readout.buffers()))
    held = live.current
    with live:
        readout.fit(x, y, dev_x, dev_y, alphas=(1.0, 10.0), rescale=True)
    planned = RidgeReadout.fit_bytes(train, dev, features)
    assert planned["tensors"] <= live.peak - held <= 1.03 * planned["tensors"]
    assert planned["inputs"] == 4 * (train + dev) * features


def test_the_fit_refuses_up_front_where_the_machine_lacks_the_memory(tmp_path, monkeypatch):
    import llmser.training.readout as fitting

    recipe, setup = _setup(tmp_path)
    monkeypatch.setattr(fitting, "available_memory_bytes", lambda: 1024)
    with pytest.raises(MemoryError, match=r"needs ~0\.0 GiB of host memory .* model.encoder_layers=last"):
        fitting.fit_readout(setup, recipe, progress=False)
    assert not setup.model.heads.readout.fitted
    monkeypatch.setattr(fitting, "available_memory_bytes", lambda: None)  # unknown (not Linux): no refusal
    fitting.fit_readout(setup, recipe, progress=False)
    assert setup.model.heads.readout.fitted


def test_unbounded_attributes_inverts_the_bounding_sigmoid():
    values = torch.tensor([[1.5, 4.0, 6.9], [2.0, 3.3, 5.0]])
    torch.testing.assert_close(bounded_attributes(unbounded_attributes(values)), values, atol=1e-5, rtol=1e-5)
    edges = bounded_attributes(unbounded_attributes(torch.tensor([[0.0, 7.0, 9.0]])))
    assert edges.min() > 1.0 and edges.max() < 7.0


def _setup(tmp_path, *overrides: str):
    from accelerate import Accelerator

    from llmser.data.msp_podcast import MSPPodcast
    from llmser.models.audio_llm.branch import prepare
    from llmser.models.registry import branch_config, load_recipe
    from tests.corpus_factory import transcribed_corpus

    corpus_dir = transcribed_corpus(tmp_path / "corpus")
    recipe = load_recipe(ROOT / "adapters" / "audio_tiny.yaml",
                         [f"data.corpus={corpus_dir}", f"train.output_dir={tmp_path / 'run'}", "data.batch_size=4",
                          "model.mode=head", "model.encoder_layers=all", f"data.cache_dir={tmp_path / 'cache'}",
                          "model.attribute_readout=ridge", *overrides])
    torch.manual_seed(0)
    return recipe, prepare(recipe, branch_config(recipe), MSPPodcast.from_folder(corpus_dir), Accelerator(cpu=True))


def test_the_audio_llm_reads_its_attributes_from_the_fitted_readout_through_stage_two_and_a_reload(tmp_path):
    from accelerate import Accelerator

    from llmser.models.audio_llm.model import AudioLLMEmotionModel
    from llmser.training.engine import Trainer
    from llmser.training.readout import fit_readout
    from llmser.training.warmup import warm_up

    recipe, setup = _setup(tmp_path, "model.speech_warmup_steps=2", "train.max_steps=1", "train.eval_every=1",
                           "train.save_every=1")
    model = setup.model
    assert setup.fit_readout and model.heads.speech.attribute_head is None  # the speech head predicts classes only
    result = fit_readout(setup, recipe, progress=False)
    assert set(result["readout"]) == {"arousal", "valence", "dominance"}
    assert all("dev_ccc" in c for c in result["readout"].values())
    batch = setup.collate_fn([setup.eval_set[i] for i in range(len(setup.eval_set))])
    readout = model.readout_inputs(batch["speech_frames"], batch["frame_mask"])
    expected = model.heads.readout(readout).clamp(1.0 + 6e-3, 7.0 - 6e-3)
    warm_up(setup, recipe, progress=False)
    model.eval()
    with torch.no_grad():
        stage_one = model.warmup_outputs(**batch).attributes
    torch.testing.assert_close(stage_one, expected, atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # the LLM head's attribute layer starts at zero: the full model starts at the readout too
        torch.testing.assert_close(model(**batch).attributes, expected, atol=1e-4, rtol=1e-4)
    Trainer(recipe, model, setup.train_set, setup.eval_set, setup.collate_fn, class_counts=setup.class_counts,
            accelerator=Accelerator(cpu=True)).fit()
    assert model.heads.readout.fitted and not any(n.startswith("heads.readout") for n, _ in model.named_parameters())
    model.eval()
    with torch.no_grad():
        trained = model(**batch).attributes
    again = AudioLLMEmotionModel.from_pretrained(model.save_pretrained(tmp_path / "saved")).eval()
    assert again.config.attribute_readout == "ridge" and bool(again.heads.readout.fitted)
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).attributes, trained)
    torch.testing.assert_close(again.heads.readout.weight, model.heads.readout.weight)


def test_the_engine_fits_the_readout_before_stage_one(tmp_path):
    from llmser.training.run import run

    recipe, _ = _setup(tmp_path)  # builds the corpus; run() reads the same recipe overrides
    overrides = [f"data.corpus={recipe.data.corpus}", f"train.output_dir={tmp_path / 'engine'}", "data.batch_size=4",
                 "model.mode=head", "model.encoder_layers=all", f"data.cache_dir={tmp_path / 'cache'}",
                 "model.attribute_readout=ridge", "model.speech_warmup_steps=1", "train.max_steps=1",
                 "train.eval_every=1", "train.save_every=1"]
    result = run(ROOT / "adapters" / "audio_tiny.yaml", overrides)
    assert set(result["readout"]) == {"arousal", "valence", "dominance"} and "warmup_loss" in result


def test_the_ridge_readout_is_ignored_in_answer_mode_and_bad_settings_are_refused():
    """One recipe serves both modes (as freeze_speech_head): answer mode has no speech head, so no readout is built
    or fitted there."""
    import tiny_models  # noqa: E402 - the tests folder is on sys.path under pytest

    from llmser.models.audio_llm.config import AudioLLMBranchConfig
    from llmser.models.audio_llm.model import AudioLLMEmotionModel

    answer = AudioLLMEmotionModel.from_config(tiny_models.config("audio_llm", attribute_readout="ridge"))
    assert not answer.has_readout and answer.heads is None
    head = AudioLLMEmotionModel.from_config(tiny_models.config("audio_llm", mode="head", attribute_readout="ridge"))
    assert head.has_readout
    with pytest.raises(ValueError, match="attribute_readout must be 'head' or 'ridge'"):
        AudioLLMBranchConfig(llm="tiny", whisper="tiny", mode="head", attribute_readout="lasso")
    with pytest.raises(ValueError, match="readout_alphas must list positive"):
        AudioLLMBranchConfig(llm="tiny", whisper="tiny", mode="head", readout_alphas=[0.0, 1.0])
