"""The math on distributions: pure tensor functions over Gaussian mixtures and cones. Imports only torch."""

from multigeometry.geometry.blockwise import block_lse_matmul
from multigeometry.geometry.cone import (
    ConeParams,
    angles,
    bound_aperture,
    compose_cone_groups,
    compose_cones,
    cone_from_raw,
    cone_similarity,
    containment,
    pairwise_angles,
    pairwise_containment,
)
from multigeometry.geometry.mixture import (
    MixtureParams,
    bound_logvar,
    csd_similarity,
    gaussian_kl_to_standard,
    mixture_from_raw,
    mixture_kl_to_standard,
    mixture_total_variance,
    mixture_weight_entropy,
    paired_w2_cost,
    point_similarity,
    product_kernel_similarity,
)

__all__ = [
    "ConeParams",
    "MixtureParams",
    "angles",
    "block_lse_matmul",
    "bound_aperture",
    "bound_logvar",
    "compose_cone_groups",
    "compose_cones",
    "cone_from_raw",
    "cone_similarity",
    "containment",
    "csd_similarity",
    "gaussian_kl_to_standard",
    "mixture_from_raw",
    "mixture_kl_to_standard",
    "mixture_total_variance",
    "mixture_weight_entropy",
    "paired_w2_cost",
    "pairwise_angles",
    "pairwise_containment",
    "point_similarity",
    "product_kernel_similarity",
]
