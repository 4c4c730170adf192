"""The closed-form start of `model.trunk: kernel`: each kernel trunk's anchors from the train split's features, and
its head's mean map solved as kernel ridge regression onto the directions of a locked partner (the text model's own
space, say), before the first step. On a few hundred pairs that start beat every contrastive recipe measured
(BENCHMARKS.md, "Real data"), so the trainer validates it as a candidate like any later step."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from multigeometry.config import PairSpec
from multigeometry.models.backbones import KernelFeatures
from multigeometry.models.pair_model import PairModel

if TYPE_CHECKING:
    from multigeometry.data.batch import Batch

log = logging.getLogger(__name__)


def kernel_ridge(gram: torch.Tensor, anchor_gram: torch.Tensor, targets: torch.Tensor, ridge: float) -> torch.Tensor:
    """The weights α (anchors × D) minimising ‖K α − Y‖² + ridge · αᵀ K_mm α over n samples' kernel rows K (n ×
    anchors): (Kᵀ K + ridge K_mm) α = Kᵀ Y, Nyström's form; with every sample an anchor it is (K + ridge I)⁻¹ Y."""
    k, kmm, y = gram.double(), anchor_gram.double(), targets.double()
    lhs = k.T @ k + ridge * kmm
    lhs = lhs + 1e-9 * lhs.diagonal().mean() * torch.eye(len(lhs), dtype=lhs.dtype)
    return torch.linalg.solve(lhs, k.T @ y).to(targets.dtype)


def locked_partners(model: PairModel, modalities: Iterable[str], pairs: Sequence[PairSpec]) -> dict[str, str]:
    """Each of `modalities`' first partner whose head is locked to its features' space (the regression's target)."""
    found = {}
    for m in modalities:
        for pair in pairs:
            other = pair.b if pair.a == m else pair.a if pair.b == m else None
            if other is not None and getattr(model.cfg, other).lock:
                found[m] = other
                break
    return found


def fit_kernels(model: PairModel, batches: Iterable[Batch], pairs: Sequence[PairSpec], seed: int) -> dict[str, str]:
    """Fit every kernel trunk of `model` on the features of `batches` (the train split, unaugmented) and solve its
    head's mean map onto its locked partner where it has one, frozen there with `model.kernel.lock`; {modality:
    partner, "" where none}."""
    kernels = {m: enc for m, enc in model.encoders.items() if isinstance(enc.trunk, KernelFeatures)}
    if not kernels:
        return {}
    partners = locked_partners(model, kernels, pairs)
    features: dict[str, list[torch.Tensor]] = {m: [] for m in kernels}
    targets: dict[str, list[torch.Tensor]] = {m: [] for m in partners}
    with torch.no_grad():
        for batch in batches:
            for m, enc in kernels.items():
                features[m].append(enc.norm(batch.inputs[f"{m}.emb"]).float())
            for m, other in partners.items():
                targets[m].append(F.normalize(model.encoders[other](batch.inputs).float(), dim=-1))
        generator = torch.Generator().manual_seed(seed)
        for m, enc in kernels.items():
            trunk: KernelFeatures = enc.trunk
            x = torch.cat(features[m])
            trunk.fit(x, generator)
            if m not in partners:
                log.info("model.trunk: kernel: %s has no locked partner to regress onto; its mean map starts random", m)
                continue
            alpha = kernel_ridge(trunk(x), trunk.anchor_gram(), torch.cat(targets[m]), model.cfg.kernel.ridge)
            proj = model.heads[m].mean.proj
            proj.weight.copy_(alpha.T.repeat(proj.out_features // alpha.shape[1], 1))
            proj.bias.zero_()
            proj.requires_grad_(not model.cfg.kernel.lock)
            log.info("model.trunk: kernel: %s's mean map solved onto %s's space over %d train samples, %d anchors",
                     m, partners[m], len(x), trunk.width)
    return {m: partners.get(m, "") for m in kernels}
