from __future__ import annotations

import math
import secrets
from dataclasses import replace

import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F

from multigeometry.config import LossConfig, ModelConfig
from multigeometry.geometry import (
    ConeParams,
    MixtureParams,
    containment,
    csd_similarity,
    mixture_match_nll,
    mixture_mean,
    mixture_total_variance,
)
from multigeometry.losses import Hierarchy, MainCriterion, SinkhornOTLoss, entailment_loss, info_nce

F64 = torch.float64


@pytest.fixture
def gen() -> torch.Generator:
    seed = secrets.randbits(31)
    print(f"random seed {seed}")
    return torch.Generator().manual_seed(seed)


def random_mixture(gen: torch.Generator, b: int, k: int, d: int, *, scale: float = 1.0) -> MixtureParams:
    return MixtureParams(
        torch.randn(b, k, generator=gen, dtype=F64).requires_grad_(),
        (scale * torch.randn(b, k, d, generator=gen, dtype=F64)).requires_grad_(),
        (torch.randn(b, k, d, generator=gen, dtype=F64) - 2.0).requires_grad_(),
    )


def random_cones(gen: torch.Generator, b: int, d: int) -> ConeParams:
    direction = F.normalize(torch.randn(b, d, generator=gen, dtype=F64), dim=-1).requires_grad_()
    return ConeParams(direction, (0.1 + torch.rand(b, generator=gen, dtype=F64)).requires_grad_())


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's loss as in its paper's pseudocode and OpenCLIP's ClipLoss."""
    image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    logits_per_image = logit_scale * image @ text.T
    labels = torch.arange(image.shape[0])
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_image.T, labels)) / 2


def test_point_mode_equals_clip_loss(gen: torch.Generator) -> None:
    crit = MainCriterion(LossConfig(similarity="point"), ModelConfig(geometry="point", n_components=1)).double()
    image = torch.randn(12, 16, generator=gen, dtype=F64, requires_grad=True)
    text = torch.randn(12, 16, generator=gen, dtype=F64, requires_grad=True)
    out = crit(MixtureParams.point(image), MixtureParams.point(text))
    assert set(out) == {"contrastive", "logit_scale", "loss"}  # no variance: no KL term
    scale = torch.tensor(1 / 0.07, dtype=F64, requires_grad=True)
    expected = clip_loss(image, text, scale)
    torch.testing.assert_close(out["loss"], expected)
    got = torch.autograd.grad(out["loss"], (image, text, crit.log_logit_scale))
    want = torch.autograd.grad(expected, (image, text, scale))
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    torch.testing.assert_close(got[2], want[2] * scale.detach())  # d/d log s = s · d/ds


def test_logit_scale_starts_at_clip_value_and_is_clamped() -> None:
    crit = MainCriterion(LossConfig(), ModelConfig())
    assert crit.logit_scale().item() == pytest.approx(1 / 0.07)
    with torch.no_grad():
        crit.log_logit_scale.fill_(math.log(500.0))
    assert crit.logit_scale().item() == pytest.approx(100.0)
    crit.clamp_logit_scale_()
    assert crit.log_logit_scale.item() == pytest.approx(math.log(100.0))


