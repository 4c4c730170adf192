"""KL divergences between diagonal Gaussians and, approximately, between their mixtures: the containment score of
mixtures (a general distribution should put mass wherever a specific one has it).

For Gaussian mixtures the KL has no closed form; Hershey & Olsen's (2007) variational approximation
D(f‖g) = Σ_a π_a log(Σ_a' π_a' e^{−KL(f_a‖f_a')} / Σ_b ω_b e^{−KL(f_a‖g_b)}) is exact for single Gaussians and built
from matrix products over the components, as the similarities are.
"""

from __future__ import annotations

import torch
from torch import Tensor

from multigeometry.geometry.mixture import MixtureParams


def gaussian_kl_matrix(mu_p: Tensor, logvar_p: Tensor, mu_q: Tensor, logvar_q: Tensor) -> Tensor:
    """KL(N_p ‖ N_q) of every diagonal Gaussian p (P, D) to every q (Q, D) -> (P, Q), in float64 through matrix
    products (the expansion of (μ_q − μ_p)² cancels badly in float32)."""
    mu_p, logvar_p, mu_q, logvar_q = (t.to(torch.float64) for t in (mu_p, logvar_p, mu_q, logvar_q))
    var_p, inv_q = logvar_p.exp(), (-logvar_q).exp()
    quad = (var_p + mu_p.pow(2)) @ inv_q.T - 2.0 * mu_p @ (mu_q * inv_q).T + (mu_q.pow(2) * inv_q).sum(-1)[None, :]
    logdet = logvar_q.sum(-1)[None, :] - logvar_p.sum(-1)[:, None]
    return 0.5 * (quad + logdet - mu_p.shape[-1]).clamp_min(0.0)


def mixture_kl_approx(inner: MixtureParams, outer: MixtureParams) -> Tensor:
    """Hershey & Olsen's variational approximation of KL(inner_i ‖ outer_j) for all pairs -> (B_inner, B_outer)."""
    if inner.logvar is None or outer.logvar is None:
        raise ValueError("a mixture containment score needs variances (logvar is None: a point embedding)")
    bi, k, d = inner.mu.shape
    bo, k2, _ = outer.mu.shape
    log_pi = inner.log_weights().to(torch.float64)  # (Bi, K)
    log_om = outer.log_weights().to(torch.float64)  # (Bo, K')
    cross = gaussian_kl_matrix(
        inner.mu.reshape(bi * k, d), inner.logvar.reshape(bi * k, d),
        outer.mu.reshape(bo * k2, d), outer.logvar.reshape(bo * k2, d),
    ).view(bi, k, bo, k2)
    log_den = torch.logsumexp(log_om[None, None] - cross, dim=-1)  # (Bi, K, Bo)
    var = inner.logvar.to(torch.float64)
    mu = inner.mu.to(torch.float64)
    # KL between the components of one inner mixture, (Bi, K, K), elementwise (K is small)
    self_kl = 0.5 * (
        (var[:, :, None] - var[:, None, :]).exp()
        + (mu[:, None, :] - mu[:, :, None]).pow(2) * (-var[:, None, :]).exp()
        - 1.0
        + var[:, None, :]
        - var[:, :, None]
    ).sum(-1)
    log_num = torch.logsumexp(log_pi[:, None, :] - self_kl, dim=-1)  # (Bi, K)
    return (log_pi.exp()[:, :, None] * (log_num[:, :, None] - log_den)).sum(1)
