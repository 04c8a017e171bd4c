"""The fusion adapter: branch-outputs cache, model shapes and gate, save/load, training with the engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from llmser.config import ConfigError
from llmser.data.branch_outputs import load_branch_outputs, pool_frames, save_branch_outputs
from llmser.inference.collect import collect_branch_outputs, wavlm_sequence
from llmser.models.fusion import FusionBranchConfig, FusionEmotionModel, collate_fusion
from llmser.schema import CLASS_CODES
from tests.corpus_factory import write_corpus

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"text_llm": 10, "wavlm": 12}
SEQ = {"wavlm": 6}


def _config(**kw) -> FusionBranchConfig:
    base = dict(streams=["text_llm", "wavlm"], hidden=16, heads=2, head_hidden_size=16, dropout=0.0,
                stream_sizes=dict(SIZES), sequence_sizes=dict(SEQ))
    return FusionBranchConfig(**{**base, **kw})


def _batch(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, 5, dtype=torch.bool)
    mask[0, 3:] = False
    return {"text_llm_embedding": torch.randn(b, 10, generator=g), "wavlm_embedding": torch.randn(b, 12, generator=g),
            "wavlm_sequence": torch.randn(b, 5, 6, generator=g), "wavlm_sequence_mask": mask}


# ---------------------------------------------------------------------- config


@pytest.mark.parametrize("kwargs, message", [
    ({"streams": []}, "streams is empty"),
    ({"streams": ["wavlm", "wavlm"]}, "repeated"),
    ({"query": "audio_llm"}, "not one of the streams"),
    ({"hidden": 10, "heads": 4}, "multiple of heads"),
    ({"streams": ["wavlm"], "stream_sizes": {"wavlm": 4}, "sequence_sizes": {}}, "at least two streams"),
    ({"class_head": False, "attribute_head": False}, "at least one"),
])
def test_config_errors_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _config(**kwargs)


def test_model_needs_input_sizes():
    with pytest.raises(ValueError, match="input sizes"):
        FusionEmotionModel(FusionBranchConfig(streams=["text_llm", "wavlm"]))


def test_shipped_recipe_parses():
    from llmser.models.registry import branch_config, load_recipe

    with _registered():
        recipe = load_recipe(ROOT / "adapters/fusion_tiny.yaml")
        assert isinstance(branch_config(recipe), FusionBranchConfig)
        with pytest.raises(ConfigError, match="did you mean 'model.hidden'"):
            load_recipe(ROOT / "adapters/fusion_tiny.yaml", ["model.hiden=3"])


# ---------------------------------------------------------------------- model


def test_attention_shapes_gate_and_bounds():
    model = FusionEmotionModel(_config()).eval()
    batch = _batch()
    out = model(**batch)
    assert out.class_logits.shape == (4, 8) and out.attributes.shape == (4, 3)
    assert out.embedding.shape == (4, 32)
    assert ((out.attributes >= 1) & (out.attributes <= 7)).all()
    _, gate = model.fuse(batch)
    assert gate.shape == (4, 1, 16)  # text_llm (query) has no sequence: one pooled token
    assert (gate >= 0).all() and (gate <= 1).all()


def test_padded_frames_do_not_change_the_output():
    model = FusionEmotionModel(_config()).eval()
    batch = _batch()
    alone = {k: v[:1] for k, v in batch.items()}
    alone["wavlm_sequence"], alone["wavlm_sequence_mask"] = alone["wavlm_sequence"][:, :3], alone["wavlm_sequence_mask"][:, :3]
    torch.testing.assert_close(model(**alone).class_logits, model(**batch).class_logits[:1], atol=1e-5, rtol=1e-5)


def test_sequences_off_uses_pooled_embeddings_only():
    model = FusionEmotionModel(_config(sequences=False)).eval()
    assert model.encoders["wavlm"].sequence is None
    batch = _batch()
    changed = dict(batch, wavlm_sequence=torch.randn(4, 5, 6))
    torch.testing.assert_close(model(**batch).class_logits, model(**changed).class_logits)


def test_concat_baseline():
    model = FusionEmotionModel(_config(mode="concat")).eval()
    out = model(**_batch())
    assert out.class_logits.shape == (4, 8) and out.embedding.shape == (4, 22)
    assert model.fuse(_batch())[1] is None
    assert {n.split(".")[0] for n, _ in model.named_parameters()} == {"norms", "heads"}


@pytest.mark.parametrize("mode", ["attention", "concat"])
def test_only_fusion_parameters_exist_and_all_train(mode):
    torch.manual_seed(0)
    model = FusionEmotionModel(_config(mode=mode))
    names = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert names <= {"encoders", "cross", "heads", "norms"}  # no branch encoder or LLM inside
    assert sum(p.numel() for p in model.parameters()) < 50_000
    batch = _batch()
    inputs = {k: v.clone() for k, v in batch.items()}
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    out = model.train()(**batch)
    (out.class_logits.logsumexp(-1).mean() + out.attributes.mean()).backward()
    optimizer.step()
    unchanged = [k for k, v in model.named_parameters() if torch.equal(v.detach(), before[k])]
    assert not unchanged, unchanged
    for key, value in inputs.items():  # the cached inputs are data, never trained
        assert torch.equal(batch[key], value)


def _with_member_outputs(batch, seed=1):
    g = torch.Generator().manual_seed(seed)
    b = batch["text_llm_embedding"].shape[0]
    for s in ("text_llm", "wavlm"):
        batch[f"{s}_probs"] = torch.softmax(torch.randn(b, 8, generator=g), -1)
        batch[f"{s}_attributes"] = 1 + 6 * torch.rand(b, 3, generator=g)
    return batch


@pytest.mark.parametrize("mode", ["attention", "concat"])
def test_residual_fusion_starts_as_the_average_of_its_streams_and_learns_a_correction(mode):
    torch.manual_seed(0)
    model = FusionEmotionModel(_config(mode=mode, residual=True))
    batch = _with_member_outputs(_batch())
    out = model.eval()(**batch)
    mean_probs = (batch["text_llm_probs"] + batch["wavlm_probs"]) / 2
    torch.testing.assert_close(torch.softmax(out.class_logits, -1), mean_probs)
    torch.testing.assert_close(out.attributes, (batch["text_llm_attributes"] + batch["wavlm_attributes"]) / 2)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    out = model.train()(**batch)
    loss = torch.nn.functional.cross_entropy(out.class_logits, torch.arange(4)) + (out.attributes - 4).pow(2).mean()
    loss.backward()
    optimizer.step()
    for name in ("stream_class_weights", "stream_attribute_weights", "heads.class_head.4.weight"):
        assert not torch.equal(dict(model.named_parameters())[name].detach(), before[name]), name
    with pytest.raises(KeyError, match="wavlm_probs"):
        model(**{k: v for k, v in batch.items() if k != "wavlm_probs"})


@pytest.mark.parametrize("mode", ["attention", "concat"])
def test_save_load_round_trip_is_identical(mode, tmp_path):
    torch.manual_seed(1)
    model = FusionEmotionModel(_config(mode=mode, dropout=0.2)).eval()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "config.json").read_text())["stream_sizes"] == SIZES
    reloaded = FusionEmotionModel.from_pretrained(tmp_path).eval()
    a, b = model(**_batch()), reloaded(**_batch())
    torch.testing.assert_close(a.class_logits, b.class_logits, rtol=0, atol=0)
    torch.testing.assert_close(a.attributes, b.attributes, rtol=0, atol=0)


def test_from_pretrained_refuses_another_branch(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"branch": "wavlm"}))
    with pytest.raises(ValueError, match="not a fusion adapter"):
        FusionEmotionModel.from_pretrained(tmp_path)


# ---------------------------------------------------------------------- branch outputs


def test_branch_outputs_round_trip_and_split_names(tmp_path):
    tensors = {"embedding": torch.randn(3, 4), "probs": torch.softmax(torch.randn(3, 8), -1),
               "attributes": torch.rand(3, 3) * 6 + 1, "sequence": torch.randn(3, 5, 2),
               "sequence_mask": torch.ones(3, 5, dtype=torch.bool)}
    save_branch_outputs(tmp_path, "wavlm", "Development", ["a.wav", "b.wav", "c.wav"], tensors)
    assert json.loads((tmp_path / "wavlm" / "Development.file_names.json").read_text()) == ["a.wav", "b.wav", "c.wav"]
    loaded = load_branch_outputs(tmp_path, "wavlm", "dev")  # dev finds Development
    assert loaded.file_names == ["a.wav", "b.wav", "c.wav"] and loaded.has_sequence
    for key, value in tensors.items():
        assert torch.equal(loaded.tensors[key], value)
    preds = loaded.predictions()
    assert preds.classes == [CLASS_CODES[i] for i in tensors["probs"].argmax(-1)]
    with pytest.raises(FileNotFoundError, match="has no outputs for split 'test'"):
        load_branch_outputs(tmp_path, "wavlm", "test")
    with pytest.raises(FileNotFoundError, match="branches there: wavlm"):
        load_branch_outputs(tmp_path, "text_llm", "dev")


def test_branch_outputs_are_checked_before_writing(tmp_path):
    with pytest.raises(ValueError, match=r"probs has shape \(2, 7\).*no 'embedding'|no 'embedding'.*probs"):
        save_branch_outputs(tmp_path, "x", "dev", ["a", "b"], {"probs": torch.zeros(2, 7)})
    with pytest.raises(ValueError, match="come together"):
        save_branch_outputs(tmp_path, "x", "dev", ["a", "b"], {"embedding": torch.zeros(2, 3),
                                                              "sequence": torch.zeros(2, 4, 3)})
    with pytest.raises(ValueError, match="repeat"):
        save_branch_outputs(tmp_path, "x", "dev", ["a", "a"], {"embedding": torch.zeros(2, 3)})
    assert not (tmp_path / "x").exists() or not list((tmp_path / "x").glob("*.safetensors"))


def test_pool_frames_averages_real_frames_only():
    frames = torch.arange(10, dtype=torch.float32).view(1, 5, 2)
    mask = torch.tensor([[True, True, True, False, False]])
    pooled, pooled_mask = pool_frames(frames, mask, 2)
    assert pooled_mask.tolist() == [[True, True, False]]
    torch.testing.assert_close(pooled[0, :2], torch.tensor([[1.0, 2.0], [4.0, 5.0]]))


def test_collect_from_the_wavlm_branch(tmp_path):
    from llmser.data.examples import AudioExampleDataset, collate_waveforms
    from llmser.data.msp_podcast import MSPPodcast
    from llmser.models.wavlm import WavLMBranchConfig, WavLMEmotionModel

    corpus = MSPPodcast.from_folder(write_corpus(tmp_path / "c", _rows(5)))
    utts = corpus.utterances("train")
    model = WavLMEmotionModel.from_config(WavLMBranchConfig(encoder="tiny", encoder_mode="finetune"))
    names, tensors = collect_branch_outputs(model, AudioExampleDataset(utts, max_seconds=1.0), collate_waveforms,
                                            batch_size=2, sequence_fn=wavlm_sequence, sequence_stride=2,
                                            progress=False)
    assert names == [u.file_name for u in utts]
    assert tensors["embedding"].shape == (len(utts), 128) and tensors["probs"].shape == (len(utts), 8)
    assert tensors["sequence"].shape[0] == len(utts) and tensors["sequence"].shape[2] == 64
    assert tensors["sequence"].dtype == torch.float16 and tensors["sequence_mask"].any(1).all()
    save_branch_outputs(tmp_path / "out", "wavlm", "train", names, tensors)
    assert len(load_branch_outputs(tmp_path / "out", "wavlm", "Train")) == len(utts)


# ---------------------------------------------------------------------- training with the engine


def _rows(per_split: int, seed: int = 0) -> list[list]:
    rng = np.random.default_rng(seed)
    rows = []
    for split, n in (("Train", 8 * per_split), ("Development", 4 * per_split), ("Test1", 4 * per_split)):
        for i in range(n):
            code = CLASS_CODES[i % 8]
            act, val, dom = (float(v) for v in np.round(rng.uniform(1, 7, 3), 1))
            rows.append([f"{split}_{i:04d}.wav", code, act, val, dom, i % 5, "Female" if i % 2 else "Male", split])
    return rows


def _write_outputs(corpus, out_dir: Path, seed: int = 0) -> None:
    """Fake branch outputs: wavlm's embedding carries the class (noisily), its frames the arousal;
    text_llm's embedding carries valence and a weaker class signal."""
    g = torch.Generator().manual_seed(seed)
    for split in corpus.splits():
        utts = corpus.utterances(split)
        labels = torch.tensor([u.class_index for u in utts])
        attrs = torch.tensor([[u.arousal, u.valence, u.dominance] for u in utts], dtype=torch.float32)
        n = len(utts)
        onehot = torch.nn.functional.one_hot(labels, 8).float()
        wavlm = torch.cat([3.0 * onehot, torch.randn(n, 4, generator=g)], 1) + 0.8 * torch.randn(n, 12, generator=g)
        lengths = torch.randint(2, 6, (n,), generator=g)
        mask = torch.arange(5)[None] < lengths[:, None]
        seq = 0.3 * torch.randn(n, 5, 6, generator=g)
        seq[..., 0] += attrs[:, :1] - 4  # one feature: a constant across features would vanish in LayerNorm
        text = torch.cat([onehot[:, :4], (attrs[:, 1:2] - 4) / 2, torch.randn(n, 5, generator=g)], 1)
        names = [u.file_name for u in utts]
        save_branch_outputs(out_dir, "wavlm", split, names, {"embedding": wavlm, "sequence": seq * mask[..., None],
                                                             "sequence_mask": mask})
        save_branch_outputs(out_dir, "text_llm", split, names, {"embedding": text})


