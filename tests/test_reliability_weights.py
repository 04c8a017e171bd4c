"""Weights that are missing or wrong are never replaced by random ones; NaN/Inf never written or loaded;
copies and uploads never follow a symlink out of their folder (docs/reliability.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmser.utils.weights import (
    UnsafeFolderError,
    WeightsError,
    check_no_outside_links,
    check_state,
    load_safetensors,
    load_state_checked,
    save_safetensors,
)

WAVLM = {"encoder": "tiny", "encoder_mode": "finetune", "head_hidden_size": 16, "dropout": 0.0}


def _wavlm(tmp_path: Path) -> Path:
    from llmser.models.wavlm.config import WavLMBranchConfig
    from llmser.models.wavlm.model import WavLMEmotionModel

    torch.manual_seed(0)
    model = WavLMEmotionModel.from_config(WavLMBranchConfig(**WAVLM))
    return model.save_pretrained(tmp_path / "wavlm")


def test_check_state_names_the_file_missing_unexpected_and_both_shapes():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    state = {"0.weight": torch.zeros(4, 5), "0.bias": torch.zeros(4), "2.weight": torch.zeros(1)}
    with pytest.raises(WeightsError) as err:
        check_state(model.state_dict(), state, "heads.safetensors")
    message = str(err.value)
    assert message.startswith("heads.safetensors does not fit this model")
    assert "missing 2 tensor(s) the model declares: 1.weight, 1.bias" in message
    assert "1 tensor(s) the model does not have: 2.weight" in message
    assert "0.weight is (4, 5) in the file but (4, 3) in the model" in message


def test_nan_weights_are_refused_before_writing_and_on_load(tmp_path):
    path = tmp_path / "w.safetensors"
    save_safetensors({"a": torch.ones(2)}, path)
    before = path.read_bytes()
    with pytest.raises(WeightsError, match=r"refusing to write .*w.safetensors: tensor\(s\) b hold NaN"):
        save_safetensors({"a": torch.ones(2), "b": torch.tensor([1.0, float("nan")])}, path)
    assert path.read_bytes() == before  # the previous good file is untouched
    save_file({"a": torch.tensor([float("inf")])}, str(path))
    with pytest.raises(WeightsError, match=r"w.safetensors: tensor\(s\) a hold NaN or infinite values"):
        load_safetensors(path)


def test_load_state_checked_loads_a_complete_file(tmp_path):
    model = torch.nn.Linear(3, 2)
    save_safetensors({k: torch.full_like(v, 0.5) for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    load_state_checked(model, tmp_path / "w.safetensors")
    assert torch.all(model.weight == 0.5)


def test_wavlm_without_its_trained_encoder_folder_fails(tmp_path):
    import shutil

    from llmser.models.wavlm.model import WavLMEmotionModel

    folder = _wavlm(tmp_path)
    shutil.rmtree(folder / "encoder")
    with pytest.raises(WeightsError, match=r"encoder is missing: this model's encoder was trained .*will not replace"):
        WavLMEmotionModel.from_pretrained(folder)


def test_wavlm_encoder_file_missing_a_tensor_fails_naming_it(tmp_path):
    from llmser.models.wavlm.model import WavLMEmotionModel

    folder = _wavlm(tmp_path)
    weights = folder / "encoder" / "model.safetensors"
    state = load_file(str(weights))
    dropped = sorted(state)[3]
    del state[dropped]
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(WeightsError, match=rf"does not hold a complete encoder \(missing keys: .*{dropped}"):
        WavLMEmotionModel.from_pretrained(folder)


def test_wavlm_heads_of_another_shape_name_file_tensor_and_shapes(tmp_path):
    from llmser.models.wavlm.model import WavLMEmotionModel

    folder = _wavlm(tmp_path)
    heads = folder / "model.safetensors"
    state = load_file(str(heads))
    name = next(k for k, v in state.items() if v.ndim == 2)
    shape = tuple(state[name].shape)
    state[name] = torch.zeros(shape[0] + 1, shape[1])
    save_file(state, str(heads))
    with pytest.raises(WeightsError) as err:
        WavLMEmotionModel.from_pretrained(folder)
    assert str(heads) in str(err.value)
    assert f"{name} is {(shape[0] + 1, shape[1])} in the file but {shape} in the model" in str(err.value)


def test_wavlm_round_trip_still_loads_every_tensor(tmp_path):
    from llmser.models.wavlm.model import WavLMEmotionModel

    folder = _wavlm(tmp_path)
    model = WavLMEmotionModel.from_pretrained(folder)
    again = WavLMEmotionModel.from_pretrained(model.save_pretrained(tmp_path / "again"))
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_lora_adapter_missing_a_tensor_fails(tmp_path):
    from peft import LoraConfig, get_peft_model

    from llmser.models.llm.adapter import ADAPTER_WEIGHTS, adapter_state

    base = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["0", "2"]))
    peft_model.save_pretrained(str(tmp_path), safe_serialization=True)
    assert set(adapter_state(peft_model, tmp_path))  # complete: accepted
    path = tmp_path / ADAPTER_WEIGHTS
    state = load_file(str(path))
    dropped = sorted(k for k in state if "lora_B" in k)[0]
    del state[dropped]
    save_file(state, str(path))
    with pytest.raises(WeightsError, match=rf"missing 1 tensor\(s\) the model declares: {dropped}"):
        adapter_state(peft_model, tmp_path)


def test_links_out_of_a_folder_are_refused(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "best" / "ok.txt").write_text("x")
    os.symlink(run / "best" / "ok.txt", run / "best" / "inside.txt")
    check_no_outside_links(run)  # a link inside the folder is fine
    os.symlink(secret, run / "best" / "notes.txt")
    os.symlink(tmp_path / "nowhere", run / "best" / "dangling")
    with pytest.raises(UnsafeFolderError, match=r"best/dangling -> .*nowhere, best/notes.txt -> .*secret.txt"):
        check_no_outside_links(run)


def test_build_system_and_push_refuse_a_link_out_of_the_run(tmp_path, monkeypatch):
    from llmser.config import save_config
    from llmser.hub.io import push
    from llmser.inference.system import build_system
    from llmser.recipe import Recipe

    run = tmp_path / "run"
    folder = _wavlm(tmp_path)
    folder.rename(tmp_path / "best")
    run.mkdir()
    (tmp_path / "best").rename(run / "best")
    save_config(Recipe(branch="wavlm", model=WAVLM), run / "best" / "recipe.yaml")
    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE KEY")
    os.symlink(secret, run / "best" / "notes.txt")
    with pytest.raises(UnsafeFolderError, match="notes.txt"):
        build_system(tmp_path / "system", {"wavlm": run})
    assert not (tmp_path / "system").exists()

    import huggingface_hub

    def no_upload(*args, **kwargs):
        raise AssertionError("uploaded")

    monkeypatch.setattr(huggingface_hub, "HfApi", no_upload)
    with pytest.raises(UnsafeFolderError, match="notes.txt"):
        push(run / "best", "org/name")
