"""Crashes: SIGKILL a training run at a random step and resume it; kills mid-write keep the previous file.

The resume test trains the tiny WavLM recipe three times in subprocesses (uninterrupted; killed with
SIGKILL just after a random checkpoint; resumed with ``--resume``) and requires the resumed run to end
with the same weights, best model, predictions and metrics as the uninterrupted one, bit for bit.
The kill step is drawn at random; set LLMSER_KILL_SEED to replay a failure (the test prints the seed).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from llmser.training import checkpoint as ckpt
from llmser.utils import io as llmser_io
from llmser.utils.io import atomic_open, atomic_write_json, recover_dir, replace_dir
from tests.corpus_factory import write_corpus

ROOT = Path(__file__).resolve().parents[1]
STEPS = 8
CLASSES = ["A", "S", "H", "N", "X"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """40 one-second clips: a tone whose pitch follows the class, plus noise, so training has a signal."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        split = "Train" if i < 24 else "Development" if i < 32 else "Test1"
        code = CLASSES[i % len(CLASSES)]
        rows.append([f"MSP-PODCAST_{i:04d}_0001.wav", code, *np.round(rng.uniform(1, 7, 3), 2), i % 6,
                     "Female" if i % 2 else "Male", split])
    root = write_corpus(tmp_path_factory.mktemp("kill") / "corpus", rows, audio=False)
    t = np.arange(16000) / 16000
    for row in rows:
        wave = 0.3 * np.sin(2 * np.pi * (150 + 60 * CLASSES.index(row[1])) * t) + 0.02 * rng.standard_normal(16000)
        sf.write(root / "Audios" / row[0], wave.astype(np.float32), 16000)
    return root


def _command(corpus: Path, out: Path, resume: bool = False) -> list[str]:
    overrides = {"data.corpus": corpus, "train.output_dir": out, "train.max_steps": STEPS, "train.save_every": 1,
                 "train.eval_every": 2, "train.log_every": 1, "train.keep_checkpoints": 2, "data.batch_size": 4,
                 "data.eval_batch_size": 8, "data.max_seconds": 1.0, "optim.warmup_steps": 1,
                 "model.dropout": 0.1}  # dropout on: the resumed run must also restore the RNG streams
    cmd = [sys.executable, "-m", "llmser", "train", str(ROOT / "adapters" / "wavlm_tiny.yaml"),
           *(f"{k}={v}" for k, v in overrides.items())]
    return [*cmd, "--resume"] if resume else cmd


def _env() -> dict[str, str]:
    # one thread: the same float reduction order in every run (and polite on a shared 2-core machine)
    return dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _kill_after_checkpoint(cmd: list[str], out: Path, step: int) -> int:
    """Start ``cmd``; SIGKILL it as soon as ``checkpoint-<step>`` appears. Returns the return code."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(), cwd=ROOT)
    target = out / f"{ckpt.CHECKPOINT_PREFIX}{step}"
    deadline = time.monotonic() + 600
    try:
        while not target.is_dir() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr.read().decode()[-3000:])
    proc.stderr.close()
    return proc.returncode


def _comparable_metrics(out: Path) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    metrics.pop("train_seconds")
    metrics["test"].pop("report")  # a path inside out/
    return metrics


def _history(out: Path) -> list:
    return json.loads((out / "trainer_state.json").read_text())["history"]


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_matches_an_uninterrupted_run(corpus, tmp_path):
    seed = int(os.environ.get("LLMSER_KILL_SEED", random.SystemRandom().randrange(2**31)))
    kill_after = random.Random(seed).randint(1, STEPS - 3)
    print(f"LLMSER_KILL_SEED={seed}: SIGKILL after checkpoint-{kill_after}")

    reference = tmp_path / "reference"
    _run(_command(corpus, reference))

    crashed = tmp_path / "crashed"
    _kill_after_checkpoint(_command(corpus, crashed), crashed, kill_after)
    assert not (crashed / "metrics.json").exists()  # it really died mid-run
    survivor = ckpt.latest_checkpoint(crashed)
    assert survivor is not None and int(survivor.name.split("-")[1]) < STEPS
    _run(_command(corpus, crashed, resume=True))

    final = f"{ckpt.CHECKPOINT_PREFIX}{STEPS}"
    _assert_same_tensors(load_file(str(reference / final / "trainable.safetensors")),
                         load_file(str(crashed / final / "trainable.safetensors")))
    _assert_same_tensors(load_file(str(reference / final / "optimizer.safetensors")),
                         load_file(str(crashed / final / "optimizer.safetensors")))
    _assert_same_tensors(load_file(str(reference / "best" / "model.safetensors")),
                         load_file(str(crashed / "best" / "model.safetensors")))
    assert _comparable_metrics(crashed) == _comparable_metrics(reference)
    assert _history(crashed) == _history(reference)
    assert (crashed / "test_predictions.csv").read_bytes() == (reference / "test_predictions.csv").read_bytes()
    assert not list(crashed.glob("*.partial")) and not list(crashed.glob(".*.partial"))


# ---------------------------------------------------------------------------------------------- mid-write


def test_crash_in_the_final_rename_keeps_the_previous_file(tmp_path, monkeypatch):
    report = tmp_path / "report.json"
    atomic_write_json(report, {"macro_f1": 0.5})

    def crash(*args, **kwargs):
        raise OSError("simulated crash at the rename")

    monkeypatch.setattr(llmser_io.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        atomic_write_json(report, {"macro_f1": 0.9})
    assert json.loads(report.read_text()) == {"macro_f1": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # the temporary file is gone


def test_exception_mid_write_keeps_the_previous_file(tmp_path):
    predictions = tmp_path / "predictions.csv"
    predictions.write_text("FileName,EmoClass\na.wav,A\n")
    with pytest.raises(RuntimeError), atomic_open(predictions, "w") as handle:
        handle.write("FileName,EmoClass\n")
        raise RuntimeError("model crashed half-way through the predictions")
    assert predictions.read_text() == "FileName,EmoClass\na.wav,A\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv"]


def test_sigkill_mid_write_keeps_the_previous_file(tmp_path):
    """A process killed (no Python clean-up at all) while writing leaves the old file whole."""
    target = tmp_path / "checkpoint.bin"
    target.write_bytes(b"previous good content")
    script = textwrap.dedent(f"""
        import os, signal
        from llmser.utils.io import atomic_open
        with atomic_open({str(target)!r}, "wb") as handle:
            handle.write(b"x" * 5_000_000)
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=_env(), cwd=ROOT, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert target.read_bytes() == b"previous good content"
    # the half-written temporary is a hidden sibling, never read; rerunning the write replaces the target
    leftovers = [p.name for p in tmp_path.iterdir() if p != target]
    assert all(name.startswith(".checkpoint.bin.") and name.endswith(".tmp") for name in leftovers)


