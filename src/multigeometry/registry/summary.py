"""A distribution as one output row: its parameters as plain lists and an uncertainty summary."""

from __future__ import annotations

import math
from typing import Any

from multigeometry.geometry.cone import ConeParams
from multigeometry.geometry.mixture import MixtureParams, mixture_total_variance, mixture_weight_entropy
from multigeometry.models.pair_model import Distribution


def summarise(dist: Distribution, measure: str = "total_variance") -> list[dict[str, Any]]:
    """One dict per row of `dist`.

    Mixtures: `weights` (K), `means` (K x D), `log_variances` (K x D; absent for points), `total_variance` and
    `weight_entropy`. Cones: `direction` (D) and `aperture` (radians). Every row has `uncertainty`: the cone's
    aperture, or the mixture measure `eval.mixture_uncertainty` names (NaN for a point embedding, which has none).
    """
    if isinstance(dist, ConeParams):
        directions = dist.direction.detach().float().cpu()
        thetas = dist.theta.detach().float().cpu()
        return [
            {"geometry": "cone", "direction": d.tolist(), "aperture": float(t), "uncertainty": float(t)}
            for d, t in zip(directions, thetas, strict=True)
        ]
    if not isinstance(dist, MixtureParams):
        raise TypeError(f"summarise: expected MixtureParams or ConeParams, got {type(dist).__name__}")
    weights = dist.weights().detach().float().cpu()
    means = dist.mu.detach().float().cpu()
    logvar = None if dist.logvar is None else dist.logvar.detach().float().cpu()
    variance = mixture_total_variance(dist).detach().float().cpu()
    entropy = mixture_weight_entropy(dist.logits).detach().float().cpu()
    is_point = logvar is None and dist.n_components == 1
    out = []
    for i in range(dist.batch_size):
        row: dict[str, Any] = {
            "geometry": "point" if is_point else "mixture",
            "weights": weights[i].tolist(),
            "means": means[i].tolist(),
            "total_variance": float(variance[i]),
            "weight_entropy": float(entropy[i]),
        }
        if logvar is not None:
            row["log_variances"] = logvar[i].tolist()
        if is_point:
            row["uncertainty"] = math.nan
        elif measure == "weight_entropy":
            row["uncertainty"] = row["weight_entropy"]
        else:
            row["uncertainty"] = row["total_variance"]
        out.append(row)
    return out
