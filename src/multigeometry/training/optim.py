"""AdamW with weight decay only where it belongs, and a warmup-then-cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from multigeometry.config import TrainConfig


def param_groups(modules: list[nn.Module], weight_decay: float) -> list[dict]:
    """No weight decay on norms, biases, embeddings' 1-D gains and the temperature (every tensor of < 2 dims)."""
    decay, no_decay, seen = [], [], set()
    for module in modules:
        for name, p in module.named_parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def fused_supported(groups: list[dict]) -> bool:
    """torch's fused AdamW (one kernel for every tensor: 2.5 ms against 9.1 ms a step on the default model, CPU)
    takes floating-point tensors on one CPU, CUDA or MPS device."""
    params = [p for group in groups for p in group["params"]]
    devices = {p.device.type for p in params}
    return (bool(params) and len(devices) == 1 and devices <= {"cpu", "cuda", "mps"}
            and all(p.is_floating_point() for p in params))


def make_optimizer(modules: list[nn.Module], cfg: TrainConfig) -> torch.optim.AdamW:
    groups = param_groups(modules, cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                             fused=fused_supported(groups) or None)


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
    )