def _tiny_objects():
    from llmser.recipe import OptimConfig
    from llmser.training.optim import build_optimizer, build_scheduler

    model = torch.nn.Linear(4, 2)
    optimizer = build_optimizer(model, OptimConfig())
    return model, optimizer, build_scheduler(optimizer, OptimConfig(), 10)


def _save(directory: Path, step: int) -> Path:
    model, optimizer, scheduler = _tiny_objects()
    with torch.no_grad():
        model.weight.fill_(step)
    return ckpt.save_checkpoint(directory / f"checkpoint-{step}", model=model, optimizer=optimizer,
                                scheduler=scheduler, trainer_state={"step": step}, is_main=True, rank=0)


def test_crash_mid_checkpoint_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    _save(tmp_path, 1)
    real_save_file = ckpt.save_safetensors
    calls = []

    def crash_on_second_file(tensors, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full (simulated) while writing the optimizer state")
        return real_save_file(tensors, path, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_safetensors", crash_on_second_file)
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path, 2)
    monkeypatch.setattr(ckpt, "save_safetensors", real_save_file)
    assert ckpt.latest_checkpoint(tmp_path).name == "checkpoint-1"  # the half-written step 2 is invisible
    assert not (tmp_path / "checkpoint-2.partial").exists()  # a failed save removes its half-written folder
    model, optimizer, scheduler = _tiny_objects()
    state = ckpt.load_checkpoint(tmp_path / "checkpoint-1", model=model, optimizer=optimizer, scheduler=scheduler,
                                 rank=0)
    assert state == {"step": 1} and float(model.weight.detach()[0, 0]) == 1.0
    (tmp_path / "checkpoint-2.partial").mkdir()  # what a kill mid-save (no exception handler runs) leaves
    _save(tmp_path, 2)  # the next save clears the partial folder
    assert ckpt.latest_checkpoint(tmp_path).name == "checkpoint-2"
    assert not (tmp_path / "checkpoint-2.partial").exists()


def _folders(tmp_path: Path) -> tuple[Path, Path]:
    target, new = tmp_path / "best", tmp_path / ".best.partial"
    for folder, text in ((target, "old"), (new, "new")):
        folder.mkdir()
        (folder / "model.safetensors").write_text(text)
    return target, new


def test_kill_between_the_folder_renames_is_recovered(tmp_path, monkeypatch):
    """replace_dir moves the old folder aside before the new one moves in; recover_dir undoes a kill there."""
    target, new = _folders(tmp_path)
    real_rename = Path.rename

    def rename(self, dest):
        if self == new:
            raise KeyboardInterrupt("killed (simulated) after the old folder moved aside")
        return real_rename(self, dest)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        replace_dir(new, target)
    monkeypatch.setattr(Path, "rename", real_rename)
    assert not target.exists()  # this is the moment a delete-then-rename would have lost everything
    assert recover_dir(target) == target and (target / "model.safetensors").read_text() == "old"
    replace_dir(new, target)
    assert (target / "model.safetensors").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["best"]


def test_kill_before_the_old_folder_is_deleted_leaves_the_new_one(tmp_path, monkeypatch):
    target, new = _folders(tmp_path)

    def rmtree(path, *args, **kwargs):
        raise KeyboardInterrupt("killed (simulated) before the backup was deleted")

    monkeypatch.setattr(llmser_io.shutil, "rmtree", rmtree)
    with pytest.raises(KeyboardInterrupt):
        replace_dir(new, target)
    monkeypatch.undo()
    assert recover_dir(target) == target and (target / "model.safetensors").read_text() == "new"
    newest = tmp_path / ".best.partial"
    newest.mkdir()
    (newest / "model.safetensors").write_text("newest")
    replace_dir(newest, target)  # the stale backup is cleared on the way
    assert (target / "model.safetensors").read_text() == "newest"
    assert [p.name for p in tmp_path.iterdir()] == ["best"]
