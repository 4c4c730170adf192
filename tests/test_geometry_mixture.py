from __future__ import annotations

import math
import secrets

import pytest
import torch
from torch.distributions import Categorical, MultivariateNormal, Normal

from multigeometry.geometry import (
    MixtureParams,
    block_lse_matmul,
    blockwise,
    bound_logvar,
    csd_similarity,
    gaussian_kl_to_standard,
    mixture_from_raw,
    mixture_kl_to_standard,
    mixture_match_nll,
    mixture_mean,
    mixture_total_variance,
    mixture_weight_entropy,
    paired_w2_cost,
    point_similarity,
    product_kernel_similarity,
)

F64 = torch.float64


@pytest.fixture
def gen() -> torch.Generator:
    seed = secrets.randbits(31)
    print(f"random seed {seed}")  # shown with the output of a failing test, to replay it
    torch.manual_seed(seed)  # the samplers of torch.distributions draw from the global generator
    return torch.Generator().manual_seed(seed)


def random_mixture(
    gen: torch.Generator, b: int, k: int, d: int, *, variance: bool = True, scale: float = 1.0, grad: bool = False
) -> MixtureParams:
    logits = torch.randn(b, k, generator=gen, dtype=F64)
    mu = scale * torch.randn(b, k, d, generator=gen, dtype=F64)
    logvar = torch.randn(b, k, d, generator=gen, dtype=F64) - 1.0 if variance else None
    for t in (logits, mu, logvar):
        if t is not None:
            t.requires_grad_(grad)
    return MixtureParams(logits, mu, logvar)


def brute_csd(a: MixtureParams, b: MixtureParams, tau: float) -> torch.Tensor:
    out = torch.empty(a.batch_size, b.batch_size, dtype=F64)
    wa, wb = torch.softmax(a.logits, -1), torch.softmax(b.logits, -1)
    va, vb = a.variances(), b.variances()
    for i in range(a.batch_size):
        for j in range(b.batch_size):
            total = 0.0
            for k in range(a.n_components):
                for m in range(b.n_components):
                    csd = ((a.mu[i, k] - b.mu[j, m]) ** 2).sum() + va[i, k].sum() + vb[j, m].sum()
                    total = total + wa[i, k] * wb[j, m] * torch.exp(-csd / tau)
            out[i, j] = torch.log(total)
    return out


@pytest.mark.parametrize(("k", "k2", "variance"), [(1, 1, True), (3, 2, True), (4, 4, False), (1, 3, True)])
def test_csd_equals_brute_force_loop(gen: torch.Generator, k: int, k2: int, variance: bool) -> None:
    a = random_mixture(gen, 7, k, 5, variance=variance)
    b = random_mixture(gen, 5, k2, 5, variance=variance)
    tau = 0.3 + torch.rand(1, generator=gen).item()
    expected = brute_csd(a, b, tau)
    # A tiny chunk forces many row chunks; the default takes all rows at once.
    for chunk in (1, 1 << 22):
        got = csd_similarity(a, b, tau, chunk_elements=chunk)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_csd_single_component_is_pcme_distance(gen: torch.Generator) -> None:
    a, b = random_mixture(gen, 4, 1, 6), random_mixture(gen, 3, 1, 6)
    csd = torch.cdist(a.mu[:, 0], b.mu[:, 0]) ** 2 + a.variances().sum((1, 2))[:, None] + b.variances().sum((1, 2))
    torch.testing.assert_close(csd_similarity(a, b, tau=2.0), -csd / 2.0)


def test_csd_far_apart_mixtures_stay_finite(gen: torch.Generator) -> None:
    # Squared distances in the tens of thousands: every exp underflows unless the log-sum-exp is shifted.
    a = random_mixture(gen, 6, 3, 32, scale=30.0)
    b = random_mixture(gen, 6, 3, 32, scale=30.0)
    s64 = csd_similarity(a, b, tau=0.5)
    assert torch.isfinite(s64).all()
    torch.testing.assert_close(s64, brute_csd_log_domain(a, b, 0.5), rtol=1e-12, atol=1e-9)
    s32 = csd_similarity(a.map(lambda t: t.float()), b.map(lambda t: t.float()), tau=0.5)
    assert s32.dtype == torch.float32 and torch.isfinite(s32).all()
    torch.testing.assert_close(s32.double(), s64, rtol=1e-4, atol=0.5)


