"""Every registered branch builds, saves, loads back and predicts through the registry alone."""

from __future__ import annotations

import pytest
import torch
from tiny_models import build, save_run, section, write_clips

from llmser.data.msp_podcast import Utterance
from llmser.models.branch import Branch, EmotionModel
from llmser.models.registry import BRANCHES, BranchSpec, get_branch, load_recipe, register_branch
from llmser.recipe import Recipe


def _utterances(paths):
    return [Utterance(file_name=p.name, audio_path=p, split="predict", emo_class=None, arousal=None, valence=None,
                      dominance=None, speaker="", gender="", transcript=f"this is clip number {i}")
            for i, p in enumerate(paths)]


def _predict(spec: BranchSpec, model, utterances) -> dict[str, torch.Tensor]:
    """What llmser predict does with a member: the branch's own dataset and collate, then a forward."""
    if spec.predicts_audio:
        dataset, collate = spec.predict_data_fn(model, Recipe(branch=spec.name, model=section(spec.name)), utterances)
        batch = collate([dataset[i] for i in range(len(utterances))])
    else:  # fusion reads the other branches' cached outputs
        torch.manual_seed(3)
        n = len(utterances)
        batch = {"wavlm_embedding": torch.randn(n, 128), "text_llm_embedding": torch.randn(n, 64),
                 "wavlm_sequence": torch.randn(n, 5, 64), "wavlm_sequence_mask": torch.ones(n, 5, dtype=torch.bool)}
    with torch.no_grad():
        out = model(**batch)
    return {"probs": torch.softmax(out.class_logits.float(), -1), "attributes": out.attributes.float()}


@pytest.mark.parametrize("name", sorted(BRANCHES))
def test_every_branch_saves_loads_and_predicts(name, tmp_path):
    spec = get_branch(name)
    assert isinstance(spec.branch, Branch)
    model = build(name)
    assert isinstance(model, EmotionModel)
    utterances = _utterances(write_clips(tmp_path / "clips"))
    before = _predict(spec, model, utterances)
    run = save_run(tmp_path, name, model, name)
    loaded = spec.model_cls.from_pretrained(run / "best").eval()
    after = _predict(spec, loaded, utterances)
    assert before["probs"].shape == (3, 8) and before["attributes"].shape == (3, 3)
    torch.testing.assert_close(after["probs"], before["probs"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(after["attributes"], before["attributes"], atol=1e-5, rtol=1e-4)
    recipe = load_recipe(run / "best" / "recipe.yaml")  # the saved recipe names a registered branch
    assert recipe.branch == name


def test_every_branch_module_follows_the_protocol():
    for spec in BRANCHES.values():
        assert callable(spec.branch.prepare)
        assert spec.predicts_audio == (spec.name != "fusion")
        assert spec.config_cls.__name__.endswith("BranchConfig") and spec.model_cls.__name__.endswith("EmotionModel")


def test_registration_is_checked_once():
    with pytest.raises(ValueError, match="already registered"):
        register_branch(BranchSpec("wavlm", "a.b:C", "a.b:D", "a.b"))
    with pytest.raises(ValueError, match="not 'module:Class'"):
        register_branch(BranchSpec("new_branch", "a.b.C", "a.b:D", "a.b"))
    assert "new_branch" not in BRANCHES
    with pytest.raises(KeyError, match="choose one of"):
        get_branch("whisper_llm")
