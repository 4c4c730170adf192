"""What every geometry's distributions share, and one strategy per geometry family for what they mean.

`Distribution` is the one union of the batch types (`MixtureParams`: points and Gaussian mixtures; `ConeParams`).
Both carry the same protocol: `map`, `select(rows)`, `to(device)`, `device`, `batch_size`, and `cat(parts)` on the
class. What differs between geometries is said once, in a `Family`: how a row's uncertainty is read, how much one
distribution contains another, the closed-form composition of parts, the flat feature vector the compositional layer
reads, and the summary row the pyfunc model returns. Code outside geometry/ asks `family_of(dist)` instead of
testing types, so adding a geometry means one batch type, one `Family` and their tests.

Uncertainty as each geometry means it (what evaluation, search and the pyfunc model report):
- cones: the aperture θ, the angular radius of the cap; a general concept is a wide cap;
- mixtures: the total variance of the mixture (`eval.mixture_uncertainty: total_variance`, the spread of the whole
  distribution around its mean, which grows both with the components' variances and with their disagreement) or the
  entropy of the weights (`weight_entropy`, how undecided the sample is between its components);
- points: none (one component without variance), reported as absent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from multigeometry.geometry.cone import ConeParams, compose_cone_groups, pairwise_containment
from multigeometry.geometry.mixture import MixtureParams, mixture_total_variance, mixture_weight_entropy
from multigeometry.geometry.mixture_kl import mixture_kl_approx

Distribution = MixtureParams | ConeParams


@dataclass(frozen=True)
class FlatScale:
    """The bounds that map a distribution's spreads onto [0, 1] in its flat feature vector."""

    theta_max: float
    logvar_min: float
    logvar_max: float


@dataclass(frozen=True)
class Family:
    """One geometry family: its batch type and what its distributions mean."""

    name: str  # the `kind` stored with saved tensors
    batch_type: type
    geometries: tuple[str, ...]  # the `model.geometry` values whose heads output this family
    # one number a row (B,), or None when the distributions carry none; the measure names the mixture reading
    uncertainty: Callable[[Any, str], Tensor | None]
    has_containment: Callable[[Any], bool]
    # (outer, inner) -> (B_outer, B_inner), higher = more of inner lies inside outer
    containment: Callable[[Any, Any], Tensor]
    flat_features: Callable[[Any, FlatScale], Tensor]
    summary: Callable[[Any, str], list[dict[str, Any]]]
    # parts grouped by owner -> one distribution per owner, where the geometry has a closed form (None: it has not)
    closed_form_compose: Callable[[Any, Tensor, int], Any] | None = None


def _cone_uncertainty(dist: ConeParams, _measure: str) -> Tensor:
    return dist.theta.detach()


def _mixture_uncertainty(dist: MixtureParams, measure: str) -> Tensor | None:
    if measure == "weight_entropy":
        return mixture_weight_entropy(dist.logits).detach() if dist.n_components > 1 else None
    if dist.logvar is None and dist.n_components == 1:
        return None
    return mixture_total_variance(dist).detach()


def _cone_flat(dist: ConeParams, scale: FlatScale) -> Tensor:
    return torch.cat([dist.direction, (dist.theta / scale.theta_max)[:, None]], dim=-1)


def _mixture_flat(dist: MixtureParams, scale: FlatScale) -> Tensor:
    # components sorted by weight, so that the vector does not depend on their arbitrary order
    order = dist.logits.argsort(dim=-1, descending=True)
    take = order[..., None].expand(-1, -1, dist.dim)
    pieces = [dist.weights().gather(-1, order), dist.mu.gather(1, take).flatten(1)]
    if dist.logvar is not None:
        lo, hi = scale.logvar_min, scale.logvar_max
        pieces.append((dist.logvar.gather(1, take).flatten(1) - lo) / (hi - lo))
    return torch.cat(pieces, dim=-1)


