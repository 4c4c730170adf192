"""A model's similarity: the one function that scores two batches of distributions, decided once from the geometry
and `loss.similarity`, and held by the model (`PairModel.similarity`).

Training (the loss's InfoNCE and its other terms), evaluation, search and the approximate index all score through it,
so none of them needs the loss to know how its model compares distributions. The learnable logit scale that
multiplies it in the loss is the loss's: retrieval ranks by the similarity alone.

- `point`: cosine of the means (one component without variance, CLIP);
- `csd`: the Cauchy-Schwarz divergence's log-sum-exp over the mixtures' components (`csd_tau` its temperature);
- `product_kernel`: the expected likelihood kernel of the mixtures, which needs variances;
- `cone`: the cosine of the cones' lifted unit vectors, whatever `loss.similarity` says.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from torch import Tensor

from multigeometry.geometry.blockwise import DEFAULT_CHUNK_ELEMENTS
from multigeometry.geometry.cone import cone_similarity
from multigeometry.geometry.distribution import CONE, MIXTURE, Distribution, Family, family_of
from multigeometry.geometry.mixture import csd_similarity, point_similarity, product_kernel_similarity

SimilarityKind = Literal["point", "csd", "product_kernel", "cone"]
# what scores rows against rows, (B, B'): a `Similarity`, or any function of that shape (tests pass plain ones)
SimilarityFn = Callable[[Distribution, Distribution], Tensor]
PRODUCT_KERNEL_MAX_ELEMENTS = 1 << 22

if TYPE_CHECKING:
    from multigeometry.config import LossConfig, ModelConfig


def resolve_similarity_kind(geometry: str, requested: str, n_components: int) -> SimilarityKind:
    """The similarity `model.geometry` and `loss.similarity` ("auto": point for points, csd for mixtures) name
    together; cones have only their own. Raises ValueError for a similarity the geometry cannot compute."""
    if geometry == "cone":
        return "cone"
    kind = ("point" if geometry == "point" else "csd") if requested == "auto" else requested
    if kind not in get_args(SimilarityKind) or kind == "cone":
        raise ValueError(f"unknown loss.similarity {requested!r} for model.geometry {geometry!r}")
    if geometry == "point" and kind == "product_kernel":
        raise ValueError("loss.similarity 'product_kernel' needs variances; model.geometry 'point' has none")
    if geometry == "mixture" and kind == "point" and n_components != 1:
        raise ValueError(f"loss.similarity 'point' needs one component, model.n_components is {n_components}")
    return kind  # type: ignore[return-value]


@dataclass(frozen=True)
class Similarity:
    """Similarities of all pairs, rows of `a` against rows of `b` (B, B'), before any logit scale."""

    kind: SimilarityKind
    csd_tau: float = 1.0
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
    product_kernel_max_elements: int = PRODUCT_KERNEL_MAX_ELEMENTS

    @classmethod
    def for_model(cls, geometry: str, requested: str = "auto", n_components: int = 1, csd_tau: float = 1.0,
                  **sizes: int) -> Similarity:
        """The similarity of a model of `geometry` (`model.geometry`) under `loss.similarity` = `requested`."""
        return cls(resolve_similarity_kind(geometry, requested, n_components), csd_tau, **sizes)

    @classmethod
    def from_config(cls, model: ModelConfig, loss: LossConfig, **sizes: int) -> Similarity:
        """The similarity `model.geometry`, `model.n_components`, `loss.similarity` and `loss.csd_tau` configure."""
        return cls.for_model(model.geometry, loss.similarity, model.n_components, loss.csd_tau, **sizes)

    @property
    def family(self) -> Family:
        return CONE if self.kind == "cone" else MIXTURE

    def __call__(self, a: Distribution, b: Distribution) -> Tensor:
        if family_of(a) is not self.family or family_of(b) is not self.family:
            raise TypeError(f"the {self.kind} similarity scores {self.family.batch_type.__name__} on both sides, got "
                            f"{type(a).__name__} and {type(b).__name__}")
        if self.kind == "cone":
            return cone_similarity(a, b)  # type: ignore[arg-type]
        if self.kind == "point":
            return point_similarity(a, b)  # type: ignore[arg-type]
        if self.kind == "csd":
            return csd_similarity(a, b, self.csd_tau, self.chunk_elements)  # type: ignore[arg-type]
        return product_kernel_similarity(a, b, self.product_kernel_max_elements)  # type: ignore[arg-type]
