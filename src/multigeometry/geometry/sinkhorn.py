"""Entropic optimal transport between small discrete measures, batched: a log-domain Sinkhorn–Newton solver.

For a batch of costs C (B, n, m), marginals a (B, n) and b (B, m) and a regularisation ε it finds the plan
T* = argmin ⟨T, C⟩ − ε H(T) with T1 = a, Tᵀ1 = b, and returns ⟨T*, C⟩ — what `ot.sinkhorn2` returns.

Plain Sinkhorn alternates exact row and column updates of the potentials, and on badly scaled costs (C/ε in the
hundreds) it needs thousands of iterations to bring the marginals within 1e-4 (BENCHMARKS.md, "Loss"). Here the row
update stays Sinkhorn's (log domain: the rows are always exact), but the column potentials g take Newton steps on
the concave semi-dual S(g) = Σ a_i f_i(g) + Σ b_j g_j, with a backtracking line search (Brauer et al., "A
Sinkhorn–Newton method for entropic optimal transport", 2017). With n, m ≤ 8 a Newton system is a few dozen flops
per pair, and 20–40 steps reach 1e-4 on costs that plain Sinkhorn needs thousands of iterations for.

The solver runs without autograd, in float64; the gradient comes from implicit differentiation of the plan's
optimality conditions at the point reached (`_plan_cost_backward`), not from the iterations, so memory does not grow
with them. The plan reached is the exact entropic plan for its own marginals (T1, Tᵀ1), and the gradient is exact for
that problem.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Armijo's sufficient-increase constant and the most halvings of a step.
ARMIJO = 1e-4
MAX_HALVINGS = 12
# Changes of the semi-dual's value below this fraction of it are rounding (float64).
ROUNDING = 1e-12
# The most a potential moves in one Newton step, in units of ε (a factor e^MAX_MOVE on a plan entry).
MAX_MOVE = 8.0
# Added to the Newton systems' diagonal: columns whose mass has (numerically) vanished would make them singular.
RIDGE = 1e-12
# The marginal error each stage of the annealed regularisation is solved to.
STAGE_TOL = 1e-2


def _row_potentials(cost: Tensor, g: Tensor, log_b: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Sinkhorn's row update in the log domain: f_i = −ε log Σ_j b_j exp((g_j − C_ij)/ε), and log P_ij, the rows of
    the plan T = diag(a) P (each row of P sums to 1)."""
    z = log_b[:, None, :] + (g[:, None, :] - cost) / eps
    lse = torch.logsumexp(z, 2)
    return -eps * lse, z - lse[:, :, None]


def _newton_direction(a: Tensor, gradient: Tensor, p: Tensor, eps: float) -> Tensor:
    """Newton's ascent direction d for the semi-dual in g: −∇²S · d = ∇S, with ∇S = b − Tᵀ1 and
    −ε∇²S = diag(Tᵀ1) − Tᵀ diag(1/a) T = diag(Tᵀ1) − Tᵀ P. Its null direction (g + const, which ∇S is orthogonal
    to) is made regular by adding 11ᵀ/m."""
    t = p * a[:, :, None]
    c = t.sum(1)
    hess = torch.diag_embed(c + RIDGE) - t.transpose(1, 2) @ p + 1.0 / p.shape[-1]
    return torch.linalg.solve(hess, (eps * gradient).unsqueeze(-1)).squeeze(-1)


def column_error(a: Tensor, b: Tensor, log_p: Tensor) -> Tensor:
    """Σ_j |(Tᵀ1)_j − b_j| of each pair, (B,): the plan's marginal error (its rows are exact)."""
    return (torch.einsum("bi,bij->bj", a, log_p.exp()) - b).abs().sum(-1)


