"""Optimiser and learning-rate schedules (cosine or exponential decay, both with linear warm-up)."""

from __future__ import annotations

import math

import torch
from torch import nn

from llmser.recipe import OptimConfig


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    """AdamW over trainable parameters; no weight decay on biases/norms; optional encoder learning rate."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_encoder = name.startswith("encoder.")
        no_decay = param.ndim < 2 or "norm" in name.lower() or name.endswith(".bias")
        groups.setdefault((is_encoder, no_decay), []).append(param)
    if not groups:
        raise ValueError("the model has no trainable parameters; check the recipe's encoder_mode / heads")
    param_groups = []
    for (is_encoder, no_decay), params in sorted(groups.items()):
        lr = config.encoder_lr if (is_encoder and config.encoder_lr is not None) else config.lr
        param_groups.append({"params": params, "lr": lr, "weight_decay": 0.0 if no_decay else config.weight_decay})
    return torch.optim.AdamW(param_groups, lr=config.lr)


def lr_multiplier(step: int, config: OptimConfig, max_steps: int) -> float:
    """Multiplier on the base rate at optimiser step ``step`` (0-based)."""
    if config.warmup_steps > 0 and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    span = max(1, max_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.min_lr_ratio
    if config.schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if config.schedule == "exponential":
        # decays geometrically from 1 to min_lr_ratio (at least 1e-3 so the rate never hits zero)
        return max(floor, 1e-3) ** progress
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig, max_steps: int
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, config, max_steps))
