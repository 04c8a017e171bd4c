"""The life cycle both LoRA-LLM branches share (``LoRAMember``) and the capabilities the predictor checks for."""

from __future__ import annotations

import pytest
import tiny_models  # noqa: E402 - the tests folder is on sys.path under pytest
import torch

from llmser.models.branch import ReloadsWeights, VotesOverPrompts
from llmser.models.llm.member import LoRAMember
from llmser.models.llm.votes import votes

LLM_BRANCHES = ["text_llm", "audio_llm"]


@pytest.mark.parametrize("branch", LLM_BRANCHES)
def test_both_llm_branches_are_members_that_vote_and_reload(branch):
    model = tiny_models.build(branch)
    assert isinstance(model, LoRAMember) and isinstance(model, VotesOverPrompts) and isinstance(model, ReloadsWeights)
    assert model.voting_variants == model.variant_names and len(model.variant_names) == 5


def test_a_speech_branch_neither_votes_nor_reloads_in_place():
    model = tiny_models.build("wavlm")
    assert not isinstance(model, VotesOverPrompts) and not isinstance(model, ReloadsWeights)

    class VotingDataset:
        def with_voting(self, variants):
            return self

    assert not votes(model, VotingDataset())
    assert votes(tiny_models.build("text_llm"), VotingDataset())


@pytest.mark.parametrize("branch", LLM_BRANCHES)
def test_reloading_trained_weights_restores_adapter_and_modules_and_drops_cached_instructions(branch, tmp_path):
    trained = tiny_models.build(branch, seed=0)
    saved = trained.save_pretrained(tmp_path / branch)
    other = tiny_models.build(branch, seed=1)
    other.prefix_cache.states(other.llm, [[1, 2, 3]])  # instruction states of the old weights
    assert len(other.prefix_cache) == 1
    other.load_trained_weights(saved)
    assert len(other.prefix_cache) == 0
    want = {k: v for k, v in trained.state_dict().items() if not k.startswith("encoders.")}
    got = other.state_dict()
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, msg=f"{branch}: {key} not reloaded")


@pytest.mark.parametrize("branch", LLM_BRANCHES)
def test_a_folder_without_the_branch_modules_is_refused_naming_the_file(branch, tmp_path):
    model = tiny_models.build(branch)
    saved = model.save_pretrained(tmp_path / branch)
    (saved / model.modules_file).unlink()
    with pytest.raises(FileNotFoundError, match=model.modules_file):
        type(model).from_pretrained(saved)


@pytest.mark.parametrize("branch", LLM_BRANCHES)
def test_training_mode_drops_cached_instruction_states(branch):
    model = tiny_models.build(branch)
    model.prefix_cache.states(model.llm, [[1, 2, 3]])
    model.eval()
    assert len(model.prefix_cache) == 1  # evaluation keeps them
    model.train()
    assert len(model.prefix_cache) == 0
