"""Diagonal Gaussian mixtures: representation, pairwise similarities, entropy, KL to a prior, transport costs.

A batch of B mixtures of K components in D dimensions is a `MixtureParams`: weight logits (B, K), means (B, K, D)
and log-variances (B, K, D), or `None` for point embeddings (no variance).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from multigeometry.geometry.blockwise import DEFAULT_CHUNK_ELEMENTS, block_lse_matmul

LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class MixtureParams:
    """B mixtures: logits (B, K) of the weights γ = softmax(logits), means mu (B, K, D), logvar (B, K, D) or None."""

    logits: Tensor
    mu: Tensor
    logvar: Tensor | None = None

    def __post_init__(self) -> None:
        if self.mu.dim() != 3:
            raise ValueError(f"mu must be (B, K, D), got shape {tuple(self.mu.shape)}")
        if tuple(self.logits.shape) != tuple(self.mu.shape[:2]):
            raise ValueError(f"logits must be (B, K) = {tuple(self.mu.shape[:2])}, got {tuple(self.logits.shape)}")
        if self.logvar is not None and self.logvar.shape != self.mu.shape:
            raise ValueError(f"logvar must have the shape of mu {tuple(self.mu.shape)}, got {tuple(self.logvar.shape)}")

    @classmethod
    def point(cls, mu: Tensor) -> MixtureParams:
        """One component, no variance: the point embeddings (B, D) of CLIP."""
        return cls(logits=mu.new_zeros(mu.shape[0], 1), mu=mu[:, None, :], logvar=None)

    @property
    def batch_size(self) -> int:
        return self.mu.shape[0]

    @property
    def n_components(self) -> int:
        return self.mu.shape[1]

    @property
    def dim(self) -> int:
        return self.mu.shape[2]

    def log_weights(self) -> Tensor:
        return F.log_softmax(self.logits, dim=-1)

    def weights(self) -> Tensor:
        return F.softmax(self.logits, dim=-1)

    def variances(self) -> Tensor:
        """σ² (B, K, D); zeros for a point embedding."""
        return torch.zeros_like(self.mu) if self.logvar is None else self.logvar.exp()

    def map(self, fn: Callable[[Tensor], Tensor]) -> MixtureParams:
        """Apply `fn` to every tensor (gathering across ranks, slicing, moving devices)."""
        return MixtureParams(fn(self.logits), fn(self.mu), None if self.logvar is None else fn(self.logvar))

    @property
    def device(self) -> torch.device:
        return self.mu.device

    def select(self, rows: Tensor) -> MixtureParams:
        """The rows `rows` (indices or a bool mask)."""
        return self.map(lambda t: t[rows])

    def to(self, device: torch.device | str) -> MixtureParams:
        return self.map(lambda t: t.to(device))

    @classmethod
    def cat(cls, parts: Sequence[MixtureParams]) -> MixtureParams:
        """The rows of all `parts` as one batch; they must agree on K, D and on having variances."""
        if any((p.logvar is None) != (parts[0].logvar is None) for p in parts):
            raise ValueError("cannot concatenate mixtures with and without variances")
        logvar = None if parts[0].logvar is None else torch.cat([p.logvar for p in parts])  # type: ignore[misc]
        return cls(torch.cat([p.logits for p in parts]), torch.cat([p.mu for p in parts]), logvar)


def bound_logvar(raw: Tensor, logvar_min: float, logvar_max: float) -> Tensor:
    """Map an unconstrained head output into [logvar_min, logvar_max] smoothly (a scaled sigmoid)."""
    return logvar_min + (logvar_max - logvar_min) * torch.sigmoid(raw)


def mixture_from_raw(
    logits: Tensor, mu: Tensor, raw_logvar: Tensor | None, logvar_min: float, logvar_max: float
) -> MixtureParams:
    """A `MixtureParams` from raw head outputs, log-variances bounded to [logvar_min, logvar_max]."""
    logvar = None if raw_logvar is None else bound_logvar(raw_logvar, logvar_min, logvar_max)
    return MixtureParams(logits=logits, mu=mu, logvar=logvar)


# ---------------------------------------------------------------------------------------------------------------------
# pairwise similarities: (B, ...) x (B', ...) -> (B, B')
# ---------------------------------------------------------------------------------------------------------------------


def csd_similarity(
    a: MixtureParams, b: MixtureParams, tau: float = 1.0, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
) -> Tensor:
    """s_ij = logsumexp_{k,l} [log γ_ik + log γ'_jl − CSD(ik, jl) / τ], CSD = ‖μ_ik − μ'_jl‖² + Σσ²_ik + Σσ'²_jl.

    With K = K' = 1 and equal weights this is −CSD/τ, PCME++'s closed-form sampled distance. The expansion
    ‖μ − μ'‖² = ‖μ‖² + ‖μ'‖² − 2 μ·μ' puts every term into one product of two (B·K)×(D+2) matrices:
    x_ik = [2μ_ik/τ, α_ik, 1] and y_jl = [μ'_jl, 1, β_jl] with α_ik = log γ_ik − (‖μ_ik‖² + Σσ²_ik)/τ.
    """
    x, y = _csd_factors(a, b, tau)
    return block_lse_matmul(x, y, chunk_elements)


def _csd_factors(a: MixtureParams, b: MixtureParams, tau: float) -> tuple[Tensor, Tensor]:
    dtype = torch.promote_types(torch.promote_types(a.mu.dtype, b.mu.dtype), torch.float32)

    def bias(p: MixtureParams) -> Tensor:
        mu = p.mu.to(dtype)
        spread = mu.pow(2).sum(-1)
        if p.logvar is not None:
            spread = spread + p.logvar.to(dtype).exp().sum(-1)
        return F.log_softmax(p.logits.to(dtype), dim=-1) - spread / tau

    # Zero columns up to a multiple of 8: matrix products with rows of D + 2 floats run 10-20% slower than with D.
    pad = -(a.dim + 2) % 8

    def cols(p: MixtureParams, n: int, value: float) -> Tensor:
        return p.mu.new_full((*p.mu.shape[:2], n), value, dtype=dtype)

    x = torch.cat([a.mu.to(dtype) * (2.0 / tau), bias(a)[..., None], cols(a, 1, 1.0), cols(a, pad, 0.0)], -1)
    y = torch.cat([b.mu.to(dtype), cols(b, 1, 1.0), bias(b)[..., None], cols(b, pad, 0.0)], -1)
    return x, y


def point_similarity(a: MixtureParams, b: MixtureParams) -> Tensor:
    """Cosine similarity of the single components' means — CLIP's logits before the scale."""
    if a.n_components != 1 or b.n_components != 1:
        raise ValueError(f"point similarity needs one component, got K={a.n_components} and K'={b.n_components}")
    return F.normalize(a.mu[:, 0], dim=-1) @ F.normalize(b.mu[:, 0], dim=-1).T


def product_kernel_similarity(a: MixtureParams, b: MixtureParams, max_elements: int = 1 << 22) -> Tensor:
    """s_ij = log ∫ p_i(x) q_j(x) dx, the log probability product kernel of two diagonal Gaussian mixtures.

    ∫ N(x; μ, Σ) N(x; μ', Σ') dx = N(μ; μ', Σ + Σ'), so s_ij = logsumexp_{k,l} [log γ_ik + log γ'_jl +
    log N(μ_ik; μ'_jl, diag(σ²_ik + σ'²_jl))]. The variance of each pair is different, so there is no matrix product:
    tiles of (i, j) pairs hold at most `max_elements` entries of the (i, k, j, l, d) tensor, and under autograd each
    tile is recomputed in the backward pass rather than kept, so memory stays at one tile.
    """
    if a.logvar is None or b.logvar is None:
        raise ValueError("the product kernel needs variances on both sides (logvar is None)")
    bsz, k, d = a.mu.shape
    bsz2, k2, _ = b.mu.shape
    per_pair = k * k2 * d
    tile_j = max(1, min(bsz2, max_elements // per_pair))
    tile_i = max(1, min(bsz, max_elements // (per_pair * tile_j)))
    la, lb = a.log_weights(), b.log_weights()
    use_checkpoint = torch.is_grad_enabled() and any(
        t.requires_grad for t in (a.logits, a.mu, a.logvar, b.logits, b.mu, b.logvar)
    )
    rows = []
    for i0 in range(0, bsz, tile_i):
        sl_i = slice(i0, i0 + tile_i)
        tiles = []
        for j0 in range(0, bsz2, tile_j):
            sl_j = slice(j0, j0 + tile_j)
            args = (la[sl_i], a.mu[sl_i], a.logvar[sl_i], lb[sl_j], b.mu[sl_j], b.logvar[sl_j])
            if use_checkpoint:
                tiles.append(checkpoint(_product_kernel_tile, *args, use_reentrant=False))
            else:
                tiles.append(_product_kernel_tile(*args))
        rows.append(torch.cat(tiles, dim=1))
    return torch.cat(rows, dim=0)


def _product_kernel_tile(la: Tensor, mu: Tensor, logvar: Tensor, lb: Tensor, mu2: Tensor, logvar2: Tensor) -> Tensor:
    var = logvar.exp()[:, :, None, None, :] + logvar2.exp()[None, None, :, :, :]  # (i, k, j, l, d)
    diff2 = (mu[:, :, None, None, :] - mu2[None, None, :, :, :]).pow(2)
    log_norm = -0.5 * (diff2 / var + var.log() + LOG_2PI).sum(-1)
    terms = la[:, :, None, None] + lb[None, None, :, :] + log_norm
    return terms.logsumexp(dim=(1, 3))


# ---------------------------------------------------------------------------------------------------------------------
# per-sample summaries and regularisers
# ---------------------------------------------------------------------------------------------------------------------


def mixture_weight_entropy(logits: Tensor) -> Tensor:
    """H(γ) = −Σ_k γ_k log γ_k of the mixture weights, (B,); 0 for one component, log K for uniform weights."""
    logp = F.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def mixture_mean(p: MixtureParams) -> Tensor:
    """The mixture's mean Σ_k γ_k μ_k, (B, D)."""
    return (p.weights()[..., None] * p.mu).sum(1)


def mixture_total_variance(p: MixtureParams) -> Tensor:
    """Trace of the mixture's covariance, (B,): Σ_k γ_k (Σ_d σ²_kd + ‖μ_k − μ̄‖²) by the law of total variance.

    A single uncertainty number per sample: the spread inside the components plus the spread between them.
    """
    w = p.weights()
    between = (p.mu - mixture_mean(p)[:, None]).pow(2).sum(-1)
    within = p.variances().sum(-1)
    return (w * (within + between)).sum(-1)


def mixture_match_nll(p: MixtureParams, partner_mean: Tensor) -> Tensor:
    """The Gaussian negative log-likelihood of a partner's mean under each sample's isotropic spread, per dimension,
    (B,): ½ (log v + ‖μ̄ − m‖² / (D v)) with μ̄ = Σ_k γ_k μ_k and v = Σ_k γ_k mean_d σ²_kd. Means are held fixed
    (detached), so only the spread learns: its optimum is v = ‖μ̄ − m‖² / D, the sample's own match error
    (heteroscedastic regression, Kendall and Gal 2017)."""
    if p.logvar is None:
        raise ValueError("mixture_match_nll needs variances (a mixture, not points)")
    spread = (p.weights() * p.variances().mean(-1)).sum(-1)
    error = (mixture_mean(p).detach() - partner_mean.detach()).pow(2).sum(-1)
    return 0.5 * (spread.log() + error / (p.mu.shape[-1] * spread))


def gaussian_kl_to_standard(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, diag σ²) ‖ N(0, I)) = ½ Σ_d (σ² + μ² − 1 − log σ²), reduced over the last dim."""
    return 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(-1)


def mixture_kl_to_standard(p: MixtureParams) -> Tensor:
    """Σ_k γ_k KL(N_k ‖ N(0, I)), (B,): PCME's VIB term per component, weighted.

    By joint convexity of KL this bounds KL(mixture ‖ N(0, I)) from above, and equals it for K = 1. Its σ² − log σ²
    part has its minimum at σ² = 1 and grows without bound at both ends, so variances neither collapse nor explode.
    """
    if p.logvar is None:
        raise ValueError("the KL to the prior needs variances (logvar is None)")
    return (p.weights() * gaussian_kl_to_standard(p.mu, p.logvar)).sum(-1)


def paired_w2_cost(a: MixtureParams, b: MixtureParams) -> Tensor:
    """Squared 2-Wasserstein distances between the components of row-aligned pairs, (B, K, K').

    W2²(N(μ, diag σ²), N(μ', diag σ'²)) = ‖μ − μ'‖² + ‖σ − σ'‖² for diagonal Gaussians.
    """
    if a.batch_size != b.batch_size:
        raise ValueError(f"pairs need equal batch sizes, got {a.batch_size} and {b.batch_size}")
    cost = _paired_sq_dist(a.mu, b.mu)
    if a.logvar is not None or b.logvar is not None:
        sa = (0.5 * a.logvar).exp() if a.logvar is not None else torch.zeros_like(a.mu)
        sb = (0.5 * b.logvar).exp() if b.logvar is not None else torch.zeros_like(b.mu)
        cost = cost + _paired_sq_dist(sa, sb)
    return cost


def _paired_sq_dist(u: Tensor, v: Tensor) -> Tensor:
    """‖u_bk − v_bl‖² for (B, K, D) and (B, K', D), through a batched product rather than a (B, K, K', D) tensor."""
    sq = u.pow(2).sum(-1)[:, :, None] + v.pow(2).sum(-1)[:, None, :] - 2.0 * torch.bmm(u, v.transpose(1, 2))
    return sq.clamp_min(0.0)


def moment_matched(p: MixtureParams) -> tuple[Tensor, Tensor]:
    """The single diagonal Gaussian with the mixture's mean and variance, (B, D) mean and log-variance."""
    if p.logvar is None:
        raise ValueError("moment matching needs variances (logvar is None: a point embedding)")
    w = p.weights()[..., None]
    mean = (w * p.mu).sum(1)
    second = (w * (p.logvar.exp() + p.mu.pow(2))).sum(1)
    return mean, (second - mean.pow(2)).clamp_min(1e-12).log()


INCLUSION_EPS = -10.0  # ProLIP's: scales the inverse variances inside the test, keeping it finite for small σ


def _inclusion_test(mu1: Tensor, logvar1: Tensor, mu2: Tensor, logvar2: Tensor) -> Tensor:
    """ProLIP's per-dimension inclusion test of Gaussian 1 in Gaussian 2 (large when 1 lies inside 2)."""
    inv1, inv2 = (-logvar1 + INCLUSION_EPS).exp(), (-logvar2 + INCLUSION_EPS).exp()
    a = inv1 + 0.5 * inv2
    b = 2 * mu1 * inv1 + mu2 * inv2
    c = mu1.pow(2) * inv1 + 0.5 * mu2.pow(2) * inv2
    return -2 * logvar1 - logvar2 - 0.5 * a.log() + b.pow(2) / (4 * a) - c


def inclusion_logit(inner: MixtureParams, outer: MixtureParams) -> Tensor:
    """How much more `inner` lies inside `outer` than the reverse, row-aligned (B,): ProLIP's inclusion logit on the
    moment-matched Gaussians, averaged over dimensions; positive when inner ⊂ outer."""
    m1, v1 = moment_matched(inner)
    m2, v2 = moment_matched(outer)
    return (_inclusion_test(m1, v1, m2, v2) - _inclusion_test(m2, v2, m1, v1)).mean(-1)