@torch.no_grad()
def solve_potentials(
    cost: Tensor, a: Tensor, b: Tensor, eps: float, max_iters: int, tol: float
) -> tuple[Tensor, int]:
    """log P (B, n, m), the rows of the entropic plan T = diag(a) P, and the Newton steps taken: until every pair's
    marginal error is below `tol` or `max_iters` steps.

    Far from its optimum the semi-dual of a badly scaled cost is nearly piecewise linear and Newton's steps overshoot,
    so the regularisation is annealed (ε-scaling): from the costs' spread down to `eps` by halves, each stage warm
    started from the last and solved to STAGE_TOL, where Newton's steps are already near their quadratic regime.
    """
    spread = float((cost.amax((1, 2)) - cost.amin((1, 2))).max()) if cost.numel() else 0.0
    schedule = [eps]
    while schedule[-1] * 2 < spread:
        schedule.append(schedule[-1] * 2)
    g = torch.zeros_like(b)
    steps = 0
    for stage_eps in reversed(schedule[1:]):
        g, _, _, steps = _newton(cost, a, b, g, stage_eps, max(tol, STAGE_TOL), steps, max_iters)
    _, log_p, _, steps = _newton(cost, a, b, g, eps, tol, steps, max_iters)
    return log_p, steps


def _newton(
    cost: Tensor, a: Tensor, b: Tensor, g: Tensor, eps: float, tol: float, steps: int, max_steps: int
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Newton steps on the semi-dual from `g` until every pair's marginal error is below `tol` or `steps` reaches
    `max_steps`; pairs already within `tol` take no further steps. Returns g, log P, the errors and `steps`."""
    log_b = b.log()
    f, log_p = _row_potentials(cost, g, log_b, eps)
    value = (a * f).sum(-1) + (b * g).sum(-1)
    err = column_error(a, b, log_p)
    while steps < max_steps and bool((err >= tol).any()):
        p = log_p.exp()
        gradient = b - torch.einsum("bi,bij->bj", a, p)  # ∇S
        d = _newton_direction(a, gradient, p, eps) * (err >= tol).to(cost.dtype)[:, None]
        # A trust region: no potential moves by more than MAX_MOVE·ε at once. Where the plan nearly splits into blocks
        # the Hessian is near singular and the full step, a linearisation of exponentials, overshoots by orders.
        step = (MAX_MOVE * eps / d.abs().amax(-1).clamp_min(1e-300)).clamp(max=1.0)
        slope = (gradient * d).sum(-1)
        for _ in range(MAX_HALVINGS):
            g_new = g + step[:, None] * d
            f_new, log_p_new = _row_potentials(cost, g_new, log_b, eps)
            value_new = (a * f_new).sum(-1) + (b * g_new).sum(-1)
            err_new = column_error(a, b, log_p_new)
            # Near the optimum S changes by less than its rounding error: there a step that lowers the marginal
            # error is taken.
            flat = (value_new - value).abs() <= ROUNDING * value.abs().clamp_min(1.0)
            ok = (value_new >= value + ARMIJO * step * slope) | (flat & (err_new < err))
            if bool(ok.all()):
                break
            step = torch.where(ok, step, step / 2)
        else:
            # Where Newton's step fails (a column that has lost its mass makes its system near singular), Sinkhorn's
            # exact column update, which never lowers S, is taken instead.
            sinkhorn_g = -eps * torch.logsumexp(a.log()[:, :, None] + (f[:, :, None] - cost) / eps, 1)
            g_new = torch.where(ok[:, None], g_new, sinkhorn_g)
            f_new, log_p_new = _row_potentials(cost, g_new, log_b, eps)
            value_new = (a * f_new).sum(-1) + (b * g_new).sum(-1)
            err_new = column_error(a, b, log_p_new)
        g, f, log_p, value, err = g_new, f_new, log_p_new, value_new, err_new
        steps += 1
    return g, log_p, err, steps


class _EntropicPlanCost(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx, cost: Tensor, a: Tensor, b: Tensor, eps: float, max_iters: int, tol: float
    ) -> tuple[Tensor, Tensor]:
        c64, a64, b64 = cost.double(), a.double(), b.double()
        a64, b64 = a64 / a64.sum(-1, keepdim=True), b64 / b64.sum(-1, keepdim=True)
        log_p, steps = solve_potentials(c64, a64, b64, eps, max_iters, tol)
        plan = log_p.exp() * a64[:, :, None]
        ctx.save_for_backward(c64, plan)
        ctx.eps, ctx.dtypes = eps, (cost.dtype, a.dtype, b.dtype)
        steps_t = torch.tensor(steps, device=cost.device)
        ctx.mark_non_differentiable(steps_t)
        return (plan * c64).sum((1, 2)).to(cost.dtype), steps_t

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor, _grad_steps: Tensor | None) -> tuple:  # type: ignore[override]
        cost, plan = ctx.saved_tensors
        d_cost, d_a, d_b = _plan_cost_backward(cost, plan, ctx.eps, grad.double())
        dtype_c, dtype_a, dtype_b = ctx.dtypes
        return d_cost.to(dtype_c), d_a.to(dtype_a), d_b.to(dtype_b), None, None, None


def _plan_cost_backward(cost: Tensor, plan: Tensor, eps: float, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of L = ⟨T, C⟩ with respect to C, a and b, T the entropic plan with marginals a = T1, b = Tᵀ1.

    With T_ij = exp((f_i + g_j − C_ij)/ε), differentiating the marginal constraints gives
    H [df; dg] = ε [da; db] + [rows of T ⊙ dC; columns of T ⊙ dC], H = [[diag(a), T], [Tᵀ, diag(b)]], and
    dL = ⟨T ⊙ (1 − C/ε), dC⟩ + [r; c]·[df; dg]/ε with r, c the rows and columns of T ⊙ C. With the adjoint
    H [p; q] = [r; c]/ε: ∂L/∂C = T ⊙ (1 − C/ε + p_i + q_j), ∂L/∂a = ε p, ∂L/∂b = ε q. H is singular along
    (1, −1) (the potentials' shared constant), which the right-hand side is orthogonal to; adding that direction's
    outer product makes the system regular without changing its solution.
    """
    n, m = plan.shape[1:]
    weighted = plan * cost
    rhs = torch.cat([weighted.sum(2), weighted.sum(1)], 1) / eps
    sign = torch.cat([plan.new_ones(n), -plan.new_ones(m)])
    h = torch.cat(
        [
            torch.cat([torch.diag_embed(plan.sum(2)), plan], 2),
            torch.cat([plan.transpose(1, 2), torch.diag_embed(plan.sum(1))], 2),
        ],
        1,
    ) + sign[:, None] * sign[None, :] / (n + m)
    pq = torch.linalg.solve(h, rhs.unsqueeze(-1)).squeeze(-1)
    p, q = pq[:, :n], pq[:, n:]
    g = grad[:, None, None]
    d_cost = g * plan * (1.0 - cost / eps + p[:, :, None] + q[:, None, :])
    return d_cost, grad[:, None] * eps * p, grad[:, None] * eps * q


def entropic_ot_cost(
    cost: Tensor, a: Tensor, b: Tensor, eps: float, max_iters: int = 200, tol: float = 1e-6
) -> tuple[Tensor, int]:
    """⟨T*, C⟩ of the entropic plan of each pair (B,), differentiable in cost, a and b, and the Newton steps used.

    Stops when every pair's marginal error Σ_j |(Tᵀ1)_j − b_j| is below `tol`, or after `max_iters` steps.
    """
    if cost.dim() != 3 or a.shape != cost.shape[:2] or b.shape != (cost.shape[0], cost.shape[2]):
        raise ValueError(
            f"expected cost (B, n, m), a (B, n), b (B, m); got {tuple(cost.shape)}, {tuple(a.shape)}, {tuple(b.shape)}"
        )
    if not eps > 0:
        raise ValueError(f"the regularisation must be positive, got {eps}")
    if max_iters < 1 or not tol > 0:
        raise ValueError(f"need max_iters >= 1 and tol > 0, got {max_iters} and {tol}")
    # Rounded marginals (float32 softmax weights) do not have equal sums, and no plan meets both: renormalised.
    a, b = a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)
    value, steps = _EntropicPlanCost.apply(cost, a, b, float(eps), int(max_iters), float(tol))
    return value, int(steps)
