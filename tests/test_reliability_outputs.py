"""Outputs: checked before the work, locked while written, resumed only from the same run (docs/reliability.md)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from llmser.utils.outputs import (
    OutputError,
    OutputLock,
    check_output_dir,
    check_output_file,
    check_resume,
    fingerprint_path,
    lock_path,
    resumable_output,
    run_fingerprint,
)


def test_output_file_that_is_a_folder_or_under_a_file_is_refused(tmp_path):
    with pytest.raises(OutputError, match=r"--out .* is a folder; give a file name inside it"):
        check_output_file(tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match=r"cannot create .*f/sub: .*f is a file"):
        check_output_file(tmp_path / "f" / "sub" / "p.csv")
    with pytest.raises(OutputError, match=r"is a file, not a folder"):
        check_output_dir(tmp_path / "f")
    assert check_output_file(tmp_path / "new" / "p.csv") == tmp_path / "new" / "p.csv"
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_unwritable_location_is_refused(tmp_path, monkeypatch):
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OutputError, match=r"cannot write in .*Read-only file system"):
        check_output_file(tmp_path / "p.csv")


def test_too_little_space_is_refused_before_the_work(tmp_path, monkeypatch):
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1024))
    with pytest.raises(OutputError, match=r"has 1.0 KB free, and this run needs about"):
        check_output_file(tmp_path / "p.csv", expected_bytes=10_000)
    check_output_file(tmp_path / "p.csv")  # nothing to estimate: not refused


def test_a_second_writer_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "p.csv"
    with OutputLock(out):
        code = ("import sys; from llmser.utils.outputs import OutputLock, OutputError\n"
                "try:\n    OutputLock(sys.argv[1]).acquire()\nexcept OutputError as e:\n    print(e); sys.exit(2)")
        other = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
        assert other.returncode == 2
        assert f"is being written by process {os.getpid()} on {socket.gethostname()}" in other.stdout
    assert not lock_path(out).exists()  # released


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "p.csv"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_path(out).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with OutputLock(out):
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()
    lock_path(out).write_text(json.dumps({"pid": 1, "host": "another-machine"}))
    with pytest.raises(OutputError, match=r"process 1 on another-machine .*delete .*\.p\.csv\.lock"):
        OutputLock(out).acquire()


def test_resume_only_from_the_same_system_and_inputs(tmp_path):
    out = tmp_path / "p.csv"
    first = run_fingerprint(system="a" * 64, inputs=["x.wav"], options=[None])
    with resumable_output(out, first):
        out.write_text("FileName\nx.wav\n")
    check_resume(out, first)
    with pytest.raises(OutputError, match=r"written by another run \(its inputs differ from this run's\)"):
        check_resume(out, run_fingerprint(system="a" * 64, inputs=["y.wav"], options=[None]))
    with pytest.raises(OutputError, match=r"its system and inputs differ"):
        check_resume(out, run_fingerprint(system="b" * 64, inputs=["y.wav"], options=[None]))
    fingerprint_path(out).unlink()
    with pytest.raises(OutputError, match=r"did not record what it was made from"):
        check_resume(out, first)


# ---------------------------------------------------------------------- llmser predict, end to end


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    from llmser.config import save_config
    from llmser.inference.system import build_system
    from llmser.models.wavlm.config import WavLMBranchConfig
    from llmser.models.wavlm.model import WavLMEmotionModel
    from llmser.recipe import Recipe

    tmp = tmp_path_factory.mktemp("system")
    section = {"encoder": "tiny", "encoder_mode": "finetune", "head_hidden_size": 16, "dropout": 0.0}
    torch.manual_seed(0)
    best = WavLMEmotionModel.from_config(WavLMBranchConfig(**section)).save_pretrained(tmp / "run" / "best")
    save_config(Recipe(branch="wavlm", model=section), best / "recipe.yaml")
    clips = tmp / "clips"
    clips.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        sf.write(clips / f"c{i}.wav", (0.1 * rng.standard_normal(8000)).astype(np.float32), 16000)
    return build_system(tmp / "system", {"wavlm": tmp / "run"}), clips


def test_predict_refuses_a_locked_out_and_another_runs_csv(system, tmp_path, capsys):
    from llmser.cli import main

    folder, clips = system
    out = tmp_path / "p.csv"
    args = ["predict", "--model", str(folder), "--audio", str(clips), "--out", str(out)]
    with OutputLock(out):
        assert main(args) == 2
    assert "is being written by process" in capsys.readouterr().err and not out.exists()
    assert main(args) == 0
    capsys.readouterr()
    other = tmp_path / "other"
    other.mkdir()
    sf.write(other / "z.wav", (0.1 * np.random.default_rng(1).standard_normal(8000)).astype(np.float32), 16000)
    before = out.read_text()
    assert main(["predict", "--model", str(folder), "--audio", str(other), "--out", str(out)]) == 2
    assert "written by another run (its inputs differ" in capsys.readouterr().err
    assert out.read_text() == before  # nothing mixed in
    assert main(args) == 0  # the same run resumes
    assert "3 file(s) already predicted, 0 to go" in capsys.readouterr().out