def brute_csd_log_domain(a: MixtureParams, b: MixtureParams, tau: float) -> torch.Tensor:
    la, lb = a.log_weights(), b.log_weights()
    va, vb = a.variances().sum(-1), b.variances().sum(-1)
    out = torch.empty(a.batch_size, b.batch_size, dtype=F64)
    for i in range(a.batch_size):
        for j in range(b.batch_size):
            d2 = ((a.mu[i][:, None, :] - b.mu[j][None, :, :]) ** 2).sum(-1)
            terms = la[i][:, None] + lb[j][None, :] - (d2 + va[i][:, None] + vb[j][None, :]) / tau
            out[i, j] = torch.logsumexp(terms.flatten(), 0)
    return out


def test_csd_gradcheck(gen: torch.Generator) -> None:
    a = random_mixture(gen, 4, 3, 3, grad=True)
    b = random_mixture(gen, 3, 2, 3, grad=True)

    def fn(*t: torch.Tensor) -> torch.Tensor:
        return csd_similarity(MixtureParams(*t[:3]), MixtureParams(*t[3:]), tau=0.7, chunk_elements=1)

    assert torch.autograd.gradcheck(fn, (a.logits, a.mu, a.logvar, b.logits, b.mu, b.logvar))


# chunk_elements 1: a chunk a row; 1000: the whole product (810) in one chunk. The forward pass keeps each chunk's
# softmax weights for the backward pass unless KEEP_WEIGHTS is off or the product (810) is over KEEP_WEIGHTS_ELEMENTS,
# where the backward pass recomputes them; no plain-autograd path for small products
@pytest.mark.parametrize("chunk_elements", [1, 1000])
@pytest.mark.parametrize(("keep", "keep_elements"), [(True, 810), (False, 810), (True, 809)])
def test_block_lse_matmul_matches_materialised_logsumexp(gen: torch.Generator, monkeypatch, chunk_elements: int,
                                                         keep: bool, keep_elements: int) -> None:
    monkeypatch.setattr(blockwise, "KEEP_WEIGHTS", keep)
    monkeypatch.setattr(blockwise, "KEEP_WEIGHTS_ELEMENTS", keep_elements)
    monkeypatch.setattr(blockwise, "SMALL_PRODUCT_ELEMENTS", 0)
    x = 10 * torch.randn(9, 3, 4, generator=gen, dtype=F64, requires_grad=True)
    y = 10 * torch.randn(6, 5, 4, generator=gen, dtype=F64, requires_grad=True)
    full = torch.einsum("ike,jle->ikjl", x, y).logsumexp(dim=(1, 3))
    got = block_lse_matmul(x, y, chunk_elements=chunk_elements)
    kept = got.grad_fn.saved_tensors[3:]  # the path taken: every chunk's weights, or none
    assert len(kept) == ((9 if chunk_elements == 1 else 1) if keep and keep_elements == 810 else 0)
    torch.testing.assert_close(got, full)
    w = torch.randn(9, 6, generator=gen, dtype=F64)
    gx, gy = torch.autograd.grad((full * w).sum(), (x, y))
    hx, hy = torch.autograd.grad((got * w).sum(), (x, y))
    torch.testing.assert_close(hx, gx)
    torch.testing.assert_close(hy, gy)
    with torch.no_grad():
        torch.testing.assert_close(block_lse_matmul(x, y), full)


def test_point_similarity_is_cosine(gen: torch.Generator) -> None:
    a = MixtureParams.point(torch.randn(5, 8, generator=gen, dtype=F64))
    b = MixtureParams.point(torch.randn(4, 8, generator=gen, dtype=F64))
    expected = torch.tensor(
        [[torch.nn.functional.cosine_similarity(u, v, dim=0).item() for v in b.mu[:, 0]] for u in a.mu[:, 0]],
        dtype=F64,
    )
    torch.testing.assert_close(point_similarity(a, b), expected)
    with pytest.raises(ValueError, match="one component"):
        point_similarity(random_mixture(gen, 2, 2, 8), b)


def brute_product_kernel(a: MixtureParams, b: MixtureParams) -> torch.Tensor:
    out = torch.empty(a.batch_size, b.batch_size, dtype=F64)
    wa, wb = a.weights(), b.weights()
    va, vb = a.variances(), b.variances()
    for i in range(a.batch_size):
        for j in range(b.batch_size):
            total = 0.0
            for k in range(a.n_components):
                for m in range(b.n_components):
                    gauss = MultivariateNormal(b.mu[j, m], covariance_matrix=torch.diag(va[i, k] + vb[j, m]))
                    total = total + wa[i, k] * wb[j, m] * gauss.log_prob(a.mu[i, k]).exp()
            out[i, j] = torch.log(total)
    return out


