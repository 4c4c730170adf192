"""Approximate search (multigeometry.ann): the FAISS candidates re-ranked exactly give the exact top 1 on small
galleries for every geometry, the search vectors order pairs as the similarity does, and `search` switches to it at
registry.ann_threshold."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from multigeometry.ann import ApproximateIndex, approximate_topk
from multigeometry.config import RegistryConfig, params_from_dict
from multigeometry.evaluation.retrieval import blockwise_topk
from multigeometry.geometry import ConeParams, MixtureParams
from multigeometry.geometry.search import search_vectors
from multigeometry.geometry.similarity import Similarity

D = 16


def gallery(n: int, geometry: str, seed: int, near: torch.Tensor | None = None) -> tuple[torch.Tensor, object]:
    """n clustered unit directions (or noisy copies of `near`'s first n) as points, cones or K=2 mixtures."""
    g = torch.Generator().manual_seed(seed)
    if near is None:
        centres = F.normalize(torch.randn(max(1, int(2 * math.sqrt(n))), D, generator=g), dim=-1)
        base = centres[torch.randint(0, len(centres), (n,), generator=g)] + 0.75 * torch.randn(n, D, generator=g) / 4
    else:
        base = near[:n] + 0.5 * torch.randn(n, D, generator=g) / 4
    base = F.normalize(base, dim=-1)
    if geometry == "point":
        return base, MixtureParams.point(base)
    if geometry == "cone":
        return base, ConeParams(base, 0.05 + 1.15 * torch.rand(n, generator=g))
    mu = F.normalize(base[:, None, :] + 0.3 * torch.randn(n, 2, D, generator=g) / 4, dim=-1)
    return base, MixtureParams(torch.randn(n, 2, generator=g), mu, -9.0 + 6.0 * torch.rand(n, 2, D, generator=g))


def similarity(geometry: str) -> Similarity:
    params = params_from_dict({"model": {"geometry": geometry, "embed_dim": D, "n_components": 2 if geometry ==
                                         "mixture" else 1}})
    return Similarity.from_config(params.model, params.loss)


@pytest.mark.parametrize("geometry", ["point", "cone", "mixture"])
def test_approximate_search_returns_the_exact_top_1_on_a_small_gallery(geometry: str):
    base, items = gallery(3000, geometry, seed=1)
    _, queries = gallery(200, geometry, seed=2, near=base)
    sim, cfg = similarity(geometry), RegistryConfig()
    index = ApproximateIndex.build(items, sim.kind, sim.csd_tau, cfg.ann_nlist, cfg.ann_train_per_list)
    assert index.components == (2 if geometry == "mixture" else 1) and index.nlist > cfg.ann_nprobe  # not a scan
    with torch.no_grad():
        exact_scores, exact = blockwise_topk(queries, items, sim, 10)
        scores, found = approximate_topk(queries, items, sim, index, 10, cfg.ann_candidates,
                                         cfg.ann_nprobe)
    assert torch.equal(found[:, 0], exact[:, 0])
    torch.testing.assert_close(scores[:, 0], exact_scores[:, 0])  # the geometry's own score, not FAISS's
    recall = (found[:, :, None] == exact[:, None, :]).any(dim=2).double().mean()
    assert recall >= 0.95
    # serialised and read back, the index finds the same
    again = ApproximateIndex.from_bytes(index.to_bytes(), index.n_items, index.components, index.kind, index.tau)
    assert torch.equal(again.candidates(queries, 16, cfg.ann_nprobe), index.candidates(queries, 16, cfg.ann_nprobe))


def test_csd_search_vectors_order_item_components_as_the_csd_terms_do():
    """‖x_k − y_l‖² is minus the (k, l) term of the CSD log-sum-exp plus a constant of the query component."""
    tau = 0.7
    _, items = gallery(30, "mixture", seed=3)
    _, queries = gallery(5, "mixture", seed=4)
    x, _ = search_vectors(queries, "csd", "query", tau)
    y, owner = search_vectors(items, "csd", "item", tau)
    assert torch.equal(owner, torch.arange(30).repeat_interleave(2))
    mu_q, mu_i = queries.mu.reshape(10, D), items.mu.reshape(60, D)
    term = (items.log_weights().reshape(60)[None, :]
            - (torch.cdist(mu_q, mu_i) ** 2 + items.logvar.exp().sum(-1).reshape(60)[None, :]) / tau)
    total = torch.cdist(x, y) ** 2 + term  # constant along each row
    torch.testing.assert_close(total - total[:, :1], torch.zeros_like(total), atol=1e-4, rtol=0)


def test_search_switches_to_approximate_search_at_the_threshold():
    from multigeometry.inference import TrainedModel
    from multigeometry.models.pair_model import PairModel
    from multigeometry.search import SearchIndex, search

    params = params_from_dict({"pairs": {"pairs": [{"a": "image", "b": "text"}]},
                               "model": {"geometry": "point", "embed_dim": D, "trunk": "mlp",
                                         "image": {"hidden_dim": 8, "layers": 1},
                                         "text": {"hidden_dim": 8, "layers": 1, "lock": False}}})
    model = PairModel(params.model, ["image", "text"], feature_dims={"image": 4, "text": 4})
    trained = TrainedModel(model, params, {}, None, {})
    n = 2000
    base, items = gallery(n, "point", seed=5)
    _, queries = gallery(20, "point", seed=6, near=base)
    ids = [f"s{i}" for i in range(n)]
    index = SearchIndex({}, ids, {"text": ids}, {"image": torch.arange(n)}, {"image": items}, {})

    def top(i: int, threshold: int) -> list[str]:
        rows = search(trained, index, queries.map(lambda t: t[i:i + 1]), 5, ["image"], query_modality="text",
                      registry=RegistryConfig(ann_threshold=threshold))
        return [r["sample_id"] for r in rows]

    exact = [top(i, n + 1) for i in range(20)]
    assert index.approximate == {}  # below the threshold: no index built
    assert [top(i, 0) for i in range(20)] == exact and index.approximate == {}  # 0: always exact
    approximate = [top(i, n) for i in range(20)]
    assert list(index.approximate) == [("image", 0, RegistryConfig().ann_train_per_list)]  # built once, reused
    assert [a[0] for a in approximate] == [e[0] for e in exact]
    assert sum(len(set(a) & set(e)) for a, e in zip(approximate, exact, strict=True)) >= 0.95 * 5 * 20