def _cone_summary(dist: ConeParams, _measure: str) -> list[dict[str, Any]]:
    directions = dist.direction.detach().float().cpu()
    thetas = dist.theta.detach().float().cpu()
    return [
        {"geometry": "cone", "direction": d.tolist(), "aperture": float(t), "uncertainty": float(t)}
        for d, t in zip(directions, thetas, strict=True)
    ]


def _mixture_summary(dist: MixtureParams, measure: str) -> list[dict[str, Any]]:
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


CONE = Family(
    name="cone",
    batch_type=ConeParams,
    geometries=("cone",),
    uncertainty=_cone_uncertainty,
    has_containment=lambda dist: True,
    containment=lambda outer, inner: -pairwise_containment(outer, inner),
    flat_features=_cone_flat,
    summary=_cone_summary,
    closed_form_compose=compose_cone_groups,
)
MIXTURE = Family(
    name="mixture",
    batch_type=MixtureParams,
    geometries=("mixture", "point"),
    uncertainty=_mixture_uncertainty,
    has_containment=lambda dist: dist.logvar is not None,
    containment=lambda outer, inner: -mixture_kl_approx(inner, outer).T,
    flat_features=_mixture_flat,
    summary=_mixture_summary,
)
FAMILIES: dict[str, Family] = {f.name: f for f in (MIXTURE, CONE)}
_BY_TYPE: dict[type, Family] = {f.batch_type: f for f in FAMILIES.values()}


def family_of(dist: Distribution) -> Family:
    try:
        return _BY_TYPE[type(dist)]
    except KeyError:
        raise TypeError(f"not a distribution of a known geometry: {type(dist).__name__} (known: "
                        f"{', '.join(t.__name__ for t in _BY_TYPE)})") from None


def family_for(geometry: str) -> Family:
    """The family whose distributions a model of `model.geometry` = `geometry` outputs."""
    for family in FAMILIES.values():
        if geometry in family.geometries:
            return family
    known = sorted(g for f in FAMILIES.values() for g in f.geometries)
    raise ValueError(f"unknown model.geometry {geometry!r} (known: {', '.join(known)})")


def concat(parts: Sequence[Distribution]) -> Distribution:
    """The rows of `parts` (all of one type) as one batch."""
    if not parts:
        raise ValueError("concat of no distributions")
    return family_of(parts[0]).batch_type.cat(parts)


def select_rows(dist: Distribution, rows: Tensor) -> Distribution:
    return dist.select(rows)


def device_of(dist: Distribution) -> torch.device:
    return dist.device


def uncertainty(dist: Distribution, mixture_measure: str = "total_variance") -> Tensor | None:
    """One uncertainty number per row (B,) as the geometry means it (module docstring), or None for points."""
    return family_of(dist).uncertainty(dist, mixture_measure)


def has_containment(dist: Distribution) -> bool:
    return family_of(dist).has_containment(dist)


def containment_score(outer: Distribution, inner: Distribution) -> Tensor:
    """How much each inner distribution lies inside each outer one, (B_outer, B_inner); higher = more contained."""
    family = family_of(outer)
    if family_of(inner) is not family:
        raise TypeError(f"both sides must be of one geometry, got {type(outer).__name__}, {type(inner).__name__}")
    return family.containment(outer, inner)


def to_tensors(dist: Distribution) -> dict[str, Any]:
    """A distribution as plain CPU tensors and its family's name (what `torch.save` stores; see `from_tensors`)."""
    values = {f.name: getattr(dist, f.name) for f in fields(dist)}
    return {"kind": family_of(dist).name, **{k: (None if v is None else v.detach().cpu()) for k, v in values.items()}}


def from_tensors(data: dict[str, Any]) -> Distribution:
    kind = data.get("kind")
    if kind not in FAMILIES:
        raise ValueError(f"saved distribution of unknown kind {kind!r} (known: {', '.join(FAMILIES)})")
    batch_type = FAMILIES[kind].batch_type
    return batch_type(**{f.name: data.get(f.name) for f in fields(batch_type)})