def test_product_kernel_equals_brute_force_loop(gen: torch.Generator) -> None:
    a, b = random_mixture(gen, 5, 3, 4), random_mixture(gen, 4, 2, 4)
    expected = brute_product_kernel(a, b)
    for max_elements in (1, 40, 1 << 22):  # one pair per tile, a few pairs per tile, all at once
        torch.testing.assert_close(product_kernel_similarity(a, b, max_elements), expected, rtol=1e-10, atol=1e-10)


def test_product_kernel_is_the_integral_of_the_product(gen: torch.Generator) -> None:
    # ∫ p q = E_{x~p}[q(x)], estimated by sampling p, in 2-D.
    a, b = random_mixture(gen, 1, 2, 2), random_mixture(gen, 1, 3, 2)
    n = 200_000
    comp = Categorical(logits=a.logits[0]).sample((n,))
    x = Normal(a.mu[0][comp], a.variances()[0][comp].sqrt()).sample()
    q = (b.weights()[0] * Normal(b.mu[0], b.variances()[0].sqrt()).log_prob(x[:, None, :]).sum(-1).exp()).sum(-1)
    estimate, stderr = q.mean(), q.std() / math.sqrt(n)
    exact = product_kernel_similarity(a, b)[0, 0].exp()
    assert abs(exact - estimate) < 5 * stderr + 1e-12, (exact, estimate, stderr)


def test_product_kernel_gradcheck(gen: torch.Generator) -> None:
    a = random_mixture(gen, 3, 2, 2, grad=True)
    b = random_mixture(gen, 2, 2, 2, grad=True)

    def fn(*t: torch.Tensor) -> torch.Tensor:  # tiles of one pair, each recomputed in the backward pass
        return product_kernel_similarity(MixtureParams(*t[:3]), MixtureParams(*t[3:]), max_elements=1)

    assert torch.autograd.gradcheck(fn, (a.logits, a.mu, a.logvar, b.logits, b.mu, b.logvar))


def test_weight_entropy_matches_monte_carlo(gen: torch.Generator) -> None:
    logits = 2 * torch.randn(3, 5, generator=gen, dtype=F64)
    exact = mixture_weight_entropy(logits)
    n = 200_000
    dist = Categorical(logits=logits)
    samples = -dist.log_prob(dist.sample((n,)))  # (n, 3)
    stderr = samples.std(0) / math.sqrt(n)
    assert (exact - samples.mean(0)).abs().le(5 * stderr + 1e-12).all(), (exact, samples.mean(0))
    torch.testing.assert_close(
        mixture_weight_entropy(torch.zeros(2, 4, dtype=F64)), torch.full((2,), math.log(4), dtype=F64)
    )
    torch.testing.assert_close(mixture_weight_entropy(torch.zeros(2, 1, dtype=F64)), torch.zeros(2, dtype=F64))


def test_total_variance_matches_monte_carlo(gen: torch.Generator) -> None:
    p = random_mixture(gen, 2, 3, 4)
    exact = mixture_total_variance(p)
    n = 200_000
    for i in range(p.batch_size):
        comp = Categorical(logits=p.logits[i]).sample((n,))
        x = Normal(p.mu[i][comp], p.variances()[i][comp].sqrt()).sample()
        spread = (x - x.mean(0)).pow(2).sum(-1)  # its mean is the trace of the covariance
        stderr = spread.std() / math.sqrt(n)
        assert abs(spread.mean() - exact[i]) < 5 * stderr, (spread.mean(), exact[i], stderr)


def test_the_match_nll_teaches_the_spread_the_match_error(gen: torch.Generator) -> None:
    """Its minimum over a shared log-variance is at v = ‖μ̄ − m‖² / D, and only the variances get gradients."""
    p = random_mixture(gen, 3, 2, 5, grad=True)
    partner = torch.randn(3, 5, generator=gen, dtype=F64)
    nll = mixture_match_nll(p, partner)
    nll.sum().backward()
    assert p.mu.grad is None or torch.count_nonzero(p.mu.grad) == 0
    assert p.logvar.grad is not None and torch.count_nonzero(p.logvar.grad) > 0
    error = (mixture_mean(p) - partner).pow(2).sum(-1).detach()
    for i in range(3):
        best = error[i] / 5
        at = {}
        for factor in (0.5, 1.0, 2.0):
            q = MixtureParams(p.logits.detach()[i : i + 1], p.mu.detach()[i : i + 1],
                              torch.full_like(p.logvar.detach()[i : i + 1], math.log(best * factor)))
            at[factor] = float(mixture_match_nll(q, partner[i : i + 1])[0])
        assert at[1.0] < at[0.5] and at[1.0] < at[2.0], at
        assert at[1.0] == pytest.approx(0.5 * (math.log(best) + 1.0))
    with pytest.raises(ValueError, match="needs variances"):
        mixture_match_nll(MixtureParams.point(p.mu.detach()[:, 0]), partner)