def brute_info_nce(
    logits: torch.Tensor, positive: torch.Tensor, row_groups: torch.Tensor, col_groups: torch.Tensor, smoothing: float
) -> torch.Tensor:
    total = 0.0
    for i in range(logits.shape[0]):
        valid = [j for j in range(logits.shape[1]) if j == positive[i] or row_groups[i] != col_groups[j]]
        lse = torch.logsumexp(logits[i, valid], 0)
        nll = lse - logits[i, positive[i]]
        uniform = sum(lse - logits[i, j] for j in valid) / len(valid)
        total = total + (1 - smoothing) * nll + smoothing * uniform
    return total / logits.shape[0]


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_info_nce_never_uses_a_row_of_the_same_group_as_a_negative(gen: torch.Generator, smoothing: float) -> None:
    sim = torch.randn(6, 9, generator=gen, dtype=F64)
    scale = torch.tensor(3.0, dtype=F64)
    positive = torch.tensor([0, 2, 3, 5, 7, 8])
    row_groups = torch.tensor([0, 1, 1, 2, 3, 4])
    col_groups = torch.tensor([0, 5, 1, 1, 6, 2, 2, 3, 4])
    expected = brute_info_nce(scale * sim, positive, row_groups, col_groups, smoothing)
    for chunk in (1, 20, 1 << 22):  # one row per chunk, a few, all
        got = info_nce(sim, scale, positive, row_groups, col_groups, smoothing, chunk_elements=chunk)
        torch.testing.assert_close(got, expected)
    # changing the logits of same-group columns changes nothing: rows 1 and 2 share group 1 (columns 2, 3)
    bumped = sim.clone()
    bumped[1, 3] += 5.0
    bumped[2, 2] -= 5.0
    torch.testing.assert_close(info_nce(bumped, scale, positive, row_groups, col_groups, smoothing), expected)
    # without repeated groups it is plain cross-entropy with PyTorch's label smoothing
    square = sim[:, :6]
    torch.testing.assert_close(
        info_nce(square, scale, None, torch.arange(6), torch.arange(6), smoothing),
        F.cross_entropy(scale * square, torch.arange(6), label_smoothing=smoothing),
    )


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_symmetric_info_nce_averages_rows_and_columns(gen: torch.Generator, smoothing: float) -> None:
    sim = torch.randn(7, 7, generator=gen, dtype=F64)
    scale = torch.tensor(5.0, dtype=F64)
    groups = torch.tensor([0, 1, 1, 2, 3, 3, 3])
    diag = torch.arange(7)
    expected = (
        brute_info_nce(scale * sim, diag, groups, groups, smoothing)
        + brute_info_nce(scale * sim.T, diag, groups, groups, smoothing)
    ) / 2
    for chunk in (1, 20, 1 << 22):
        got = info_nce(sim, scale, None, groups, groups, smoothing, symmetric=True, chunk_elements=chunk)
        torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="square"):
        info_nce(sim[:, :5], scale, symmetric=True)


