"""The entropic OT solver (`geometry.sinkhorn`) against `ot.sinkhorn2` run to convergence, on badly scaled costs."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch

from benchmarks.bench_sinkhorn import problem, reference
from multigeometry.geometry.mixture import MixtureParams
from multigeometry.geometry.sinkhorn import column_error, entropic_ot_cost, solve_potentials
from multigeometry.losses import SinkhornOTLoss

F64 = torch.float64


def badly_scaled(seed: int, b: int = 16, k: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Costs near 32 (spread ~ ±2) and uneven weights: with reg 0.05, C/reg ~ 640, where 50 plain Sinkhorn
    iterations were far off. The benchmark's problem."""
    return problem(b, k, seed)


@pytest.mark.parametrize("reg", [0.1, 0.05])
def test_matches_pot_on_badly_scaled_costs(reg: float) -> None:
    cost, a, b = badly_scaled(0)
    value, steps = entropic_ot_cost(cost, a, b, reg, max_iters=200, tol=1e-10)
    np.testing.assert_allclose(value.numpy(), reference(cost, a, b, reg), rtol=1e-8)
    assert 0 < steps < 200
    log_p, _ = solve_potentials(cost, a, b, reg, 200, 1e-10)
    plan = log_p.exp() * a[:, :, None]
    torch.testing.assert_close(plan.sum(2), a, atol=1e-12, rtol=0)
    torch.testing.assert_close(plan.sum(1), b, atol=1e-9, rtol=0)


def test_float32_inputs_match_pot_to_float32_precision() -> None:
    cost, a, b = badly_scaled(1)
    value, _ = entropic_ot_cost(cost.float(), a.float(), b.float(), 0.05)
    assert value.dtype == torch.float32
    a64, b64 = a.float().double(), b.float().double()  # the solver renormalises rounded weights: so does POT's input
    expected = reference(cost.float().double(), a64 / a64.sum(-1, keepdim=True), b64 / b64.sum(-1, keepdim=True), 0.05)
    np.testing.assert_allclose(value.double().numpy(), expected, rtol=1e-6)


def test_the_cap_is_honoured_and_reported() -> None:
    cost, a, b = badly_scaled(2)
    _, steps = entropic_ot_cost(cost, a, b, 0.05, max_iters=3, tol=1e-10)
    assert steps == 3
    log_p, _ = solve_potentials(cost, a, b, 0.05, 3, 1e-10)
    assert float(column_error(a, b, log_p).max()) > 1e-10  # stopped by the cap, not converged
    _, loose = entropic_ot_cost(cost, a, b, 0.05, max_iters=200, tol=1e-3)
    _, tight = entropic_ot_cost(cost, a, b, 0.05, max_iters=200, tol=1e-10)
    assert loose <= tight < 200


def test_gradients_match_finite_differences_on_badly_scaled_costs() -> None:
    cost, a, b = badly_scaled(3, b=2, k=3)
    cost = (cost / 8).requires_grad_()  # C/reg ~ 40: finite differences of step 1e-6 stay accurate
    la, lb = a.log().requires_grad_(), b.log().requires_grad_()

    def fn(c: torch.Tensor, la: torch.Tensor, lb: torch.Tensor) -> torch.Tensor:
        return entropic_ot_cost(c, la.softmax(-1), lb.softmax(-1), 0.1, max_iters=200, tol=1e-13)[0]

    assert torch.autograd.gradcheck(fn, (cost, la, lb), atol=1e-5, rtol=1e-4)


def test_gradients_match_pot_unrolled_to_convergence() -> None:
    gen = torch.Generator().manual_seed(4)
    cost = (3.0 * torch.rand(8, 4, 3, generator=gen, dtype=F64)).requires_grad_()
    a = torch.softmax(torch.randn(8, 4, generator=gen, dtype=F64), -1).requires_grad_()
    b = torch.softmax(torch.randn(8, 3, generator=gen, dtype=F64), -1).requires_grad_()
    ours = torch.autograd.grad(entropic_ot_cost(cost, a, b, 0.5, tol=1e-13)[0].sum(), (cost, a, b))
    res = ot.batch.solve_batch(cost, 0.5, a=a, b=b, max_iter=5000, tol=1e-13, method="log_sinkhorn", grad="autodiff")
    theirs = torch.autograd.grad(res.value_linear.sum(), (cost, a, b))
    torch.testing.assert_close(ours[0], theirs[0], atol=1e-8, rtol=1e-6)
    for mine, pots in zip(ours[1:], theirs[1:], strict=True):  # marginal gradients: up to a constant per pair
        torch.testing.assert_close(mine - mine.mean(-1, keepdim=True), pots - pots.mean(-1, keepdim=True),
                                   atol=1e-8, rtol=1e-6)


def test_loss_gradients_reach_every_parameter() -> None:
    gen = torch.Generator().manual_seed(5)
    a = MixtureParams(*(torch.randn(*s, generator=gen).requires_grad_() for s in [(6, 4), (6, 4, 8), (6, 4, 8)]))
    b = MixtureParams(*(torch.randn(*s, generator=gen).requires_grad_() for s in [(6, 4), (6, 4, 8), (6, 4, 8)]))
    loss = SinkhornOTLoss(reg=0.05)
    loss(a, b).backward()
    assert 0 < loss.last_iters <= loss.max_iters
    for t in (a.logits, a.mu, a.logvar, b.logits, b.mu, b.logvar):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs", [dict(reg=0.0), dict(max_iters=0), dict(tol=0.0), dict(tol=-1.0)])
def test_bad_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SinkhornOTLoss(**kwargs)
    cost, a, b = badly_scaled(6, b=2)
    settings = dict(eps=0.1, max_iters=10, tol=1e-6)
    settings.update({"eps" if k == "reg" else k: v for k, v in kwargs.items()})
    with pytest.raises(ValueError):
        entropic_ot_cost(cost, a, b, **settings)