def test_gaussian_kl_matches_monte_carlo(gen: torch.Generator) -> None:
    mu = torch.randn(3, 4, generator=gen, dtype=F64)
    logvar = torch.randn(3, 4, generator=gen, dtype=F64)
    exact = gaussian_kl_to_standard(mu, logvar)
    p, prior = Normal(mu, (0.5 * logvar).exp()), Normal(torch.zeros_like(mu), torch.ones_like(mu))
    x = p.sample((200_000,))
    samples = (p.log_prob(x) - prior.log_prob(x)).sum(-1)
    stderr = samples.std(0) / math.sqrt(x.shape[0])
    assert (exact - samples.mean(0)).abs().le(5 * stderr).all(), (exact, samples.mean(0))


def test_mixture_kl_bounds_the_monte_carlo_mixture_kl(gen: torch.Generator) -> None:
    p = random_mixture(gen, 2, 3, 3)
    bound = mixture_kl_to_standard(p)
    n = 200_000
    for i in range(p.batch_size):
        comp = Categorical(logits=p.logits[i]).sample((n,))
        std = p.variances()[i].sqrt()
        x = Normal(p.mu[i][comp], std[comp]).sample()
        log_p = (Normal(p.mu[i], std).log_prob(x[:, None, :]).sum(-1) + p.log_weights()[i]).logsumexp(-1)
        log_q = Normal(0.0, 1.0).log_prob(x).sum(-1)
        kl = (log_p - log_q).mean()
        stderr = (log_p - log_q).std() / math.sqrt(n)
        assert kl <= bound[i] + 5 * stderr, (kl, bound[i])
    single = random_mixture(gen, 2, 1, 3)
    torch.testing.assert_close(
        mixture_kl_to_standard(single), gaussian_kl_to_standard(single.mu[:, 0], single.logvar[:, 0])
    )


def test_kl_penalises_collapse_and_explosion_of_variances() -> None:
    mu = torch.zeros(1, 1, 4, dtype=F64)
    kl = [
        mixture_kl_to_standard(MixtureParams(torch.zeros(1, 1, dtype=F64), mu, torch.full_like(mu, v))).item()
        for v in (-8.0, 0.0, 8.0)
    ]
    assert kl[1] == 0.0 and kl[0] > 10 and kl[2] > 10


def test_bounded_log_variances() -> None:
    raw = torch.tensor([-1e4, -3.0, 0.0, 3.0, 1e4], dtype=F64)
    logvar = bound_logvar(raw, -9.0, 2.0)
    assert logvar.min() >= -9.0 and logvar.max() <= 2.0
    assert torch.all(logvar[1:] >= logvar[:-1]) and logvar[0] == -9.0 and logvar[-1] == 2.0
    p = mixture_from_raw(torch.zeros(2, 3), torch.zeros(2, 3, 4), torch.full((2, 3, 4), 50.0), -9.0, 2.0)
    assert torch.allclose(p.logvar, torch.full_like(p.logvar, 2.0))
    with pytest.raises(ValueError, match="logits"):
        MixtureParams(torch.zeros(2, 2), torch.zeros(2, 3, 4))


def test_paired_w2_cost_equals_loop(gen: torch.Generator) -> None:
    a, b = random_mixture(gen, 3, 2, 4), random_mixture(gen, 3, 3, 4)
    cost = paired_w2_cost(a, b)
    sa, sb = a.variances().sqrt(), b.variances().sqrt()
    for i in range(3):
        for k in range(2):
            for m in range(3):
                expected = ((a.mu[i, k] - b.mu[i, m]) ** 2).sum() + ((sa[i, k] - sb[i, m]) ** 2).sum()
                torch.testing.assert_close(cost[i, k, m], expected)
    point = MixtureParams.point(a.mu[:, 0])
    torch.testing.assert_close(paired_w2_cost(point, point), torch.zeros(3, 1, 1, dtype=F64), atol=1e-12, rtol=0)
