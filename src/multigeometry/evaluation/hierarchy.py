"""Hierarchy metrics: how well a containment score separates containing pairs (a general description ⊇ a specific
description or item) from the rest (AUC), for cones and for mixtures, and which ground truth says what contains what.

Ground truth: every description and every sample carries a set of atoms; a description contains a sample when its
atoms are a subset of the sample's. The world gives concept sets (`concepts`, `hierarchy_concepts`), so "a picture of
a diamond" contains every item with a diamond of the right count; without concepts a description's atom is the
description itself and a sample's atoms are its own hierarchy, so a description contains exactly the rows that list it.

Scores (higher = more contained):
- cones: −containment(outer, inner), the angle by which the inner cap leaves the outer one (0 inside);
- mixtures: −KL(inner ‖ outer), the general distribution should put mass wherever the specific one has it; for
  Gaussian mixtures the KL has no closed form and we use Hershey & Olsen's (2007) variational approximation
  D(f‖g) = Σ_a π_a log(Σ_a' π_a' e^{−KL(f_a‖f_a')} / Σ_b ω_b e^{−KL(f_a‖g_b)}), exact for single Gaussians and built
  from matrix products over the components (as the similarities are).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from multigeometry.geometry.cone import ConeParams, pairwise_containment
from multigeometry.geometry.mixture import MixtureParams

ScoreBlock = Callable[[int, int], Tensor]


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


def has_containment(dist: MixtureParams | ConeParams) -> bool:
    return isinstance(dist, ConeParams) or dist.logvar is not None


def containment_score(outer: MixtureParams | ConeParams, inner: MixtureParams | ConeParams) -> Tensor:
    """How much each inner distribution lies inside each outer one, (B_outer, B_inner); higher = more contained."""
    if isinstance(outer, ConeParams) and isinstance(inner, ConeParams):
        return -pairwise_containment(outer, inner)
    if isinstance(outer, MixtureParams) and isinstance(inner, MixtureParams):
        return -mixture_kl_approx(inner, outer).T
    raise TypeError(f"both sides must be cones or both mixtures, got {type(outer).__name__}, {type(inner).__name__}")


def atom_matrix(sets: Sequence[Sequence[str]], vocabulary: dict[str, int]) -> Tensor:
    """Rows of atoms as a boolean matrix (N, V) over `vocabulary` (atom -> column), which grows to hold new atoms;
    call it for every side before using the matrices, then pad them to one width with `pad_columns`."""
    for atoms in sets:
        for atom in atoms:
            vocabulary.setdefault(atom, len(vocabulary))
    out = torch.zeros(len(sets), len(vocabulary), dtype=torch.bool)
    for i, atoms in enumerate(sets):
        out[i, [vocabulary[a] for a in atoms]] = True
    return out


def pad_columns(matrix: Tensor, width: int) -> Tensor:
    if matrix.shape[1] >= width:
        return matrix
    return torch.cat([matrix, matrix.new_zeros(matrix.shape[0], width - matrix.shape[1])], dim=1)


def inclusion_mask(general: Tensor, specific: Tensor) -> Tensor:
    """general (G, V), specific (S, V) boolean atom sets -> (G, S): general_g ⊆ specific_s (g contains s)."""
    missing = general.to(torch.float32) @ (~specific).to(torch.float32).T
    return missing == 0


def blockwise_auc(score_block: ScoreBlock, positive_block: ScoreBlock, n_rows: int, block_size: int) -> float:
    """ROC AUC of all (row, column) scores, positives against negatives, ties counted half; exact, computed in blocks
    of rows in two passes (the positives' scores are kept and sorted, the negatives are counted against them)."""
    positives = []
    for i0 in range(0, n_rows, block_size):
        i1 = min(n_rows, i0 + block_size)
        scores = score_block(i0, i1)
        if not bool(torch.isfinite(scores).all()):
            raise ValueError(f"non-finite containment scores in rows {i0}:{i1}")
        positives.append(scores[positive_block(i0, i1)].to(torch.float64).cpu())
    pos = torch.cat(positives).sort().values if positives else torch.zeros(0, dtype=torch.float64)
    n_pos, n_neg, wins = pos.numel(), 0, 0.0
    if n_pos == 0:
        return float("nan")
    for i0 in range(0, n_rows, block_size):
        i1 = min(n_rows, i0 + block_size)
        neg = score_block(i0, i1)[~positive_block(i0, i1)].to(torch.float64).cpu()
        above = n_pos - torch.searchsorted(pos, neg, side="right")
        ties = torch.searchsorted(pos, neg, side="right") - torch.searchsorted(pos, neg, side="left")
        wins += float(above.sum()) + 0.5 * float(ties.sum())
        n_neg += neg.numel()
    return wins / (n_pos * n_neg) if n_neg else float("nan")
