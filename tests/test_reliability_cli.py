"""Every command of ``llmser``, given a bad value of each kind, exits with status 2 and one message, never a
traceback (docs/reliability.md). New commands must add their cases here: a test checks the table is complete."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmser.cli import COMMANDS, OUTPUTS, main

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "adapters" / "wavlm_tiny.yaml")


def _cases(tmp: Path) -> dict[str, list[list[str]]]:
    """command -> argument lists, each with one mistake: an out-of-range number, a missing input, an output
    that is a folder/file of the wrong kind, an unknown preset, a bad recipe value."""
    missing = str(tmp / "missing")
    a_dir = str(tmp / "a_dir")
    a_file = str(tmp / "a_file.txt")
    wav = str(tmp / "clip.wav")
    return {
        "make-demo-corpus": [[str(tmp / "c"), "--n", "0"], [str(tmp / "c"), "--seed", "-1"], [a_file],
                             [str(tmp / "c"), "--workers", "many"]],
        "transcribe": [["--audio", missing, "--out", str(tmp / "t")], ["--audio", wav, "--out", str(tmp / "t"),
                       "--model", "smoll"], ["--audio", wav, "--out", a_file], ["--audio", wav, "--batch-size", "0"]],
        "train": [[RECIPE, "data.batch_size=0"], [RECIPE, "optim.encoder_lr=-0.5"], [RECIPE, "model.lora_r=0"],
                  [RECIPE, "train.eval_every=0"], [missing + ".yaml"], [RECIPE, f"train.output_dir={a_file}"],
                  [RECIPE, "model.encoder=tinyy"], [RECIPE, "optim.lr=1e-3", "optim.lr=2e-3"]],
        "plan": [["--batch-size", "0"], ["wavlm-larg"], ["--audio-seconds", "-1"], ["--json", a_dir]],
        "predict-prior": [["--corpus", missing, "--out", str(tmp / "p.csv")], ["--corpus", missing, "--out", a_dir]],
        "baseline": [["classical", "--corpus", missing, "--out", str(tmp / "b")],
                     ["classical", "--corpus", missing, "--out", str(tmp / "b"), "--max-seconds", "0"],
                     ["classical", "--corpus", missing, "--out", a_file]],
        "predict-prompts": [["--corpus", missing, "--out", str(tmp / "p.csv"), "--llm", "smoll"],
                            ["--corpus", missing, "--out", str(tmp / "p.csv"), "--batch-size", "0"],
                            ["--corpus", missing, "--out", str(tmp / "p.csv"), "--limit", "-3"],
                            ["--corpus", missing, "--out", a_dir]],
        "collect-outputs": [[missing, "--out", str(tmp / "o")], [missing, "--out", str(tmp / "o"), "--frame-stride", "0"],
                            [missing, "--out", a_file]],
        "ensemble": [[missing + ".yaml", "--corpus", missing, "--out", str(tmp / "e")],
                     [str(ROOT / "ensembles" / "demo.yaml"), "methods=[nosuch]", "--corpus", missing, "--out", str(tmp / "e")],
                     [str(ROOT / "ensembles" / "demo.yaml"), "--corpus", missing, "--out", a_file]],
        "build-system": [["--member", "wavlm", "--out", str(tmp / "s")], ["--member", f"wavlm={missing}", "--out", str(tmp / "s")],
                         ["--member", f"wavlm={missing}", "--frame-stride", "0", "--out", str(tmp / "s")],
                         ["--member", f"wavlm={missing}", "--out", a_file]],
        "predict": [["--model", missing, "--audio", wav, "--out", str(tmp / "p.csv")],
                    ["--model", missing, "--audio", wav, "--out", a_dir],
                    ["--model", missing, "--audio", wav, "--out", str(tmp / "p.csv"), "--batch-size", "0"],
                    ["--model", missing, "--audio", wav, "--out", str(tmp / "p.csv"), "--asr", "smoll"],
                    ["--model", missing, "--audio", missing, "--out", str(tmp / "p.csv")]],
        "evaluate": [["--predictions", missing, "--corpus", missing], ["--predictions", missing, "--corpus", missing,
                     "--out", a_file]],
        "compare": [[f"a={missing}"], ["no-equals-sign"], [f"a={missing}", "--out", a_dir]],
        "validate-submission": [[missing], [a_file], [a_dir]],
        "push": [[missing, "org/name"], [a_dir, "not a repo id"]],
        "pull": [["not a repo id"], ["org/name", "--local-dir", a_file]],
        "import-salmonn": [[missing + ".pth", "--out", str(tmp / "s")], [a_file, "--out", str(tmp / "s")],
                           [a_file, "--out", a_file], [a_file, "--out", str(tmp / "s"), "--dtype", "half"]],
    }


@pytest.fixture(autouse=True)
def _log_to_real_stderr(monkeypatch):
    """llmser's log handler keeps the stderr it was made with: here not an earlier test's closed capture."""
    import logging
    import sys

    for handler in logging.getLogger("llmser").handlers:
        if type(handler) is logging.StreamHandler:
            monkeypatch.setattr(handler, "stream", sys.__stderr__)


@pytest.fixture()
def cases(tmp_path):
    import numpy as np
    import soundfile as sf

    (tmp_path / "a_dir").mkdir()
    (tmp_path / "a_file.txt").write_text("not a folder\n")
    sf.write(tmp_path / "clip.wav", (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32), 16000)
    return _cases(tmp_path)


def test_the_table_covers_every_command(cases):
    assert set(cases) == set(COMMANDS)
    assert set(OUTPUTS) <= set(COMMANDS)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_bad_values_exit_2_without_a_traceback(command, cases, capsys, monkeypatch):
    import huggingface_hub

    def no_hub(*args, **kwargs):  # a user error must never wait on the network
        raise AssertionError("the Hub was asked")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for argv in cases[command]:
        try:
            status = main([command, *argv])
        except SystemExit as exc:  # argparse: a bad type or a missing argument
            status = exc.code
        captured = capsys.readouterr()
        assert status == 2, f"llmser {command} {' '.join(argv)} -> {status}\n{captured.out}{captured.err}"
        assert "Traceback" not in captured.err + captured.out
        assert "error" in captured.err, (argv, captured.err)


def test_push_offline_or_unreachable_exits_2_without_a_traceback(tmp_path, capsys, monkeypatch):
    """With the Hub off (HF_HUB_OFFLINE) or out of reach, push says so and what to do (it ended in a traceback)."""
    from huggingface_hub import HfApi

    folder = tmp_path / "system"
    folder.mkdir()
    (folder / "README.md").write_text("card\n")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["push", str(folder), "org/name"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "HF_HUB_OFFLINE is set" in err

    class ConnectError(Exception):  # the HTTP client's own error, no ConnectionError base
        pass

    def unreachable(self, repo_id, **kwargs):
        raise ConnectError("[Errno -2] Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(HfApi, "create_repo", unreachable)
    assert main(["push", str(folder), "org/name"]) == 2
    err = capsys.readouterr().err
    assert "cannot be reached" in err and "check the network" in err


def test_train_missing_transcripts_hint_names_an_option_train_accepts(tmp_path, capsys):
    """The hint said `--missing-transcripts asr`, a flag `llmser train` rejects; it names the recipe field."""
    from corpus_factory import good_rows, write_corpus

    corpus = write_corpus(tmp_path / "corpus", good_rows())
    status = main(["train", str(ROOT / "adapters" / "text_tiny.yaml"), f"data.corpus={corpus}",
                   f"train.output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    assert "data.missing_transcripts=asr" in err and "--missing-transcripts" not in err


# ---------------------------------------------------------------------------------- issue 27: silently wrong inputs


def _corpus(tmp_path, splits):
    from corpus_factory import write_corpus

    rows = [[f"MSP-PODCAST_{i + 1:04d}_0001.wav", "AHSN"[i % 4], 4.0, 4.0, 4.0, i + 1, "Female", split]
            for i, split in enumerate(splits)]
    return write_corpus(tmp_path / "corpus", rows)


def test_a_split_name_that_is_not_the_releases_is_refused_with_its_rows_and_the_closest_name(tmp_path, capsys):
    """A typo such as `Trian` dropped its rows from training and from the prior with no word."""
    corpus = _corpus(tmp_path, ["Train", "Trian", "Trian", "Development", "Test1"])
    out = tmp_path / "p.csv"
    assert main(["predict-prior", "--corpus", str(corpus), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Split_Set 'Trian'" in err and "2 row(s) (first on row 3)" in err
    assert "did you mean 'Train'?" in err and "extra_splits.txt" in err and not out.exists()
    (corpus / "Labels" / "extra_splits.txt").write_text("Trian\n")  # declared: the user's own split
    assert main(["predict-prior", "--corpus", str(corpus), "--out", str(out), "--split", "trian"]) == 0


def test_split_names_and_aliases_match_in_any_letter_case(tmp_path, capsys):
    from llmser.data.msp_podcast import MSPPodcast

    corpus = _corpus(tmp_path, ["TRAIN", "train", "development", "DEV", "test1"])
    reader = MSPPodcast.from_folder(corpus)
    assert reader.splits() == ["Train", "Development", "Test1"]
    assert reader.resolve_split("Dev") == "Development" and len(reader.utterances("dev")) == 2
    assert main(["predict-prior", "--corpus", str(corpus), "--split", "DEV", "--out", str(tmp_path / "p.csv")]) == 0


def test_a_folder_where_a_file_is_expected_is_called_a_folder(tmp_path, capsys):
    folder = tmp_path / "a_dir.yaml"
    folder.mkdir()
    corpus = _corpus(tmp_path, ["Train", "Development", "Test1"])
    for argv in (["train", str(folder)], ["ensemble", str(folder), "--corpus", str(corpus), "--out", str(tmp_path / "e")],
                 ["evaluate", "--predictions", str(folder), "--corpus", str(corpus), "--out", str(tmp_path / "v")],
                 ["predict-prior", "--corpus", str(corpus / "Labels" / "labels_consensus.csv"),
                  "--out", str(tmp_path / "p.csv")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert ("is a folder, not a file" in err or "is a file, not a folder" in err) and "Traceback" not in err, err
    wav = corpus / "Audios" / "MSP-PODCAST_0001_0001.wav"
    wav.unlink()
    wav.mkdir()
    assert main(["predict-prior", "--corpus", str(corpus), "--out", str(tmp_path / "p.csv")]) == 2
    assert "is a folder, not an audio file" in capsys.readouterr().err


def test_an_unreadable_audio_file_is_a_permission_problem_not_a_bad_format(tmp_path, monkeypatch):
    import os

    from llmser.data.audio import AudioError, load_audio
    from llmser.data.msp_podcast import CorpusError, MSPPodcast

    corpus = _corpus(tmp_path, ["Train", "Development", "Test1"])
    wav = corpus / "Audios" / "MSP-PODCAST_0001_0001.wav"
    wav.chmod(0)
    if os.access(wav, os.R_OK):  # root reads anything: stand in for a user without the permission
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(wav) else real(p, mode, **kw))
    with pytest.raises(AudioError, match="no permission to read the file"):
        load_audio(wav)
    with pytest.raises(CorpusError, match="no permission to read"):
        MSPPodcast.from_folder(corpus)


def _wavlm_system(tmp: Path, max_seconds: float = 6.0) -> Path:
    import torch

    from llmser.config import save_config
    from llmser.inference.system import build_system
    from llmser.models.wavlm.config import WavLMBranchConfig
    from llmser.models.wavlm.model import WavLMEmotionModel
    from llmser.recipe import Recipe

    torch.manual_seed(0)
    section = {"encoder": "tiny", "encoder_mode": "finetune", "head_hidden_size": 16}
    WavLMEmotionModel.from_config(WavLMBranchConfig(**section)).save_pretrained(tmp / "wavlm" / "best")
    save_config(Recipe(branch="wavlm", model=section, data={"max_seconds": max_seconds}),
                tmp / "wavlm" / "best" / "recipe.yaml")
    return build_system(tmp / "system", {"wavlm": tmp / "wavlm"}, method="average")


def test_a_long_file_whose_speech_is_only_at_its_end_is_predicted_from_its_speech(tmp_path):
    """Its first window was silent, so the whole file was skipped as "silent"; silent windows are now left out
    of the average, and a file is silent only if every window is."""
    import numpy as np
    import soundfile as sf

    from llmser.inference.predictor import Predictor

    system = _wavlm_system(tmp_path)
    t = np.arange(16000 * 6) / 16000
    speech = (0.2 * np.sin(2 * np.pi * 180 * t) + 0.02 * np.random.default_rng(0).standard_normal(len(t)))
    sf.write(tmp_path / "late.wav", np.concatenate([np.zeros(16000 * 12), speech]).astype(np.float32), 16000)
    sf.write(tmp_path / "speech.wav", speech.astype(np.float32), 16000)
    sf.write(tmp_path / "quiet.wav", np.zeros(16000 * 14, dtype=np.float32), 16000)
    predictor = Predictor.from_pretrained(system)
    result = predictor([tmp_path / "late.wav", tmp_path / "quiet.wav"], progress=False)
    assert list(result.skipped) == ["quiet.wav"] and "every window" in result.skipped["quiet.wav"]
    alone = predictor([tmp_path / "speech.wav"], progress=False).predictions
    np.testing.assert_allclose(result.predictions.probs[0], alone.probs[0], rtol=1e-4, atol=1e-6)


def test_a_weights_folder_holding_only_a_pickle_is_refused_naming_the_file_and_the_conversion(tmp_path, capsys):
    """build-system copied the folder without its pickle and then reported model.safetensors missing; loading
    named the pickle but not how to convert it."""
    import numpy as np
    import soundfile as sf

    from llmser.models.wavlm.model import WavLMEmotionModel
    from llmser.utils.weights import WeightsError

    system = _wavlm_system(tmp_path)
    convert = "safetensors.torch.save_file(torch.load(f, weights_only=True), 'model.safetensors')"
    for folder in (tmp_path / "wavlm" / "best", system / "wavlm"):
        (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="pytorch_model.bin") as caught:
        WavLMEmotionModel.from_pretrained(tmp_path / "wavlm" / "best")
    assert convert in str(caught.value)
    sf.write(tmp_path / "a.wav", (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32), 16000)
    for argv, out in ((["build-system", "--member", f"wavlm={tmp_path / 'wavlm'}"], tmp_path / "s2"),
                      (["predict", "--model", str(system), "--audio", str(tmp_path / "a.wav")], tmp_path / "p.csv")):
        assert main([*argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and "pytorch_model.bin" in err and convert in err, err
        assert not out.exists() and not list(tmp_path.glob(".s2*"))


def test_a_member_folder_of_another_branch_is_refused_naming_both_branches(tmp_path, capsys):
    """A WavLM folder loaded as a text or audio LLM was only "missing llmser_config.json"; build-system took a
    WavLM run as the fusion adapter and wrote a system that could not load."""
    import json
    import shutil

    from llmser.models.audio_llm.model import AudioLLMEmotionModel
    from llmser.models.text_llm.model import TextLLMEmotionModel
    from llmser.models.wavlm.model import WavLMEmotionModel

    system = _wavlm_system(tmp_path)
    best = tmp_path / "wavlm" / "best"
    for cls, branch in ((TextLLMEmotionModel, "text_llm"), (AudioLLMEmotionModel, "audio_llm")):
        with pytest.raises(ValueError, match=f"holds a 'wavlm'-branch model, not .*'{branch}'-branch model"):
            cls.from_pretrained(best)
    text_like = tmp_path / "text_like"
    shutil.copytree(best, text_like)
    (text_like / "config.json").unlink()
    (text_like / "llmser_config.json").write_text(json.dumps({"branch": "text_llm", "llm": "tiny"}))
    with pytest.raises(ValueError, match="holds a 'text_llm'-branch model, not .*'wavlm'-branch model"):
        WavLMEmotionModel.from_pretrained(text_like)

    out = tmp_path / "s2"
    assert main(["build-system", "--member", f"wavlm={tmp_path / 'wavlm'}", "--fusion", str(tmp_path / "wavlm"),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'wavlm'" in err and "'fusion'" in err and "Traceback" not in err, err
    assert not out.exists() and not list(tmp_path.glob(".s2*"))
    import numpy as np
    import soundfile as sf

    sf.write(tmp_path / "a.wav", (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32), 16000)
    (system / "wavlm" / "llmser_config.json").write_text(json.dumps({"branch": "audio_llm"}))  # (was a traceback)
    assert main(["predict", "--model", str(system), "--audio", str(tmp_path / "a.wav"), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert "'audio_llm'-branch" in err and "'wavlm'-branch" in err and "Traceback" not in err, err
    assert not (tmp_path / "p.csv").exists()


def test_a_full_disk_during_training_says_so_and_leaves_no_partial_checkpoint(tmp_path, capsys, monkeypatch):
    """ENOSPC while a checkpoint was written ended in a traceback with checkpoint-4.partial left behind."""
    import errno

    from corpus_factory import good_rows, write_corpus

    import llmser.utils.weights as weights
    from llmser.utils.io import atomic_open

    real = weights.atomic_write_bytes

    def fills_up(path, data):
        if "checkpoint-4" not in str(path):
            return real(path, data)
        with atomic_open(path, "wb") as handle:  # a real write: half the bytes, then the disk is full
            handle.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(weights, "atomic_write_bytes", fills_up)
    corpus = write_corpus(tmp_path / "corpus", good_rows())
    out = tmp_path / "run"
    status = main(["train", RECIPE, f"data.corpus={corpus}", f"train.output_dir={out}", "train.max_steps=4",
                   "train.eval_every=2", "train.save_every=2", "data.batch_size=2", "data.max_seconds=1.0",
                   "optim.warmup_steps=0"])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err, err
    assert f"disk full: free space in {out} and rerun with --resume" in err
    left = sorted(p.name for p in out.iterdir())
    assert "checkpoint-2" in left and not [n for n in left if "checkpoint-4" in n or "partial" in n], left
    assert not list(out.rglob("*.tmp"))


def test_a_run_trained_with_allow_test_fit_says_so_on_the_system_card(tmp_path, capsys):
    """metrics.json recorded the opt-in (data.allow_test_fit) but the system's model card did not."""
    import json

    from corpus_factory import good_rows, write_corpus

    corpus = write_corpus(tmp_path / "corpus", good_rows())
    runs = {}
    for name, extra in (("fair", []), ("refit", ["data.eval_split=test", "data.allow_test_fit=true"])):
        runs[name] = tmp_path / name
        assert main(["train", RECIPE, f"data.corpus={corpus}", f"train.output_dir={runs[name]}", "train.max_steps=2",
                     "train.eval_every=2", "train.save_every=2", "data.batch_size=2", "data.max_seconds=1.0",
                     "optim.warmup_steps=0", "train.predict_test=false", *extra]) == 0
    recorded = json.loads((runs["refit"] / "metrics.json").read_text())["test_fit"]
    assert recorded and not json.loads((runs["fair"] / "metrics.json").read_text()).get("test_fit")
    capsys.readouterr()
    for members, out in ((["fair"], tmp_path / "s_fair"), (["fair", "refit"], tmp_path / "s_refit")):
        argv = [a for m in members for a in ("--member", f"{m}={runs[m]}")]
        assert main(["build-system", *argv, "--out", str(out)]) == 0
    card = (tmp_path / "s_refit" / "README.md").read_text()
    assert "Test data was used for training" in card and f"| refit | {recorded[0]} |" in card, card
    assert "not a held-out result" in card
    assert "Test data was used" not in (tmp_path / "s_fair" / "README.md").read_text()


def test_a_full_disk_in_any_command_is_one_message_not_a_traceback(tmp_path, capsys, monkeypatch):
    import errno
    import os

    corpus = _corpus(tmp_path, ["Train", "Development", "Test1"])
    out = tmp_path / "p.csv"

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    assert main(["predict-prior", "--corpus", str(corpus), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"disk full while writing in {tmp_path}: free space there and rerun" in err, err
    assert not out.exists() and not list(tmp_path.glob(".p.csv*.tmp"))


def test_a_batch_larger_than_the_training_set_is_a_recipe_error_not_a_traceback(tmp_path, capsys):
    from llmser.cli import main
    from tests.corpus_factory import transcribed_corpus

    corpus = transcribed_corpus(tmp_path / "corpus")  # 10 train files
    status = main(["train", str(Path(__file__).resolve().parents[1] / "adapters" / "wavlm_tiny.yaml"),
                   f"data.corpus={corpus}", "data.batch_size=64", f"train.output_dir={tmp_path / 'run'}",
                   "data.test_split="])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    assert "data.batch_size 64" in err and "at most 10" in err
