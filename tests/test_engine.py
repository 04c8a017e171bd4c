"""The training engine end to end on a small demo corpus: train, evaluate, predict, resume, 2 processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from llmser.training.run import run

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is needed for the demo corpus")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from llmser.data.demo_corpus import DemoCorpusConfig, make_demo_corpus

    path = tmp_path_factory.mktemp("engine") / "corpus"
    make_demo_corpus(path, DemoCorpusConfig(n=64, seed=3, n_speakers=8, workers=2), progress=False)
    return path


def _overrides(corpus, out, steps=6, batch=8, **extra):
    items = {"data.corpus": str(corpus), "train.output_dir": str(out), "train.max_steps": steps,
             "train.eval_every": 3, "train.save_every": 3, "train.log_every": 1, "data.batch_size": batch,
             "data.max_seconds": 2.0, "optim.warmup_steps": 1, "model.dropout": 0.0, **extra}
    return [f"{k}={v}" for k, v in items.items()]


def _weights(out):
    return load_file(str(out / "best" / "model.safetensors"))


def test_train_writes_best_model_predictions_and_report(corpus, tmp_path):
    out = tmp_path / "run"
    result = run(ROOT / "adapters/wavlm_tiny.yaml", _overrides(corpus, out))
    assert result["step"] == 6
    assert {"macro_f1", "ccc_arousal", "ccc_mean"} <= set(result["dev"])
    assert (out / "best" / "config.json").is_file() and (out / "best" / "recipe.yaml").is_file()
    assert (out / "test_predictions.csv").is_file() and (out / "test" / "report.md").is_file()
    assert json.loads((out / "metrics.json").read_text())["step"] == 6
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    state = json.loads((out / "trainer_state.json").read_text())
    assert [h["step"] for h in state["history"] if "train/loss" in h] == [1, 2, 3, 4, 5, 6]


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(corpus, tmp_path):
    out = tmp_path / "run"
    run(ROOT / "adapters/wavlm_tiny.yaml", _overrides(corpus, out))
    expected = load_file(str(out / "checkpoint-6" / "trainable.safetensors"))
    # as if killed after step 3: only checkpoint-3 survives
    shutil.rmtree(out / "checkpoint-6")
    shutil.rmtree(out / "best")
    result = run(ROOT / "adapters/wavlm_tiny.yaml", _overrides(corpus, out), resume="latest")
    assert result["step"] == 6
    resumed = load_file(str(out / "checkpoint-6" / "trainable.safetensors"))
    assert expected.keys() == resumed.keys()
    for key in expected:
        torch.testing.assert_close(resumed[key], expected[key], rtol=0, atol=0, msg=key)


def test_balanced_sampler_and_gradient_accumulation_run(corpus, tmp_path):
    out = tmp_path / "bal"
    result = run(ROOT / "adapters/wavlm_tiny.yaml",
                 _overrides(corpus, out, steps=2, batch=4, **{"data.balanced_sampler": True,
                                                               "optim.gradient_accumulation_steps": 2,
                                                               "loss.class_loss": "focal",
                                                               "train.predict_test": False}))
    assert result["step"] == 2 and "test" not in result


@pytest.mark.slow
def test_two_processes_match_one_process(corpus, tmp_path):
    """accelerate launch with 2 gloo processes x batch 4 == 1 process x batch 8 (same global batches)."""
    # DDP averages per-process gradients, which equals the global-batch gradient for losses that are
    # plain means over examples. CCC and class-weighted CE are batch statistics, and X/O files (no class
    # label) make per-process means run over different counts, so this comparison uses plain CE and MSE
    # on task-1 files only.
    common = {"loss.class_loss": "ce", "loss.attribute_loss": "mse", "train.predict_test": False,
              "data.task": "class"}
    one = tmp_path / "one"
    run(ROOT / "adapters/wavlm_tiny.yaml", _overrides(corpus, one, steps=4, batch=8, **common))
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "scripts/accelerate/cpu_2proc.yaml"), "--main_process_port", "29531",
           "-m", "llmser", "train", str(ROOT / "adapters/wavlm_tiny.yaml"),
           *_overrides(corpus, two, steps=4, batch=4, **common)]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_file(str(one / "checkpoint-4" / "trainable.safetensors"))
    b = load_file(str(two / "checkpoint-4" / "trainable.safetensors"))
    for key in a:
        # float reduction order differs between gloo all-reduce and one process; a wrong split of
        # the global batch would differ by ~lr (2e-3) per step
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-4, msg=key)


@pytest.mark.slow
def test_two_processes_train_and_predict_the_text_branch(corpus, tmp_path):
    """A 2-process launch of an LLM branch trains, then scores the test split on both processes and reports it."""
    out = tmp_path / "text2"
    overrides = [f"data.corpus={corpus}", f"train.output_dir={out}", "train.max_steps=4", "train.eval_every=4",
                 "train.save_every=4", "data.batch_size=4"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "scripts/accelerate/cpu_2proc.yaml"), "--main_process_port", "29533",
           "-m", "llmser", "train", str(ROOT / "adapters/text_tiny.yaml"), *overrides]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["step"] == 4 and "macro_f1" in metrics["test"]["metrics"]
    assert (out / "best" / "adapter_model.safetensors").is_file() and (out / "test" / "report.md").is_file()


def test_a_second_run_in_the_same_process_may_use_another_precision(corpus, tmp_path):
    """accelerate keeps one AcceleratorState per process; a second `llmser train` in the same Python process with
    another train.mixed_precision stopped on "AcceleratorState has already been initialized ... restart your
    runtime" (found by the test suite, where an earlier test had made the state with 'no')."""
    from accelerate import Accelerator

    Accelerator(cpu=True, mixed_precision="no")  # the state an earlier run in this process left
    out = tmp_path / "bf16"
    result = run(ROOT / "adapters/wavlm_tiny.yaml", _overrides(corpus, out, steps=2, **{"train.mixed_precision": "bf16"}))
    assert result["step"] == 2 and (out / "best" / "model.safetensors").is_file()
    out = tmp_path / "auto"  # 'no' on a CPU (an override 'no' reads as YAML's false)
    result = run(ROOT / "adapters/wavlm_tiny.yaml", _overrides(corpus, out, steps=2, **{"train.mixed_precision": "auto"}))
    assert result["step"] == 2


def test_eval_on_start_makes_the_starting_model_a_candidate_for_best(corpus, tmp_path, monkeypatch):
    """train.eval_on_start: dev is scored before the first step, and when nothing later beats it, best/ is the
    model the run started from (a staged branch's stage-1 model)."""
    from llmser.training.engine import EvalOutput, Trainer

    scripted, evaluated = iter([0.9, 0.1, 0.2]), []

    def evaluate(self, dataset, desc="eval"):
        evaluated.append(self.state["step"])
        if not evaluated[1:]:  # the starting weights, as best/ should hold them
            model = self.accelerator.unwrap_model(self.model)
            evaluated.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
        value = next(scripted)
        return EvalOutput(np.zeros(0), None, None, np.zeros(0), np.zeros((0, 3)), metrics={"combined": value})

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    out = tmp_path / "run"
    result = run(ROOT / "adapters/wavlm_tiny.yaml", _overrides(corpus, out, **{"train.eval_on_start": "true",
                                                                               "train.predict_test": "false"}))
    start_weights = evaluated.pop(1)
    assert evaluated == [0, 3, 6] and result["best_step"] == 0 and result["step"] == 6
    best = _weights(out)
    compared = [name for name in start_weights if name in best]
    assert len(compared) > 10
    assert all(torch.equal(best[name], start_weights[name]) for name in compared)
