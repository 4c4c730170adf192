"""Ragged groups of rows (the parts of each compound) as a padded batch, for set functions over them."""

from __future__ import annotations

import torch
from torch import Tensor


def pad_groups(x: Tensor, owner: Tensor, n: int, fill: float) -> tuple[Tensor, Tensor]:
    """Rows x (P, ...) with `owner` (P,) in [0, n) -> (n, W, ...) padded with `fill`, W the largest group (at least 1),
    and the mask (n, W) of the real rows; rows keep their order within a group."""
    counts = torch.bincount(owner, minlength=n)
    width = max(int(counts.max()) if owner.numel() else 0, 1)
    order = torch.argsort(owner, stable=True)
    group = owner[order]
    slot = torch.arange(owner.numel(), device=owner.device) - (torch.cumsum(counts, 0) - counts)[group]
    padded = x.new_full((n, width, *x.shape[1:]), fill)
    padded[group, slot] = x[order]
    mask = torch.zeros(n, width, dtype=torch.bool, device=x.device)
    mask[group, slot] = True
    return padded, mask