@pytest.mark.parametrize("symmetric", [False, True])
def test_info_nce_gradcheck(gen: torch.Generator, symmetric: bool) -> None:
    sim = torch.randn(5, 5, generator=gen, dtype=F64, requires_grad=True)
    scale = torch.tensor(2.0, dtype=F64, requires_grad=True)
    groups = torch.tensor([0, 0, 1, 2, 2])

    def fn(sim: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return info_nce(sim, scale, None, groups, groups, 0.1, symmetric=symmetric, chunk_elements=10)

    assert torch.autograd.gradcheck(fn, (sim, scale))


def test_info_nce_with_far_apart_logits_is_finite(gen: torch.Generator) -> None:
    # logits thousands apart, as unnormalised CSD similarities give: every naive exp under- or overflows
    sim = -1000.0 * torch.rand(6, 6, generator=gen)
    sim.requires_grad_(True)
    loss = info_nce(sim, torch.tensor(10.0), symmetric=True)
    (grad,) = torch.autograd.grad(loss, sim)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    expected = (F.cross_entropy(10 * sim, torch.arange(6)) + F.cross_entropy(10 * sim.T, torch.arange(6))) / 2
    torch.testing.assert_close(loss, expected)


def test_group_ids_change_the_contrastive_loss(gen: torch.Generator) -> None:
    crit = MainCriterion(LossConfig(kl_weight=0.0), ModelConfig(n_components=2)).double()
    a, b = random_mixture(gen, 6, 2, 4), random_mixture(gen, 6, 2, 4)
    plain = crit(a, b)["contrastive"]
    distinct = crit(a, b, group_ids=torch.arange(6))["contrastive"]
    grouped = crit(a, b, group_ids=torch.tensor([0, 0, 1, 1, 2, 3]))["contrastive"]
    torch.testing.assert_close(distinct, plain)
    assert grouped < plain  # fewer negatives


def test_terms_are_weighted_into_the_total(gen: torch.Generator) -> None:
    cfg = LossConfig(entropy_weight=-0.3, kl_weight=0.01, sinkhorn_weight=0.5, label_smoothing=0.1, csd_tau=2.0,
                     uncertainty_nll_weight=0.2)
    crit = MainCriterion(cfg, ModelConfig(n_components=3)).double()
    a, b = random_mixture(gen, 5, 3, 4), random_mixture(gen, 5, 3, 4)
    out = crit(a, b)
    assert set(out) == {"contrastive", "entropy", "kl", "uncertainty_nll", "sinkhorn", "sinkhorn_iters",
                        "logit_scale", "loss"}
    assert not out["sinkhorn_iters"].requires_grad and 0 <= out["sinkhorn_iters"].item() <= cfg.sinkhorn_max_iters
    nll = torch.cat([mixture_match_nll(a, mixture_mean(b)), mixture_match_nll(b, mixture_mean(a))]).mean()
    torch.testing.assert_close(out["uncertainty_nll"], nll)
    total = (out["contrastive"] - 0.3 * out["entropy"] + 0.01 * out["kl"] + 0.5 * out["sinkhorn"]
             + 0.2 * out["uncertainty_nll"])
    torch.testing.assert_close(out["loss"], total)
    out["loss"].backward()
    for t in (a.logits, a.mu, a.logvar, b.logits, b.mu, b.logvar, crit.log_logit_scale):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_uncertainty_temperature_divides_each_querys_row_by_its_variance(gen: torch.Generator) -> None:
    a, b = random_mixture(gen, 6, 2, 4), random_mixture(gen, 6, 2, 4)
    cfg = LossConfig(kl_weight=0.0, uncertainty_temperature=2.0)
    crit = MainCriterion(cfg, ModelConfig(n_components=2)).double()
    out = crit(a, b)["contrastive"]
    sim, scale, target = csd_similarity(a, b), crit.logit_scale(), torch.arange(6)
    rows_a = sim / (1 + 2.0 * mixture_total_variance(a))[:, None]
    rows_b = sim.T / (1 + 2.0 * mixture_total_variance(b))[:, None]
    expected = (F.cross_entropy(scale * rows_a, target) + F.cross_entropy(scale * rows_b, target)) / 2
    torch.testing.assert_close(out, expected)
    local = MainCriterion(replace(cfg, local_loss=True), ModelConfig(n_components=2)).double()
    torch.testing.assert_close(local(a, b)["contrastive"], out)


def test_uncertainty_temperature_needs_mixture_variances_under_infonce() -> None:
    for model, loss in [(ModelConfig(geometry="cone"), LossConfig(uncertainty_temperature=1.0)),
                        (ModelConfig(geometry="point", n_components=1), LossConfig(uncertainty_temperature=1.0)),
                        (ModelConfig(), LossConfig(uncertainty_temperature=1.0, objective="sigmoid"))]:
        with pytest.raises(ValueError, match="uncertainty_temperature"):
            MainCriterion(loss, model)


def test_local_loss_on_one_rank_equals_the_full_loss(gen: torch.Generator) -> None:
    a, b = random_mixture(gen, 7, 2, 3), random_mixture(gen, 7, 2, 3)
    groups = torch.tensor([0, 1, 1, 2, 3, 3, 4])
    full = MainCriterion(LossConfig(label_smoothing=0.1), ModelConfig(n_components=2)).double()
    local = MainCriterion(LossConfig(label_smoothing=0.1, local_loss=True), ModelConfig(n_components=2)).double()
    torch.testing.assert_close(local(a, b, groups)["loss"], full(a, b, groups)["loss"])


@pytest.mark.parametrize("similarity", ["csd", "product_kernel"])
def test_mixture_similarities_train(gen: torch.Generator, similarity: str) -> None:
    crit = MainCriterion(LossConfig(similarity=similarity), ModelConfig(n_components=2))
    a, b = random_mixture(gen, 4, 2, 3), random_mixture(gen, 4, 2, 3)
    a, b = a.map(lambda t: t.detach().float().requires_grad_()), b.map(lambda t: t.detach().float().requires_grad_())
    out = crit(a, b)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and torch.isfinite(a.mu.grad).all() and a.mu.grad.abs().sum() > 0


def test_inconsistent_configs_are_refused(gen: torch.Generator) -> None:
    with pytest.raises(ValueError, match="needs variances"):
        MainCriterion(LossConfig(similarity="product_kernel"), ModelConfig(geometry="point"))
    with pytest.raises(ValueError, match="one component"):
        MainCriterion(LossConfig(similarity="point"), ModelConfig(geometry="mixture", n_components=4))
    crit = MainCriterion(LossConfig(), ModelConfig(geometry="cone"))
    with pytest.raises(TypeError, match="ConeParams"):
        crit(random_mixture(gen, 2, 1, 3), random_mixture(gen, 2, 1, 3))


# ---------------------------------------------------------------------------------------------------------------------
# Sinkhorn
# ---------------------------------------------------------------------------------------------------------------------


def reference_costs(a: MixtureParams, b: MixtureParams) -> list[np.ndarray]:
    """W2² between diagonal Gaussians, by a loop, in numpy."""
    mu_a, mu_b = a.mu.detach().numpy(), b.mu.detach().numpy()
    sd_a, sd_b = np.exp(0.5 * a.logvar.detach().numpy()), np.exp(0.5 * b.logvar.detach().numpy())
    return [
        np.array(
            [
                [
                    ((mu_a[i, k] - mu_b[i, m]) ** 2).sum() + ((sd_a[i, k] - sd_b[i, m]) ** 2).sum()
                    for m in range(mu_b.shape[1])
                ]
                for k in range(mu_a.shape[1])
            ]
        )
        for i in range(mu_a.shape[0])
    ]


def test_sinkhorn_loss_equals_pot_sinkhorn2(gen: torch.Generator) -> None:
    a, b = random_mixture(gen, 6, 4, 3), random_mixture(gen, 6, 3, 3)
    reg = 0.5
    loss = SinkhornOTLoss(reg=reg, max_iters=200, tol=1e-12)
    got = loss.pair_costs(a, b)
    wa, wb = a.weights().detach().numpy(), b.weights().detach().numpy()
    expected = [
        ot.sinkhorn2(wa[i], wb[i], cost, reg, stopThr=1e-13, numItermax=100_000)
        for i, cost in enumerate(reference_costs(a, b))
    ]
    np.testing.assert_allclose(got.detach().numpy(), np.array(expected), rtol=1e-8)
    torch.testing.assert_close(loss(a, b), got.mean())


def test_sinkhorn_loss_approaches_emd_as_regularisation_vanishes(gen: torch.Generator) -> None:
    a, b = random_mixture(gen, 4, 4, 3), random_mixture(gen, 4, 4, 3)
    costs = reference_costs(a, b)
    wa, wb = a.weights().detach().numpy(), b.weights().detach().numpy()
    emd = np.array([ot.emd2(wa[i], wb[i], c) for i, c in enumerate(costs)])
    scale = max(float(c.max()) for c in costs)
    gaps = []
    for reg in (0.1, 0.01, 0.001):
        value = SinkhornOTLoss(reg=reg * scale, max_iters=500, tol=1e-10).pair_costs(a, b).detach().numpy()
        gaps.append(np.abs(value - emd).max() / scale)
    # the entropic plan's cost falls towards the optimum as reg does, within reg · log(K·K') of it
    assert all(later <= earlier + 1e-9 for earlier, later in zip(gaps, gaps[1:], strict=False)), gaps
    assert gaps[-1] < 0.001 * math.log(16) and gaps[0] > 10 * gaps[-1], gaps


def test_sinkhorn_gradcheck(gen: torch.Generator) -> None:
    a, b = random_mixture(gen, 2, 3, 2), random_mixture(gen, 2, 2, 2)
    loss = SinkhornOTLoss(reg=1.0, max_iters=200, tol=1e-13)  # converged: the implicit gradient is exact

    def fn(*t: torch.Tensor) -> torch.Tensor:
        return loss.pair_costs(MixtureParams(*t[:3]), MixtureParams(*t[3:]))

    assert torch.autograd.gradcheck(fn, (a.logits, a.mu, a.logvar, b.logits, b.mu, b.logvar))


def test_sinkhorn_of_identical_single_gaussians_is_zero(gen: torch.Generator) -> None:
    a = random_mixture(gen, 3, 1, 4)
    torch.testing.assert_close(SinkhornOTLoss()(a, a), torch.tensor(0.0, dtype=F64), atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------------------------------------------------
# cones
# ---------------------------------------------------------------------------------------------------------------------


def nested_cones() -> tuple[ConeParams, ConeParams, Hierarchy]:
    """Two rows; each item inside its caption, each caption inside two more general levels (general ⊇ specific)."""

    def cone(deg: list[float], theta: list[float]) -> ConeParams:
        r = torch.tensor(deg, dtype=F64).deg2rad()
        return ConeParams(torch.stack([r.cos(), r.sin()], -1), torch.tensor(theta, dtype=F64))

    items = cone([0.0, 100.0], [0.05, 0.05])
    captions = cone([5.0, 95.0], [0.3, 0.3])
    general = cone([10.0, 20.0, 90.0, 80.0], [0.6, 1.0, 0.6, 1.0])
    hierarchy = Hierarchy(general, owner=torch.tensor([0, 0, 1, 1]), parent=torch.tensor([1, -1, 3, -1]))
    return items, captions, hierarchy


def test_entailment_is_zero_for_a_consistent_hierarchy() -> None:
    items, captions, hierarchy = nested_cones()
    assert entailment_loss(captions, items, hierarchy).item() == 0.0


def test_entailment_counts_each_violation() -> None:
    items, captions, hierarchy = nested_cones()
    # swap the levels of row 0: the most general description becomes the narrower one
    swapped = Hierarchy(hierarchy.general, hierarchy.owner, parent=torch.tensor([-1, 0, 3, -1]))
    child, parent = hierarchy.general.map(lambda t: t[1:2]), hierarchy.general.map(lambda t: t[0:1])
    violation = containment(parent, child)[0]
    assert violation > 0
    # the mean over the two parent links, of which row 1's still holds
    torch.testing.assert_close(entailment_loss(captions, items, swapped), violation / 2)
    # an item outside its caption
    far = ConeParams(items.direction.flip(0), items.theta)
    torch.testing.assert_close(entailment_loss(captions, far, hierarchy), containment(captions, far).mean())
    assert containment(captions, far).min() > 0


def test_cone_criterion_with_hierarchy(gen: torch.Generator) -> None:
    cfg = LossConfig(entailment_weight=0.2, entailment_margins=(0.0,), aperture_weight=0.0)  # entailment alone
    crit = MainCriterion(cfg, ModelConfig(geometry="cone")).double()
    a, b = random_cones(gen, 4, 5), random_cones(gen, 4, 5)
    general = random_cones(gen, 6, 5)
    hierarchy = Hierarchy(
        general, owner=torch.tensor([0, 0, 1, 2, 3, 3]), parent=torch.tensor([1, -1, -1, -1, 5, -1])
    )
    out = crit(a, b, hierarchy=hierarchy)
    assert set(out) == {"contrastive", "entailment", "logit_scale", "loss"}
    torch.testing.assert_close(out["loss"], out["contrastive"] + 0.2 * out["entailment"])
    torch.testing.assert_close(out["entailment"], entailment_loss(b, a, hierarchy))
    out["loss"].backward()
    assert general.theta.grad is not None and general.theta.grad.abs().sum() > 0
    assert set(crit(a, b)) == {"contrastive", "logit_scale", "loss"}  # no hierarchy, no entailment term


def test_the_default_similarity_follows_the_geometry() -> None:
    """`loss.similarity: auto`: the point geometry alone is CLIP (cosine logits), a mixture scores with CSD."""
    from multigeometry.geometry.mixture import csd_similarity

    a = MixtureParams.point(F.normalize(torch.randn(4, 8), dim=-1))
    b = MixtureParams.point(F.normalize(torch.randn(5, 8), dim=-1))
    point = MainCriterion(LossConfig(), ModelConfig(geometry="point"))
    assert point.similarity.kind == "point"
    torch.testing.assert_close(point.similarity(a, b), a.mu[:, 0] @ b.mu[:, 0].T)
    mixture = MainCriterion(LossConfig(), ModelConfig(geometry="mixture"))
    assert mixture.similarity.kind == "csd"
    torch.testing.assert_close(mixture.similarity(a, b), csd_similarity(a, b))
