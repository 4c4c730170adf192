"""The loss options of the uncertainty and hierarchy work: PCME++'s pairwise sigmoid loss with pseudo-positives and
mixed samples, ProLIP's inclusion loss for mixtures, cone entailment with margins and the aperture order, and the
contrastive term over each hierarchy level."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from multigeometry.config import LossConfig, ModelConfig
from multigeometry.data.batch import Batch
from multigeometry.geometry.cone import ConeParams
from multigeometry.geometry.mixture import MixtureParams, inclusion_logit
from multigeometry.losses import (
    Hierarchy,
    MainCriterion,
    aperture_order_loss,
    entailment_loss,
    hierarchy_contrastive,
    info_nce,
    pair_labels,
    sigmoid_pairwise_loss,
    variance_order_loss,
)
from multigeometry.training.objective import mix_features


def test_sigmoid_loss_is_the_summed_pairwise_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    sim, labels = torch.randn(5, 5, generator=gen), (torch.rand(5, 5, generator=gen) > 0.7).float()
    scale, bias = torch.tensor(3.0), torch.tensor(-2.0)
    brute = sum(-math.log(torch.sigmoid(torch.tensor(sign * (3.0 * float(s) - 2.0))))
                for srow, lrow in zip(sim, labels, strict=True) for s, lab in zip(srow, lrow, strict=True)
                for sign in [1.0 if lab else -1.0]) / 5
    assert float(sigmoid_pairwise_loss(sim, scale, bias, labels)) == pytest.approx(brute, rel=1e-5)


def test_pair_labels_mark_groups_pseudo_positives_and_mixed_rows():
    groups = torch.tensor([0, 1, 1, 2])
    sim = torch.tensor([[0.5, 0.9, 0.1, 0.2], [0.0, 0.6, 0.3, 0.1], [0.0, 0.2, 0.6, 0.1], [0.7, 0.0, 0.0, 0.4]])
    plain = pair_labels(groups, groups)
    assert plain.tolist() == [[1, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 1]]
    pseudo = pair_labels(groups, groups, sim, pseudo_weight=0.3)
    assert pseudo[0, 1] == pytest.approx(0.3) and pseudo[3, 0] == pytest.approx(0.3)  # above the row's positive
    assert pseudo[0, 2] == 0 and pseudo[1, 0] == 0
    soft = pair_labels(groups, groups, soft_rows=(torch.tensor([1.0, 0.75, 1.0, 1.0]), torch.tensor([1, 3, 2, 0])))
    assert soft[1].tolist() == pytest.approx([0, 0.75, 0.75, 0.25])


def test_mixed_features_and_their_partners():
    x = torch.arange(12.0).reshape(4, 3)
    batch = Batch(group_ids=torch.arange(4), pairs=[("image", "text", 1.0)],
                  present={"image": torch.ones(4, dtype=torch.bool), "text": torch.ones(4, dtype=torch.bool)},
                  inputs={"image.emb": x, "text.emb": x + 100})
    mixed, (lam, partner) = mix_features(batch, ["image", "text"], 1.0, torch.Generator().manual_seed(0))
    assert bool((lam >= 0.5).all() and (lam <= 1).all())
    torch.testing.assert_close(mixed.inputs["image.emb"], lam[:, None] * x + (1 - lam[:, None]) * x[partner])
    assert torch.equal(mixed.inputs["text.emb"], batch.inputs["text.emb"])  # text is the anchor: never mixed
    assert torch.equal(batch.inputs["image.emb"], x)  # the batch itself is left as it was
    batch.present["image"] = torch.tensor([True, True, False, True])
    assert mix_features(batch, ["image", "text"], 1.0) is None


def _mixture(mu: torch.Tensor, logvar: float) -> MixtureParams:
    return MixtureParams(torch.zeros(len(mu), 1), mu[:, None, :], torch.full((len(mu), 1, mu.shape[1]), logvar))


def test_inclusion_logit_says_which_gaussian_holds_the_other():
    mu = F.normalize(torch.randn(3, 8, generator=torch.Generator().manual_seed(2)), dim=-1)
    narrow, wide = _mixture(mu, -9.0), _mixture(mu + 0.001, -4.0)
    assert bool((inclusion_logit(narrow, wide) > 0).all())
    assert bool((inclusion_logit(wide, narrow) < 0).all())


def _chain() -> tuple[ConeParams, ConeParams, Hierarchy]:
    axis = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), dim=-1)
    items = ConeParams(axis, torch.tensor([0.05, 0.05]))
    captions = ConeParams(axis, torch.tensor([0.2, 0.2]))
    general = ConeParams(axis.repeat_interleave(2, 0), torch.tensor([0.6, 0.4, 0.6, 0.4]))
    return captions, items, Hierarchy(general, torch.tensor([0, 0, 1, 1]), torch.tensor([-1, 0, -1, 2]),
                                      key=torch.tensor([7, 8, 9, 10]))


def test_margins_and_the_aperture_order():
    captions, items, hierarchy = _chain()
    assert float(entailment_loss(captions, items, hierarchy)) == 0.0  # nested with room
    assert float(entailment_loss(captions, items, hierarchy, (0.1,))) == 0.0  # 0.15 and 0.2 of room
    assert float(entailment_loss(captions, items, hierarchy, (0.3,))) > 0.0
    assert float(aperture_order_loss(captions, items, hierarchy, 0.1)) == 0.0
    flat = Hierarchy(ConeParams(hierarchy.general.direction, torch.full((4,), 0.2)), hierarchy.owner,
                     hierarchy.parent)
    assert float(aperture_order_loss(captions, items, flat, 0.1)) > 0.0
    assert hierarchy.levels().tolist() == [0, 1, 0, 1]


def test_the_variance_order_asks_general_mixtures_to_spread_wider():
    """The mixtures' aperture order on log total variance: nothing to pay when every outer mixture is wider by the gap,
    the hinge of the shortfall per kind of pair otherwise."""
    _captions, _items, cones = _chain()
    mu = F.normalize(torch.randn(4, 1, 8, generator=torch.Generator().manual_seed(3)), dim=-1)

    def spread(logvar: list[float], rows: torch.Tensor) -> MixtureParams:  # one component, isotropic log-variance
        m = mu[rows]
        return MixtureParams(torch.zeros(len(rows), 1), m, torch.tensor(logvar)[:, None, None].expand_as(m))

    items = spread([-9.0, -9.0], torch.tensor([0, 1]))
    captions = spread([-8.0, -8.0], torch.tensor([0, 1]))
    general = spread([-6.0, -7.0, -6.0, -7.0], torch.tensor([0, 0, 1, 1]))
    nested = Hierarchy(general, cones.owner, cones.parent)
    assert float(variance_order_loss(captions, items, nested, 0.5)) == 0.0  # each level e-fold wider, gap 0.5
    # the general levels as narrow as the captions: general ⊇ caption and parent ⊇ general each fall short by the gap
    flat = Hierarchy(spread([-8.0] * 4, torch.tensor([0, 0, 1, 1])), cones.owner, cones.parent)
    torch.testing.assert_close(variance_order_loss(captions, items, flat, 0.5), torch.tensor(1.0))
    flat_cfg = LossConfig(variance_order_weight=0.5, variance_order_gap=0.5, entailment_weight=0.0,
                          aperture_weight=0.0)
    out = MainCriterion(flat_cfg, ModelConfig(geometry="mixture", embed_dim=8, n_components=1))(
        items, captions, torch.arange(2), flat)  # (a, b): the captions are side b
    torch.testing.assert_close(out["variance_order"], torch.tensor(1.0))


def test_hierarchy_contrastive_is_an_infonce_per_level():
    _captions, items, hierarchy = _chain()
    crit = MainCriterion(LossConfig(), ModelConfig(geometry="cone"))
    scale = torch.tensor(5.0)
    got = hierarchy_contrastive(items, hierarchy, crit.similarity, scale)
    expected = []
    for at in ([0, 2], [1, 3]):
        general = hierarchy.general.map(lambda t, at=at: t[at])
        owners = items.map(lambda t, at=at: t[hierarchy.owner[at]])
        expected.append(info_nce(crit.similarity(owners, general), scale, symmetric=True))
    torch.testing.assert_close(got, torch.stack(expected).mean())


@pytest.mark.parametrize("geometry", ["mixture", "cone", "point"])
def test_each_option_trains_through_the_criterion(geometry):
    torch.manual_seed(0)
    cfg = LossConfig(objective="sigmoid", pseudo_positive_weight=0.2, inclusion_weight=0.5, aperture_weight=0.5,
                     hierarchy_contrastive_weight=0.5, entailment_weight=0.5, entailment_margins=(0.05,),
                     variance_order_weight=0.5)
    model_cfg = ModelConfig(geometry=geometry, embed_dim=8, n_components=1 if geometry == "point" else 2)
    crit = MainCriterion(cfg, model_cfg)
    assert "logit_bias" in dict(crit.named_parameters())
    raw = torch.randn(4, 8, requires_grad=True)

    def dist(x: torch.Tensor):
        if geometry == "cone":
            return ConeParams(F.normalize(x, dim=-1), torch.sigmoid(x[:, 0]))
        if geometry == "point":
            return MixtureParams.point(F.normalize(x, dim=-1))
        mu = F.normalize(torch.stack([x, x.flip(-1)], 1), dim=-1)
        return MixtureParams(torch.zeros(len(x), 2), mu, torch.full_like(mu, -5.0) + 0.1 * x[:, None, :1])

    general_raw = torch.randn(4, 8)
    hierarchy = Hierarchy(dist(general_raw), torch.tensor([0, 1, 2, 3]), torch.tensor([-1, -1, -1, -1]),
                          key=torch.tensor([1, 1, 2, 3]))
    out = crit(dist(raw), dist(raw * 0.9), torch.arange(4), hierarchy)
    assert torch.isfinite(out["loss"]) and "hierarchy_contrastive" in out
    assert ("entailment" in out and "aperture_order" in out) == (geometry == "cone")
    assert ("inclusion" in out and "variance_order" in out) == (geometry == "mixture")
    out["loss"].backward()
    assert raw.grad is not None and bool(torch.isfinite(raw.grad).all())
    with pytest.raises(ValueError, match="objective: sigmoid"):
        MainCriterion(LossConfig(mixup=0.5), model_cfg)


def test_pseudo_positives_wait_for_their_warmup_steps():
    torch.manual_seed(0)
    model = ModelConfig(geometry="point", embed_dim=8, n_components=1)
    mu = F.normalize(torch.randn(6, 1, 8), dim=-1)
    a = MixtureParams(torch.zeros(6, 1), mu, None)
    b = MixtureParams(torch.zeros(6, 1), mu.roll(1, 0), None)  # every row's positive is a stranger's point
    cfg = dict(objective="sigmoid", pseudo_positive_weight=0.5, kl_weight=0.0)
    warm = MainCriterion(LossConfig(**cfg, pseudo_positive_warmup_steps=3), model)
    plain = MainCriterion(LossConfig(**{**cfg, "pseudo_positive_weight": 0.0}), model)
    pseudo = MainCriterion(LossConfig(**cfg), model)
    for step in range(5):
        warm.step = step
        expected = plain if step < 3 else pseudo
        assert warm.pseudo_positive_weight() == (0.0 if step < 3 else 0.5)
        torch.testing.assert_close(warm(a, b)["loss"], expected(a, b)["loss"])
    assert not torch.allclose(plain(a, b)["loss"], pseudo(a, b)["loss"])  # the pseudo-positives change the loss
