"""Batch order, LR schedules and safetensors checkpoints of the training engine."""

from __future__ import annotations

import math

import pytest
import torch

from llmser.recipe import OptimConfig
from llmser.training import checkpoint as ckpt
from llmser.training.batching import ShuffledBatchSampler
from llmser.training.optim import build_optimizer, build_scheduler, lr_multiplier


def test_two_ranks_split_the_one_process_global_batch():
    one = list(ShuffledBatchSampler(40, 8, seed=3))
    r0 = list(ShuffledBatchSampler(40, 4, num_replicas=2, rank=0, seed=3))
    r1 = list(ShuffledBatchSampler(40, 4, num_replicas=2, rank=1, seed=3))
    assert len(one) == len(r0) == len(r1) == 5
    for g, a, b in zip(one, r0, r1):
        assert g == a + b
    assert sorted(i for batch in one for i in batch) == list(range(40))


def test_epochs_differ_and_resume_mid_epoch_continues_exactly():
    sampler = ShuffledBatchSampler(30, 4, seed=0)
    sampler.set_epoch(1)
    full = list(sampler)
    sampler.set_epoch(2)
    assert list(sampler) != full
    resumed = ShuffledBatchSampler(30, 4, seed=0)
    resumed.load_state_dict({"epoch": 1, "start_batch": 3, "seed": 0})
    assert list(resumed) == full[3:]
    assert len(resumed) == len(full)  # start offset is consumed once


def test_global_batch_larger_than_data_is_a_clear_error():
    with pytest.raises(ValueError, match="lower batch_size"):
        ShuffledBatchSampler(6, 4, num_replicas=2)


@pytest.mark.parametrize("schedule", ["cosine", "exponential", "constant"])
def test_schedules_warm_up_then_decay(schedule):
    cfg = OptimConfig(schedule=schedule, warmup_steps=10, min_lr_ratio=0.1)
    values = [lr_multiplier(s, cfg, 100) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    if schedule == "constant":
        assert values[-1] == 1.0
    else:
        assert all(a >= b - 1e-12 for a, b in zip(values[10:], values[11:]))  # monotone decay
        assert values[-1] == pytest.approx(0.1, abs=0.02)
    if schedule == "cosine":
        mid = lr_multiplier(55, cfg, 100)
        assert mid == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def _tiny_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    model[0].weight.requires_grad_(True)
    return model


def test_optimizer_groups_skip_decay_on_bias_and_norm():
    model = _tiny_model()
    optimizer = build_optimizer(model, OptimConfig(lr=0.1, weight_decay=0.5))
    decays = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decays[id(model[0].weight)] == 0.5
    assert decays[id(model[0].bias)] == 0.0 and decays[id(model[1].weight)] == 0.0


def test_checkpoint_round_trip_restores_training_exactly(tmp_path):
    def run(steps, model, optimizer, scheduler):
        for _ in range(steps):
            x = torch.randn(5, 4)
            loss = torch.nn.functional.dropout(model(x), 0.5).pow(2).mean()
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()

    cfg = OptimConfig(lr=0.05)
    torch.manual_seed(1)
    model = _tiny_model()
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, 10)
    run(3, model, opt, sched)
    ckpt.save_checkpoint(tmp_path / "checkpoint-3", model=model, optimizer=opt, scheduler=sched,
                         trainer_state={"step": 3}, is_main=True, rank=0)
    run(4, model, opt, sched)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    model2 = _tiny_model()
    opt2 = build_optimizer(model2, cfg)
    sched2 = build_scheduler(opt2, cfg, 10)
    state = ckpt.load_checkpoint(tmp_path / "checkpoint-3", model=model2, optimizer=opt2, scheduler=sched2, rank=0)
    assert state == {"step": 3}
    run(4, model2, opt2, sched2)
    for key, value in model2.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert ckpt.latest_checkpoint(tmp_path).name == "checkpoint-3"
    assert not list(tmp_path.glob("*.partial"))
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))  # no pickles


def test_incomplete_checkpoint_is_refused(tmp_path):
    (tmp_path / "checkpoint-5").mkdir()
    model = _tiny_model()
    opt = build_optimizer(model, OptimConfig())
    with pytest.raises(FileNotFoundError, match="incomplete"):
        ckpt.load_checkpoint(tmp_path / "checkpoint-5", model=model, optimizer=opt,
                             scheduler=build_scheduler(opt, OptimConfig(), 5), rank=0)


def test_prune_keeps_the_newest(tmp_path):
    for step in (10, 20, 30):
        (tmp_path / f"checkpoint-{step}").mkdir()
    ckpt.prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-20", "checkpoint-30"]
