"""A distribution as one output row: its parameters as plain lists and an uncertainty summary."""

from __future__ import annotations

from typing import Any

from multigeometry.geometry.distribution import Distribution, family_of


def summarise(dist: Distribution, measure: str = "total_variance") -> list[dict[str, Any]]:
    """One dict per row of `dist` (its geometry's `Family.summary`).

    Mixtures: `weights` (K), `means` (K x D), `log_variances` (K x D; absent for points), `total_variance` and
    `weight_entropy`. Cones: `direction` (D) and `aperture` (radians). Every row has `uncertainty`: the cone's
    aperture, or the mixture measure `eval.mixture_uncertainty` names (NaN for a point embedding, which has none).
    """
    return family_of(dist).summary(dist, measure)
