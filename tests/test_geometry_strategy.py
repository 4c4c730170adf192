"""The geometry strategy: one family per geometry, the similarity the model holds, and the loss terms the loss asks
the family for instead of testing types."""

from __future__ import annotations

from typing import get_args, get_type_hints

import pytest
import torch
import torch.nn.functional as F

from multigeometry.config import LossConfig, ModelConfig, params_from_dict
from multigeometry.geometry.cone import ConeParams, cone_similarity
from multigeometry.geometry.distribution import CONE, FAMILIES, MIXTURE, family_for, family_of
from multigeometry.geometry.mixture import MixtureParams, csd_similarity, point_similarity, product_kernel_similarity
from multigeometry.geometry.similarity import Similarity, resolve_similarity_kind
from multigeometry.losses import GEOMETRY_TERMS, MainCriterion
from multigeometry.models.pair_model import PairModel

D = 6


def mixture(n: int, k: int = 2, seed: int = 0) -> MixtureParams:
    g = torch.Generator().manual_seed(seed)
    return MixtureParams(torch.randn(n, k, generator=g), F.normalize(torch.randn(n, k, D, generator=g), dim=-1),
                         -3.0 + torch.rand(n, k, D, generator=g))


def cone(n: int, seed: int = 0) -> ConeParams:
    g = torch.Generator().manual_seed(seed)
    return ConeParams(F.normalize(torch.randn(n, D, generator=g), dim=-1), 0.1 + torch.rand(n, generator=g))


def test_every_configurable_geometry_has_one_family():
    geometries = get_args(get_type_hints(ModelConfig)["geometry"])
    assert set(geometries) == {"mixture", "cone", "point"}
    for geometry in geometries:
        assert family_for(geometry) in FAMILIES.values()
    assert family_for("point") is MIXTURE and family_for("mixture") is MIXTURE and family_for("cone") is CONE
    assert family_of(mixture(2)) is MIXTURE and family_of(cone(2)) is CONE
    with pytest.raises(ValueError, match="unknown model.geometry 'hyperbolic'"):
        family_for("hyperbolic")
    assert set(GEOMETRY_TERMS) <= set(FAMILIES)


@pytest.mark.parametrize(("geometry", "requested", "k", "kind"), [
    ("point", "auto", 1, "point"), ("mixture", "auto", 2, "csd"), ("mixture", "product_kernel", 2, "product_kernel"),
    ("mixture", "point", 1, "point"), ("cone", "auto", 1, "cone"), ("cone", "csd", 1, "cone"),
])
def test_the_similarity_kind_follows_geometry_and_loss_similarity(geometry, requested, k, kind):
    assert resolve_similarity_kind(geometry, requested, k) == kind


@pytest.mark.parametrize(("geometry", "requested", "k", "message"), [
    ("point", "product_kernel", 1, "needs variances"), ("mixture", "point", 2, "needs one component"),
    ("mixture", "cosine", 2, "unknown loss.similarity"),
])
def test_a_similarity_the_geometry_cannot_compute_is_refused(geometry, requested, k, message):
    with pytest.raises(ValueError, match=message):
        Similarity.for_model(geometry, requested, k)


def test_the_similarity_computes_the_geometry_function_and_refuses_the_other_family():
    a, b = mixture(4, seed=1), mixture(5, seed=2)
    torch.testing.assert_close(Similarity("csd", csd_tau=0.7)(a, b), csd_similarity(a, b, 0.7))
    torch.testing.assert_close(Similarity("product_kernel")(a, b), product_kernel_similarity(a, b))
    pa, pb = MixtureParams.point(a.mu[:, 0]), MixtureParams.point(b.mu[:, 0])
    torch.testing.assert_close(Similarity("point")(pa, pb), point_similarity(pa, pb))
    ca, cb = cone(4, seed=3), cone(5, seed=4)
    torch.testing.assert_close(Similarity("cone")(ca, cb), cone_similarity(ca, cb))
    with pytest.raises(TypeError, match="the cone similarity scores ConeParams on both sides"):
        Similarity("cone")(a, b)
    with pytest.raises(TypeError, match="the csd similarity scores MixtureParams"):
        Similarity("csd")(a, cb)


def test_the_model_holds_the_configured_similarity_and_the_loss_scores_with_it():
    params = params_from_dict({"pairs": {"pairs": [{"a": "image", "b": "text"}]},
                               "model": {"geometry": "mixture", "n_components": 2, "embed_dim": D, "trunk": "mlp",
                                         "image": {"hidden_dim": 8, "layers": 1},
                                         "text": {"hidden_dim": 8, "layers": 1, "lock": False}},
                               "loss": {"similarity": "product_kernel", "csd_tau": 0.5}})
    index = {"features": {"image.emb": {"dim": 4}, "text.emb": {"dim": 4}}}
    model = PairModel.from_index(params, index)
    assert model.similarity == Similarity("product_kernel", csd_tau=0.5)
    # built without params, a model has its geometry's default
    assert PairModel(params.model, ["image", "text"], feature_dims={"image": 4, "text": 4}).similarity.kind == "csd"
    criterion = MainCriterion(params.loss, params.model, similarity=model.similarity)
    assert criterion.similarity is model.similarity
    with pytest.raises(ValueError, match="a cone similarity for model.geometry 'mixture'"):
        MainCriterion(params.loss, params.model, similarity=Similarity("cone"))


@pytest.mark.parametrize(("geometry", "loss", "uses"), [
    ("cone", {"entailment_weight": 0.2}, True), ("cone", {"entailment_weight": 0.0}, False),
    ("cone", {"entailment_weight": 0.0, "aperture_weight": 0.1}, True),
    ("mixture", {"inclusion_weight": 0.1}, True), ("point", {"inclusion_weight": 0.1}, False),
    ("mixture", {"entailment_weight": 0.2, "variance_order_weight": 0.0}, False),
    ("mixture", {"variance_order_weight": 1.0}, True), ("point", {"variance_order_weight": 1.0}, False),
    ("point", {"hierarchy_contrastive_weight": 0.1}, True),
])
def test_the_hierarchy_is_encoded_only_for_a_term_of_the_geometry(geometry, loss, uses):
    cfg = LossConfig(**{"entailment_weight": 0.0, "inclusion_weight": 0.0, "aperture_weight": 0.0,
                        "hierarchy_contrastive_weight": 0.0, **loss})
    criterion = MainCriterion(cfg, ModelConfig(geometry=geometry, n_components=2 if geometry == "mixture" else 1))
    assert criterion.uses_hierarchy is uses


def test_the_loss_adds_the_regularisers_of_the_family_only():
    cfg = LossConfig(kl_weight=0.1, entropy_weight=0.1, sinkhorn_weight=0.0)
    a, b = mixture(4, seed=5), mixture(4, seed=6)
    terms = MainCriterion(cfg, ModelConfig(geometry="mixture", n_components=2))(a, b)
    assert {"kl", "entropy"} <= set(terms)
    ca, cb = cone(4, seed=7), cone(4, seed=8)
    terms = MainCriterion(cfg, ModelConfig(geometry="cone", n_components=1))(ca, cb)
    assert not {"kl", "entropy", "sinkhorn"} & set(terms)
    with pytest.raises(TypeError, match="model.geometry 'cone' expects ConeParams on both sides"):
        MainCriterion(cfg, ModelConfig(geometry="cone", n_components=1))(a, b)