class _registered:
    """Kept for the tests that use it: the fusion branch is always registered now."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    from llmser.data.msp_podcast import MSPPodcast

    root = tmp_path_factory.mktemp("fusion")
    corpus_dir = write_corpus(root / "corpus", _rows(12))
    _write_outputs(MSPPodcast.from_folder(corpus_dir), root / "outputs")
    return corpus_dir, root / "outputs"


def _overrides(corpus_dir, outputs, out, **extra):
    items = {"data.corpus": str(corpus_dir), "model.outputs_dir": str(outputs), "train.output_dir": str(out),
             "train.max_steps": 60, "train.eval_every": 20, "train.save_every": 60, "model.hidden": 32,
             "model.head_hidden_size": 32, "model.dropout": 0.0, "optim.lr": 3e-3, "optim.warmup_steps": 0,
             "train.early_stopping_patience": 0, "data.train_split": "train", "data.eval_split": "dev",
             "model.residual": "false", **extra}  # the fake outputs carry embeddings only, no probabilities
    return [f"{k}={v}" for k, v in items.items()]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["attention", "concat"])
def test_engine_trains_fusion_on_cached_outputs(fake_run, tmp_path, mode):
    from llmser.training.run import run

    corpus_dir, outputs = fake_run
    with _registered():
        result = run(ROOT / "adapters/fusion_tiny.yaml",
                     _overrides(corpus_dir, outputs, tmp_path / "run", **{"model.mode": mode}))
    assert result["step"] == 60
    assert result["test"]["metrics"]["macro_f1"] > 0.5  # chance is 0.125
    assert result["test"]["metrics"]["ccc_valence"] > 0.3  # from text_llm's pooled embedding
    if mode == "attention":  # arousal is only in wavlm's frames, which only the attention mode reads
        assert result["test"]["metrics"]["ccc_arousal"] > 0.5
    best = FusionEmotionModel.from_pretrained(tmp_path / "run" / "best")
    assert best.config.stream_sizes == SIZES and best.config.sequence_sizes == SEQ
    assert (tmp_path / "run" / "test_predictions.csv").is_file()


def test_prepare_reports_files_without_outputs(fake_run, tmp_path):
    from llmser.data.msp_podcast import MSPPodcast
    from llmser.models.fusion.branch import prepare
    from llmser.models.registry import branch_config, load_recipe

    corpus_dir, outputs = fake_run
    partial = tmp_path / "partial"
    for branch in ("wavlm", "text_llm"):
        for split in ("Train", "Development", "Test1"):
            out = load_branch_outputs(outputs, branch, split)
            keep = out.file_names[1:] if (branch, split) == ("wavlm", "Train") else out.file_names
            rows = [out.index()[n] for n in keep]
            save_branch_outputs(partial, branch, split, keep, {k: v[rows] for k, v in out.tensors.items()})
    corpus = MSPPodcast.from_folder(corpus_dir)
    with _registered():
        # outputs that record no training split; embeddings only, so no residual over their probabilities
        splits = ["data.train_split=train", "data.eval_split=dev", "model.residual=false"]
        recipe = load_recipe(ROOT / "adapters/fusion_tiny.yaml", [f"model.outputs_dir={partial}", *splits])
        with pytest.raises(KeyError, match="wavlm: 1 e.g. \\['Train_0000.wav'\\]"):
            prepare(recipe, branch_config(recipe), corpus, None)
        recipe = load_recipe(ROOT / "adapters/fusion_tiny.yaml", [f"model.outputs_dir={partial}", "data.on_error=skip",
                                                                   *splits])
        setup = prepare(recipe, branch_config(recipe), corpus, None)
    assert len(setup.train_set) == 95 and setup.model.config.stream_sizes == SIZES
    batch = collate_fusion([setup.train_set[i] for i in range(3)])
    assert batch["wavlm_sequence"].shape[0] == 3 and batch["wavlm_sequence_mask"].dtype == torch.bool
    assert setup.model(**batch).class_logits.shape == (3, 8)


def test_collect_run_outputs_from_a_trained_branch_folder(tmp_path):
    from llmser.config import save_config
    from llmser.data.examples import AudioExampleDataset, collate_waveforms
    from llmser.data.msp_podcast import MSPPodcast
    from llmser.inference.collect import collect_run_outputs
    from llmser.models.registry import load_recipe
    from llmser.models.wavlm import WavLMBranchConfig, WavLMEmotionModel

    corpus_dir = write_corpus(tmp_path / "c", _rows(2))
    recipe = load_recipe(ROOT / "adapters/wavlm_tiny.yaml", [f"data.corpus={corpus_dir}", "data.max_seconds=1.0"])
    torch.manual_seed(0)
    model = WavLMEmotionModel.from_config(WavLMBranchConfig(encoder="tiny", encoder_mode="finetune")).eval()
    model.save_pretrained(tmp_path / "run" / "best")
    save_config(recipe, tmp_path / "run" / "best" / "recipe.yaml")
    written = collect_run_outputs(tmp_path / "run", tmp_path / "outputs", ("train", "dev", "test"),
                                  sequence_fn=wavlm_sequence, progress=False)
    assert sorted(p.name for p in written.values()) == ["dev.safetensors", "test.safetensors", "train.safetensors"]
    corpus = MSPPodcast.from_folder(corpus_dir)
    dev = load_branch_outputs(tmp_path / "outputs", "wavlm", "Development")
    assert dev.file_names == [u.file_name for u in corpus.utterances("dev")] and dev.has_sequence
    utt = corpus.utterances("dev")[:1]
    direct = model(**collate_waveforms([AudioExampleDataset(utt, max_seconds=1.0)[0]]))
    torch.testing.assert_close(dev.tensors["embedding"][:1], direct.embedding, atol=1e-5, rtol=1e-5)


def test_fusion_refuses_to_learn_from_in_sample_outputs(fake_run, tmp_path):
    from llmser.config import ConfigError
    from llmser.data.msp_podcast import MSPPodcast
    from llmser.models.fusion.branch import prepare
    from llmser.models.registry import branch_config, load_recipe

    corpus_dir, outputs = fake_run
    marked = tmp_path / "marked"
    for branch in ("wavlm", "text_llm"):
        for split in ("Train", "Development", "Test1"):
            out = load_branch_outputs(outputs, branch, split)
            save_branch_outputs(marked, branch, split, out.file_names, out.tensors, trained_on="Train")
    corpus = MSPPodcast.from_folder(corpus_dir)

    def setup(*overrides):
        recipe = load_recipe(ROOT / "adapters/fusion_tiny.yaml", [f"model.outputs_dir={marked}", "model.residual=false",
                                                                   *overrides])
        return prepare(recipe, branch_config(recipe), corpus, None)

    with pytest.raises(ConfigError, match=r"text_llm, wavlm come from models trained on those files.*cross-fit"):
        setup("data.train_split=train", "data.eval_split=dev")
    dev = setup()  # the recipe's default: dev without its fold 0 to fit, fold 0 to stop early
    assert len(dev.train_set) + len(dev.eval_set) == len(corpus.utterances("dev"))
    assert not {u.file_name for u in dev.train_set.utterances} & {u.file_name for u in dev.eval_set.utterances}
    out = load_branch_outputs(marked, "wavlm", "Train")
    save_branch_outputs(marked, "wavlm", "Train", out.file_names, out.tensors, trained_on="Train", cross_fitted=5)
    with pytest.raises(ConfigError, match="text_llm come from"):  # wavlm's train outputs are out-of-fold now
        setup("data.train_split=train", "data.eval_split=dev")
    with pytest.raises(ConfigError, match=r"\(data.eval_split\).*data.train_split='dev\[\^0/5\]' with "
                                          r"data.eval_split='dev\[0/5\]'"):  # said data.eval_split twice
        setup("data.train_split=dev", "data.eval_split=train")


@pytest.mark.slow
def test_cross_fitted_train_outputs_come_from_the_fold_that_did_not_train_on_them(tmp_path):
    from llmser.data.examples import AudioExampleDataset, collate_waveforms
    from llmser.data.msp_podcast import MSPPodcast
    from llmser.training.crossfit import cross_fit_outputs
    from llmser.training.run import run

    corpus_dir = write_corpus(tmp_path / "c", _rows(4))
    overrides = [f"data.corpus={corpus_dir}", "data.max_seconds=1.0", "train.max_steps=2", "train.eval_every=2",
                 "train.save_every=2", "data.batch_size=4", "data.feature_cache=false"]
    run(ROOT / "adapters/wavlm_tiny.yaml", [*overrides, f"train.output_dir={tmp_path / 'run'}", "train.predict_test=false"])
    path = cross_fit_outputs(tmp_path / "run", tmp_path / "outputs", folds=2, overrides=[f"data.corpus={corpus_dir}"])
    out = load_branch_outputs(tmp_path / "outputs", "wavlm", "Train")
    corpus = MSPPodcast.from_folder(corpus_dir)
    assert path.name == "Train.safetensors" and out.cross_fitted == 2 and out.trained_on == "Train"
    assert sorted(out.file_names) == sorted(u.file_name for u in corpus.utterances("train"))
    assert not out.in_sample_for("Train")
    from llmser.models.wavlm import WavLMEmotionModel

    for fold in range(2):
        model = WavLMEmotionModel.from_pretrained(tmp_path / "run" / "crossfit" / f"fold{fold}" / "best").eval()
        held_out = corpus.utterances(f"train[{fold}/2]")
        trained = corpus.utterances(f"train[^{fold}/2]")
        assert held_out and not {u.file_name for u in held_out} & {u.file_name for u in trained}
        batch = collate_waveforms([AudioExampleDataset(held_out[:1], max_seconds=1.0)[0]])
        row = out.index()[held_out[0].file_name]
        torch.testing.assert_close(out.tensors["embedding"][row:row + 1], model(**batch).embedding, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_cross_fit_dev_predicts_every_dev_file_from_a_model_that_did_not_train_on_it(fake_run, tmp_path):
    """The out-of-fold dev predictions build-system --method auto scores fusion on: each fold predicted by a
    run trained on the others; a split with fewer speakers than folds skips the empty folds."""
    from llmser.data.msp_podcast import MSPPodcast
    from llmser.ensemble.selection import dev_folds
    from llmser.training.crossfit import cross_fit_dev
    from llmser.training.run import run

    corpus_dir, outputs = fake_run
    out = tmp_path / "fusion"
    run(ROOT / "adapters/fusion_tiny.yaml", _overrides(corpus_dir, outputs, out, **{
        "train.max_steps": 6, "train.eval_every": 3, "train.save_every": 6, "data.train_split": "dev[^0/5]",
        "data.eval_split": "dev[0/5]", "model.mode": "concat"}))
    dev = MSPPodcast.from_folder(corpus_dir).utterances("dev")
    folds = dev_folds(dev, 7)  # 5 speakers: two of the seven folds are empty
    present = sorted(set(folds.values()))
    assert len(present) == 5
    oof = cross_fit_dev(out, 7, split="Development", fold_ids=present)
    from llmser.training.crossfit import fitted_outside_note

    assert fitted_outside_note(out, "Development") is None  # trained on dev folds: the table's default wording
    assert sorted(oof.file_names) == sorted(u.file_name for u in dev)
    for k in present:
        saved = json.loads((out / "devcv" / f"fold{k}" / "metrics.json").read_text())
        assert saved["step"] == 6  # the run's best step count, no early stopping on the scored fold
        predicted = set(Predictions_read(out / "devcv" / f"fold{k}" / "test_predictions.csv").file_names)
        assert predicted == {n for n, f in folds.items() if f == k}


def Predictions_read(path):
    from llmser.evaluation.predictions import Predictions

    return Predictions.read_csv(path)


def test_residual_fusion_refuses_outputs_without_probabilities_before_training(fake_run, tmp_path):
    from llmser.config import ConfigError
    from llmser.data.msp_podcast import MSPPodcast
    from llmser.models.fusion.branch import prepare
    from llmser.models.registry import branch_config, load_recipe

    corpus_dir, outputs = fake_run
    recipe = load_recipe(ROOT / "adapters/fusion_tiny.yaml", [f"model.outputs_dir={outputs}", "data.train_split=train",
                                                               "data.eval_split=dev"])
    with pytest.raises(ConfigError, match="model.residual=false"):
        prepare(recipe, branch_config(recipe), MSPPodcast.from_folder(corpus_dir), None)



@pytest.mark.slow
def test_a_fusion_fitted_outside_dev_is_scored_on_all_of_dev_by_one_refit(fake_run, tmp_path):
    """A fusion adapter on cross-fitted train outputs never trained on dev: build-system scores it as it was
    made (one refit on train for its best step count, predicting dev), not by K refits on dev folds."""
    from llmser.data.msp_podcast import MSPPodcast
    from llmser.training.crossfit import cross_fit_dev
    from llmser.training.run import run

    corpus_dir, outputs = fake_run
    out = tmp_path / "fusion"
    with _registered():
        run(ROOT / "adapters/fusion_tiny.yaml", _overrides(corpus_dir, outputs, out, **{
            "train.max_steps": 6, "train.eval_every": 3, "train.save_every": 6, "model.mode": "concat"}))
        predictions = cross_fit_dev(out, 5, split="Development")
    dev = MSPPodcast.from_folder(corpus_dir).utterances("dev")
    assert sorted(predictions.file_names) == sorted(u.file_name for u in dev)
    assert not (out / "devcv" / "fold0").exists()
    saved = json.loads((out / "devcv" / "direct" / "metrics.json").read_text())
    best_step = json.loads((out / "metrics.json").read_text())["best_step"]
    assert saved["splits"]["data.train_split"]["split"] == "train" and "data.eval_split" not in saved["splits"]
    assert saved["step"] == best_step and saved["splits"]["data.test_split"]["split"] == "Development"
    from llmser.training.crossfit import fitted_outside_note  # what build-system's candidate table then says

    assert fitted_outside_note(out, "Development") == ("adapter trained on train (refitted once), predicted all "
                                                        "of Development")
