"""Image augmentation for training and deterministic resizing for evaluation (torchvision.transforms.v2)."""

from __future__ import annotations

from collections.abc import Callable

from multigeometry.config import AugmentConfig


def image_transform(cfg: AugmentConfig, train: bool) -> Callable:
    import torch
    from torchvision.transforms import v2

    ops: list = [v2.ToImage()]
    if train:
        ops.append(v2.RandomResizedCrop(cfg.image_size, scale=(cfg.scale_min, 1.0), antialias=True))
        if cfg.hflip:
            ops.append(v2.RandomHorizontalFlip())
        if cfg.color_jitter > 0:
            j = cfg.color_jitter
            ops.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(0.5, j / 4)))
    else:
        ops += [v2.Resize(cfg.image_size, antialias=True), v2.CenterCrop(cfg.image_size)]
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(cfg.mean), list(cfg.std))]
    return v2.Compose(ops)
