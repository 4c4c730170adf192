"""MainCriterion: symmetric InfoNCE over distribution similarities, plus regularisers, optimal transport and entailment.

The terms, each returned separately (unweighted) for logging, and their weights in `LossConfig`:
- `contrastive`: symmetric InfoNCE over the global batch (gathered across ranks), weight 1;
- `entropy`: mean entropy of the mixture weights, weight `entropy_weight` (its sign is the direction: positive
  sharpens the weights, negative spreads them over the components);
- `kl`: PCME's VIB, the mean KL of the components to N(0, I), weight `kl_weight`;
- `sinkhorn`: entropic OT between the components of each positive pair, weight `sinkhorn_weight`; beside it
  `sinkhorn_iters`, the solver's steps (a count, not a loss);
- `entailment`: cone containment general ⊇ specific ⊇ item, weight `entailment_weight`;
- `composition` (`MainCriterion.composition`, called by the objective): symmetric InfoNCE between compose(parts) and
  the compound's own caption, weight `composition_weight`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multigeometry.config import LossConfig, ModelConfig
from multigeometry.distributed import all_gather_no_grad, all_gather_with_grad, rank_and_world
from multigeometry.geometry.blockwise import DEFAULT_CHUNK_ELEMENTS
from multigeometry.geometry.cone import ConeParams, angles
from multigeometry.geometry.distribution import Distribution, family_for, family_of
from multigeometry.geometry.mixture import (
    MixtureParams,
    inclusion_logit,
    mixture_kl_to_standard,
    mixture_match_nll,
    mixture_mean,
    mixture_total_variance,
    mixture_weight_entropy,
    paired_w2_cost,
)
from multigeometry.geometry.similarity import PRODUCT_KERNEL_MAX_ELEMENTS, Similarity
from multigeometry.geometry.sinkhorn import entropic_ot_cost

# InfoNCE blocks: 1 Mi entries (4 MiB float32); each block has two or three temporaries of this size.
INFO_NCE_CHUNK_ELEMENTS = 1 << 20
SINGLE_BLOCK_ELEMENTS = 1 << 16


@dataclass(frozen=True)
class Hierarchy:
    """The hierarchy a batch carries, for the hierarchy terms (cone entailment and aperture order, mixture inclusion,
    the contrastive term over each level).

    `general` holds the distributions of the more general descriptions of batch rows (M of them, any number per
    row); `owner[m]` is the local row whose caption `general[m]` generalises; `parent[m]`, when given, is the index in
    `general` of the next more general description of the same row, or −1 for the most general one; `key[m]`, when
    given, keys the description's text (equal texts describe the same thing: not each other's negatives).
    `caption_side` says which side of the pair holds the specific captions ("b" for (image, text) pairs); the other
    side holds the items the captions describe.
    """

    general: Distribution
    owner: Tensor
    parent: Tensor | None = None
    caption_side: Literal["a", "b"] = "b"
    key: Tensor | None = None
    # the batch rows whose caption ⊇ item pairs the hierarchy terms take (all when None): one micro-batch's under
    # gradient accumulation, where the sides hold the whole accumulated batch
    rows: Tensor | None = None

    def share(self, batch_size: int) -> float:
        """The weight of the hierarchy terms in a batch of `batch_size` rows: the share of them in `rows`, so that
        the passes of an accumulated batch, each over its micro-batch's rows, sum to the whole batch's mean."""
        return 1.0 if self.rows is None else len(self.rows) / batch_size

    def levels(self) -> Tensor:
        """Each description's level, 0 for the most general (its chain of parents; parents come before children)."""
        level = torch.zeros(len(self.owner), dtype=torch.long, device=self.owner.device)
        if self.parent is not None:
            for m, p in enumerate(self.parent.tolist()):
                if p >= 0:
                    level[m] = level[p] + 1
        return level


ConeHierarchy = Hierarchy  # the entailment term's name for it


def info_nce(
    sim: Tensor,
    scale: Tensor,
    positive: Tensor | None = None,
    row_groups: Tensor | None = None,
    col_groups: Tensor | None = None,
    label_smoothing: float = 0.0,
    symmetric: bool = False,
    chunk_elements: int = INFO_NCE_CHUNK_ELEMENTS,
) -> Tensor:
    """Mean cross-entropy of the rows of the logits scale · sim (R, C), each against its positive column.

    `positive` (R,) holds each row's positive column, the diagonal when None. `symmetric` (a square `sim` with the
    diagonal positive) averages the rows' loss with the columns' (CLIP's loss). With groups, the columns of a row's
    own group other than its positive are left out of its softmax (and the rows of a column's group out of the
    column's): they describe the same thing, so they are not negatives. Label smoothing spreads its mass over the
    entries that remain, which is `F.cross_entropy`'s smoothing when nothing is left out.

    Computed in row chunks with a hand-written backward pass, so that beside `sim` it holds only its gradient and one
    chunk: no logits, log-softmax or transposed copies of the whole matrix, which in a plain implementation make up
    several times the memory of `sim` and as many passes over it.
    """
    sim = sim.contiguous()
    n_rows, n_cols = sim.shape
    if positive is None:
        positive = torch.arange(n_rows, device=sim.device)
    if symmetric and (n_rows != n_cols or not torch.equal(positive, torch.arange(n_rows, device=sim.device))):
        raise ValueError("a symmetric InfoNCE needs a square similarity matrix with the positives on its diagonal")
    if (row_groups is None) != (col_groups is None):
        raise ValueError("give groups for both rows and columns, or for neither")
    if sim.numel() <= min(chunk_elements, SINGLE_BLOCK_ELEMENTS):
        small = _small_info_nce(sim, scale, positive, row_groups, col_groups, float(label_smoothing), symmetric)
        if small is not None:
            return small
    return _ScaledInfoNCE.apply(
        sim, scale, positive, row_groups, col_groups, float(label_smoothing), bool(symmetric), int(chunk_elements)
    )


def _small_info_nce(
    sim: Tensor,
    scale: Tensor,
    positive: Tensor,
    row_groups: Tensor | None,
    col_groups: Tensor | None,
    label_smoothing: float,
    symmetric: bool,
) -> Tensor | None:
    """`info_nce` of a small matrix through plain autograd: a training batch's loss is dominated by the per-op
    overhead of the chunked path, not by memory. None where smoothing meets left-out entries, which
    `F.cross_entropy` would smooth onto."""
    logits = sim * scale.to(sim.dtype)
    if row_groups is not None and col_groups is not None:
        mask = row_groups[:, None] == col_groups[None, :]
        mask[torch.arange(len(positive), device=mask.device), positive] = False
        if bool(mask.any()):
            if label_smoothing > 0:
                return None
            logits = logits.masked_fill(mask, float("-inf"))
    loss = F.cross_entropy(logits, positive, label_smoothing=label_smoothing)
    if symmetric:
        loss = (loss + F.cross_entropy(logits.T, positive, label_smoothing=label_smoothing)) / 2
    return loss


class _Blocks:
    """Chunks of the logits scale · sim along one direction: row blocks (dim=1, for the softmax over each row) or
    column blocks (dim=0), with the entries left out of each softmax masked to −inf."""

    def __init__(
        self,
        sim: Tensor,
        scale: Tensor,
        positive: Tensor,
        row_groups: Tensor | None,
        col_groups: Tensor | None,
        dim: int,
        chunk_elements: int,
    ) -> None:
        self.sim, self.scale, self.positive, self.dim = sim, scale, positive, dim
        self.row_groups, self.col_groups = row_groups, col_groups
        self.n = sim.shape[1 - dim]
        # A matrix of up to SINGLE_BLOCK_ELEMENTS (and chunk_elements) is one block: per-block overhead would dominate
        # a training batch's loss. Larger ones take at most an eighth of the matrix a block, so that the temporaries
        # stay small beside it.
        if sim.numel() <= min(chunk_elements, SINGLE_BLOCK_ELEMENTS):
            self.step = max(1, self.n)
        else:
            self.step = max(1, min(self.n // 8, chunk_elements // max(sim.shape[dim], 1)))

    def __iter__(self) -> Iterator[tuple[slice, Tensor, Tensor, Tensor | None, tuple[Tensor, Tensor]]]:
        """(the block's slice, its raw sim, its logits, its mask or None, where its positives lie)"""
        for a0 in range(0, self.n, self.step):
            a1 = min(self.n, a0 + self.step)
            raw = self.sim[a0:a1] if self.dim == 1 else self.sim[:, a0:a1]
            logits = raw * self.scale
            mask = self._mask(a0, a1)
            if mask is not None:
                logits.masked_fill_(mask, float("-inf"))
            yield slice(a0, a1), raw, logits, mask, self._positive_index(a0, a1)

    def _positive_index(self, a0: int, a1: int) -> tuple[Tensor, Tensor]:
        """Each row's positive (dim=1), or each column's (dim=0, symmetric: on the diagonal), in block coordinates."""
        idx = torch.arange(a1 - a0, device=self.sim.device)
        if self.dim == 1:
            return idx, self.positive[a0:a1]
        return idx + a0, idx

    def _mask(self, a0: int, a1: int) -> Tensor | None:
        if self.row_groups is None or self.col_groups is None:
            return None
        if self.dim == 1:
            mask = self.row_groups[a0:a1, None] == self.col_groups[None, :]
            mask[torch.arange(a1 - a0, device=mask.device), self.positive[a0:a1]] = False
        else:
            mask = self.row_groups[:, None] == self.col_groups[None, a0:a1]
            inside = ((self.positive >= a0) & (self.positive < a1)).nonzero().squeeze(1)
            mask[inside, self.positive[inside] - a0] = False
        return mask if bool(mask.any()) else None


class _ScaledInfoNCE(torch.autograd.Function):
    """The softmaxes go through PyTorch's fused (log_)softmax kernels, which stay fast for logits hundreds apart,
    where an exp of the shifted logits underflows into a slow path."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        sim: Tensor,
        scale: Tensor,
        positive: Tensor,
        row_groups: Tensor | None,
        col_groups: Tensor | None,
        smoothing: float,
        symmetric: bool,
        chunk_elements: int,
    ) -> Tensor:
        s = scale.to(sim.dtype)
        pos_logit = sim.gather(1, positive[:, None]).squeeze(1) * s
        losses, kept_counts = [], []
        for dim in (1, 0) if symmetric else (1,):
            n = sim.shape[1 - dim]
            lse, kept_sum = sim.new_empty(n), sim.new_zeros(n)
            kept = sim.new_full((n,), float(sim.shape[dim]))
            for sl, _, logits, mask, pos_idx in _Blocks(sim, s, positive, row_groups, col_groups, dim, chunk_elements):
                if smoothing > 0:
                    kept_sum[sl] = (logits if mask is None else logits.masked_fill(mask, 0.0)).sum(dim)
                if mask is not None:
                    kept[sl] = (~mask).sum(dim)
                log_p = torch.log_softmax(logits, dim)
                lse[sl] = logits[pos_idx] - log_p[pos_idx]  # the positive is never masked
            losses.append(_smoothed(lse, pos_logit, kept_sum / kept, smoothing).mean())
            kept_counts.append(kept)
        ctx.save_for_backward(sim, scale, positive, row_groups, col_groups, *kept_counts)
        ctx.smoothing, ctx.chunk_elements = smoothing, chunk_elements
        return sum(losses) / len(losses)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple:  # type: ignore[override]
        sim, scale, positive, row_groups, col_groups, *kept_counts = ctx.saved_tensors
        smoothing = ctx.smoothing
        s = scale.to(sim.dtype)
        dsim = torch.empty_like(sim)
        dscale = sim.new_zeros(())
        # d loss / d logit = Σ over directions of w · (softmax − (1−ε)·[positive] − ε·[kept] / n_kept)
        for dim, kept in zip((1, 0), kept_counts, strict=False):
            w = grad.to(sim.dtype) / (sim.shape[1 - dim] * len(kept_counts))
            for sl, raw, logits, mask, pos_idx in _Blocks(
                sim, s, positive, row_groups, col_groups, dim, ctx.chunk_elements
            ):
                g = torch.softmax(logits, dim).mul_(w)
                g[pos_idx] -= (1.0 - smoothing) * w
                if smoothing > 0:
                    share = smoothing * w / kept[sl].unsqueeze(dim)
                    g.sub_(share if mask is None else share * ~mask)
                dscale += torch.dot(g.view(-1), raw.view(-1)) if raw.is_contiguous() else (g * raw).sum()
                if dim == 1:
                    torch.mul(g, s, out=dsim[sl])
                else:
                    dsim[:, sl].add_(g, alpha=float(s))
        return dsim, dscale.to(scale.dtype), None, None, None, None, None, None


def _smoothed(lse: Tensor, positive_logit: Tensor, mean_kept_logit: Tensor, smoothing: float) -> Tensor:
    """(1−ε)·(lse − positive) + ε·(lse − mean of the kept logits): cross-entropy against the smoothed target."""
    if smoothing == 0:
        return lse - positive_logit
    return lse - (1.0 - smoothing) * positive_logit - smoothing * mean_kept_logit


class SinkhornOTLoss(nn.Module):
    """Entropic OT between the K components of each positive pair (`geometry.sinkhorn`: log-domain Sinkhorn–Newton).

    Cost: the squared 2-Wasserstein distance between the diagonal Gaussian components; marginals: the mixture
    weights. The value is the transport cost ⟨T*, C⟩ of the entropic plan T*, as `ot.sinkhorn2` returns it; its
    gradient (implicit, at the plan reached) reaches means, variances and weights. The solver stops when every pair's
    marginal error is below `tol`, or after `max_iters` steps; `last_iters` holds the steps of the last call.
    """

    def __init__(self, reg: float = 0.1, max_iters: int = 200, tol: float = 1e-6) -> None:
        super().__init__()
        if not reg > 0:
            raise ValueError(f"the Sinkhorn regularisation must be positive, got {reg}")
        if max_iters < 1 or not tol > 0:
            raise ValueError(f"Sinkhorn needs max_iters >= 1 and tol > 0, got {max_iters} and {tol}")
        self.reg, self.max_iters, self.tol = reg, max_iters, tol
        self.last_iters = 0

    def pair_costs(self, a: MixtureParams, b: MixtureParams) -> Tensor:
        """The OT cost of every row-aligned pair, (B,)."""
        cost = paired_w2_cost(a, b)
        value, self.last_iters = entropic_ot_cost(
            cost, a.weights().to(cost.dtype), b.weights().to(cost.dtype), self.reg, self.max_iters, self.tol
        )
        return value

    def forward(self, a: MixtureParams, b: MixtureParams) -> Tensor:
        return self.pair_costs(a, b).mean()


def hierarchy_pairs(
    captions: Distribution, items: Distribution, hierarchy: Hierarchy
) -> list[tuple[Distribution, Distribution, int]]:
    """The (outer, inner, step) pairs a hierarchy implies, row-aligned: caption_i ⊇ item_i (step 0), general_m ⊇
    caption_owner[m] (step 1: the most specific general level; others by their distance), parent ⊇ general_m."""
    rows = hierarchy.rows
    pairs = [(captions, items, 0) if rows is None else (captions.select(rows), items.select(rows), 0)]
    general, owner = hierarchy.general, hierarchy.owner
    if owner.numel() > 0:
        pairs.append((general, captions.select(owner), 1))
        if hierarchy.parent is not None:
            has_parent = hierarchy.parent >= 0
            if bool(has_parent.any()):
                children = general.select(has_parent)
                parents = general.select(hierarchy.parent[has_parent])
                pairs.append((parents, children, 2))
    return pairs


def entailment_loss(captions: ConeParams, items: ConeParams, hierarchy: Hierarchy,
                    margins: tuple[float, ...] = (0.0,)) -> Tensor:
    """MERU-style entailment, general ⊇ specific ⊇ item: the mean containment score of each kind of pair, summed,
    each with its margin (`loss.entailment_margins`: the inner cone must sit that many radians inside the outer).

    caption_i ⊇ item_i for every row; general_m ⊇ caption_owner[m]; general_parent[m] ⊇ general_m.
    """
    total = captions.direction.new_zeros(())
    for outer, inner, step in hierarchy_pairs(captions, items, hierarchy):
        margin = margins[min(step, len(margins) - 1)] if margins else 0.0
        # containment(outer, inner) is relu(angle + θ_inner − θ_outer); the margin asks for room to spare
        excess = angles(outer.direction, inner.direction) + inner.theta - outer.theta
        total = total + F.relu(excess + margin).mean()
    return total


def generality_order_loss(captions: Distribution, items: Distribution, hierarchy: Hierarchy, gap: float,
                          measure: Callable[[Distribution], Tensor]) -> Tensor:
    """Generality in the uncertainty: every outer distribution of the hierarchy more uncertain than its inner one by
    `gap` as `measure` reads it, relu(measure(inner) − measure(outer) + gap), averaged per kind of pair and summed."""
    terms = [F.relu(measure(inner) - measure(outer) + gap).mean()
             for outer, inner, _step in hierarchy_pairs(captions, items, hierarchy)]
    return torch.stack(terms).sum()


def aperture_order_loss(captions: ConeParams, items: ConeParams, hierarchy: Hierarchy, gap: float) -> Tensor:
    """Generality in the aperture (MERU, HyCoCLIP): every outer cone of the hierarchy wider than its inner one by
    `gap` radians."""
    return generality_order_loss(captions, items, hierarchy, gap, lambda cone: cone.theta)


def variance_order_loss(captions: MixtureParams, items: MixtureParams, hierarchy: Hierarchy, gap: float) -> Tensor:
    """The mixtures' aperture order: every outer mixture of the hierarchy spread wider than its inner one, its log
    total variance (the uncertainty the evaluation reads) larger by `gap`."""
    return generality_order_loss(captions, items, hierarchy, gap,
                                 lambda mixture: mixture_total_variance(mixture).clamp_min(1e-12).log())


def inclusion_loss(captions: MixtureParams, items: MixtureParams, hierarchy: Hierarchy, scale: float) -> Tensor:
    """ProLIP's inclusion loss for mixtures: −log σ(scale · inclusion logit) of every pair the hierarchy implies
    (item ⊂ caption ⊂ general ⊂ more general), averaged per kind of pair and summed."""
    total = captions.mu.new_zeros(())
    for outer, inner, _step in hierarchy_pairs(captions, items, hierarchy):
        total = total - F.logsigmoid(scale * inclusion_logit(inner, outer)).mean()  # type: ignore[arg-type]
    return total


def hierarchy_contrastive(items: Distribution, hierarchy: Hierarchy, similarity, scale: Tensor,
                          smoothing: float = 0.0) -> Tensor:
    """Each hierarchy level as a retrieval task: the items against the batch's descriptions of that level (an item's
    positive is its own ancestor there; the same text of other rows is not a negative), symmetric InfoNCE, the levels
    averaged. This trains the middle levels, which the caption-level contrastive term alone leaves vague."""
    levels = hierarchy.levels()
    keys = hierarchy.key if hierarchy.key is not None else torch.arange(len(levels), device=levels.device)
    losses = []
    for level in torch.unique(levels).tolist():
        at = torch.nonzero(levels == level).squeeze(1)
        if at.numel() < 2:
            continue
        general = hierarchy.general.map(lambda t, at=at: t[at])
        owners = items.map(lambda t, at=at: t[hierarchy.owner[at]])
        sim = similarity(owners, general)
        losses.append(info_nce(sim, scale, None, keys[at], keys[at], smoothing, True))
    if not losses:
        return scale.new_zeros(())
    return torch.stack(losses).mean()


def sigmoid_pairwise_loss(sim: Tensor, scale: Tensor, bias: Tensor, labels: Tensor) -> Tensor:
    """PCME++'s (and SigLIP's) pairwise loss: the binary cross-entropy of every pair's logit scale · sim + bias
    against its label (1 a match, 0 not, in between for pseudo-positives and mixed samples), summed over the columns
    and averaged over the rows."""
    logits = sim * scale.to(sim.dtype) + bias.to(sim.dtype)
    return F.binary_cross_entropy_with_logits(logits, labels.to(sim.dtype), reduction="sum") / sim.shape[0]


def pair_labels(row_groups: Tensor, col_groups: Tensor, sim: Tensor | None = None, pseudo_weight: float = 0.0,
                soft_rows: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Labels of every pair: 1 where the groups match; PCME++'s pseudo-positives (a pair that scores above the row's
    best positive) get `pseudo_weight`; `soft_rows` = (λ, partner) mixes each row's labels with its partner's (the
    rows whose inputs were mixed: λ of their own, 1 − λ of the partner's)."""
    labels = (row_groups[:, None] == col_groups[None, :]).to(torch.float32)
    if soft_rows is not None:
        lam, partner = soft_rows
        labels = lam[:, None] * labels + (1 - lam[:, None]) * labels[partner]
    if pseudo_weight > 0 and sim is not None:
        s = sim.detach()
        best = torch.where(labels > 0, s, torch.full_like(s, float("-inf"))).max(1).values
        pseudo = (s > best[:, None]) & (labels == 0)
        labels = labels + pseudo_weight * pseudo.to(labels.dtype)
    return labels


Term = tuple[str, float, Tensor]  # (name, weight, unweighted value)


def _no_terms(*_args: object) -> list[Term]:
    return []


def _mixture_regularisers(cfg: LossConfig, sinkhorn: SinkhornOTLoss, a: MixtureParams, b: MixtureParams) -> list[Term]:
    """The weight entropy, the VIB's KL to N(0, I) and the match-error NLL (with variances), and the components'
    optimal transport."""
    terms: list[Term] = []
    if cfg.entropy_weight != 0 and a.n_components > 1:
        entropy = torch.cat([mixture_weight_entropy(a.logits), mixture_weight_entropy(b.logits)]).mean()
        terms.append(("entropy", cfg.entropy_weight, entropy))
    if cfg.kl_weight > 0 and a.logvar is not None and b.logvar is not None:
        terms.append(("kl", cfg.kl_weight, torch.cat([mixture_kl_to_standard(a), mixture_kl_to_standard(b)]).mean()))
    if cfg.uncertainty_nll_weight > 0 and a.logvar is not None and b.logvar is not None:
        nll = torch.cat([mixture_match_nll(a, mixture_mean(b)), mixture_match_nll(b, mixture_mean(a))]).mean()
        terms.append(("uncertainty_nll", cfg.uncertainty_nll_weight, nll))
    if cfg.sinkhorn_weight > 0:
        cost = sinkhorn(a, b)
        terms.append(("sinkhorn", cfg.sinkhorn_weight, cost))
        # the solver's steps, logged beside it: a count, weighted 0
        terms.append(("sinkhorn_iters", 0.0, cost.new_tensor(float(sinkhorn.last_iters))))
    return terms


def _active_terms(candidates: list[tuple[str, float, Callable[[], Tensor]]]) -> list[Term]:
    """The (name, weight, value) of each candidate term whose weight is on, computed only then."""
    return [(name, weight, value()) for name, weight, value in candidates if weight > 0]


def _cone_hierarchy_terms(cfg: LossConfig, captions: ConeParams, items: ConeParams, hierarchy: Hierarchy) -> list[Term]:
    return _active_terms([
        ("entailment", cfg.entailment_weight,
         lambda: entailment_loss(captions, items, hierarchy, cfg.entailment_margins)),
        ("aperture_order", cfg.aperture_weight,
         lambda: aperture_order_loss(captions, items, hierarchy, cfg.aperture_gap)),
    ])


def _mixture_hierarchy_terms(cfg: LossConfig, captions: MixtureParams, items: MixtureParams,
                             hierarchy: Hierarchy) -> list[Term]:
    if captions.logvar is None or items.logvar is None:  # points: no spread to include or order
        return []
    return _active_terms([
        ("inclusion", cfg.inclusion_weight,
         lambda: inclusion_loss(captions, items, hierarchy, cfg.inclusion_scale)),
        ("variance_order", cfg.variance_order_weight,
         lambda: variance_order_loss(captions, items, hierarchy, cfg.variance_order_gap)),
    ])


@dataclass(frozen=True)
class GeometryTerms:
    """The loss terms only one geometry family has, keyed in `GEOMETRY_TERMS` by the family's name: a new geometry
    with terms of its own adds an entry; one without needs none."""

    # (cfg, sinkhorn, a, b) -> the regularisers of both sides of a pair
    regularisers: Callable[..., list[Term]] = _no_terms
    # (cfg, captions, items, hierarchy) -> the terms on the hierarchy's containment pairs
    hierarchy: Callable[..., list[Term]] = _no_terms
    # (cfg, model.geometry) -> whether `hierarchy` gives any term (then the batch's general descriptions are encoded)
    uses_hierarchy: Callable[[LossConfig, str], bool] = lambda cfg, geometry: False


GEOMETRY_TERMS: dict[str, GeometryTerms] = {
    # inclusion needs variances, which points have not
    "mixture": GeometryTerms(_mixture_regularisers, _mixture_hierarchy_terms,
                             lambda cfg, geometry: geometry == "mixture"
                             and (cfg.inclusion_weight > 0 or cfg.variance_order_weight > 0)),
    "cone": GeometryTerms(hierarchy=_cone_hierarchy_terms,
                          uses_hierarchy=lambda cfg, _: cfg.entailment_weight > 0 or cfg.aperture_weight > 0),
}


def geometry_terms(family_name: str) -> GeometryTerms:
    return GEOMETRY_TERMS.get(family_name, GeometryTerms())


class MainCriterion(nn.Module):
    """The training loss. Holds only the learnable logit scale (log-parametrised as in CLIP); the math is in
    the functions above and in `multigeometry.geometry`, the similarity is the model's (`geometry.similarity`, built
    from the configs when not given) and the terms only one geometry has are its `GEOMETRY_TERMS`.

    forward(a, b, group_ids=None, hierarchy=None) takes both sides of a batch of pairs as `MixtureParams` (geometry
    "mixture", or "point": K = 1 without variance) or `ConeParams` (geometry "cone", whose similarity is
    `cone_similarity` whatever `loss.similarity` says); `group_ids` (B,) marks rows that describe the same thing,
    which are never each other's negatives; `hierarchy` feeds the hierarchy terms (the geometry's own: cone
    entailment and aperture order, mixture inclusion; and the contrastive term over each level).
    It returns the unweighted terms, "logit_scale" (detached) and "loss", the weighted total.

    Under DDP every rank passes its local batch (equal sizes on all ranks); features are gathered, with gradients
    when `gather_with_grad`, so that the contrastive batch is global; with `local_loss` each rank scores only its
    own rows against all columns. Averaging the ranks' losses (as DDP averages gradients) gives the global loss and
    its gradient. Without `gather_with_grad` only a rank's own slice of the gathered features carries gradients (as
    OpenCLIP without --gather-with-grad): the contrastive gradient then comes from the rank's own loss alone and,
    after DDP's averaging, weighs 1/world_size of what the per-rank terms (KL, entropy, Sinkhorn) weigh.
    The other terms are means over the local rows.
    """

    def __init__(
        self,
        loss_cfg: LossConfig,
        model_cfg: ModelConfig,
        *,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
        product_kernel_max_elements: int = PRODUCT_KERNEL_MAX_ELEMENTS,
        similarity: Similarity | None = None,
    ) -> None:
        super().__init__()
        self.cfg, self.geometry = loss_cfg, model_cfg.geometry
        self.family = family_for(model_cfg.geometry)
        # the optimizer steps taken so far, set by the training loop (it gates `loss.pseudo_positive_warmup_steps`)
        self.step = 0
        self.terms = geometry_terms(self.family.name)
        # the model's similarity when given (PairModel.similarity), else the one the configs name
        self.similarity: Similarity = similarity or Similarity.from_config(
            model_cfg, loss_cfg, chunk_elements=chunk_elements, product_kernel_max_elements=product_kernel_max_elements
        )
        if self.similarity.family is not self.family:
            raise ValueError(f"a {self.similarity.kind} similarity for model.geometry {self.geometry!r}")
        if loss_cfg.uncertainty_temperature > 0 and model_cfg.geometry != "mixture":
            raise ValueError(f"loss.uncertainty_temperature reads a mixture's variance; model.geometry is "
                             f"{model_cfg.geometry!r}")
        if loss_cfg.uncertainty_temperature > 0 and loss_cfg.objective != "infonce":
            raise ValueError("loss.uncertainty_temperature tempers InfoNCE rows; loss.objective is "
                             f"{loss_cfg.objective!r}")
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(loss_cfg.init_logit_scale)))
        if loss_cfg.objective == "sigmoid":
            self.logit_bias = nn.Parameter(torch.tensor(float(loss_cfg.init_logit_bias)))
        elif loss_cfg.pseudo_positive_weight > 0 or loss_cfg.mixup > 0:
            raise ValueError("loss.pseudo_positive_weight and loss.mixup label pairs for loss.objective: sigmoid")
        self.sinkhorn = SinkhornOTLoss(loss_cfg.sinkhorn_reg, loss_cfg.sinkhorn_max_iters, loss_cfg.sinkhorn_tol)

    def logit_scale(self) -> Tensor:
        return self.log_logit_scale.clamp(max=math.log(self.cfg.max_logit_scale)).exp()

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Clamp the parameter into [1, max_logit_scale] in place; call after each optimizer step, as CLIP does."""
        self.log_logit_scale.clamp_(0.0, math.log(self.cfg.max_logit_scale))

    @property
    def uses_hierarchy(self) -> bool:
        """Whether a hierarchy term is on for this geometry (then the batch's general descriptions are encoded)."""
        return self.cfg.hierarchy_contrastive_weight > 0 or self.terms.uses_hierarchy(self.cfg, self.geometry)

    def pseudo_positive_weight(self) -> float:
        """`loss.pseudo_positive_weight`, or 0 for the first `loss.pseudo_positive_warmup_steps` steps: from a random
        head most negatives outscore their positive, and labelling them positive collapses training (PCME++ starts
        from a trained CLIP, where few do)."""
        return self.cfg.pseudo_positive_weight if self.step >= self.cfg.pseudo_positive_warmup_steps else 0.0

    def forward(
        self,
        a: Distribution,
        b: Distribution,
        group_ids: Tensor | None = None,
        hierarchy: Hierarchy | None = None,
        soft_rows: tuple[Tensor, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """`soft_rows` = (λ, partner): rows whose first side's inputs were mixed with their partner's (loss.mixup)."""
        self._check(a, b, group_ids)
        cfg = self.cfg
        if cfg.objective == "sigmoid":
            terms: dict[str, Tensor] = {"contrastive": self._sigmoid(a, b, group_ids, soft_rows)}
        else:
            terms = {"contrastive": self._contrastive(a, b, group_ids)}
        weighted = terms["contrastive"]
        for name, weight, value in self.terms.regularisers(cfg, self.sinkhorn, a, b):
            terms[name] = value
            if weight:
                weighted = weighted + weight * value
        if hierarchy is not None:
            weighted = weighted + hierarchy.share(a.batch_size) * self._hierarchy_terms(a, b, hierarchy, terms)
        terms["logit_scale"] = self.logit_scale().detach()
        terms["loss"] = weighted
        return terms

    def _hierarchy_terms(self, a: Distribution, b: Distribution, hierarchy: Hierarchy,
                         terms: dict[str, Tensor]) -> Tensor:
        """The weighted hierarchy terms of the geometry (each also put in `terms`, unweighted)."""
        cfg = self.cfg
        captions, items = (b, a) if hierarchy.caption_side == "b" else (a, b)
        weighted = self.log_logit_scale.new_zeros(())
        parts = self.terms.hierarchy(cfg, captions, items, hierarchy)
        if cfg.hierarchy_contrastive_weight > 0:
            parts.append(("hierarchy_contrastive", cfg.hierarchy_contrastive_weight,
                          hierarchy_contrastive(items, hierarchy, self.similarity, self.logit_scale(),
                                                cfg.label_smoothing)))
        for name, weight, value in parts:
            terms[name] = value
            weighted = weighted + weight * value
        return weighted

    def _sigmoid(self, a: Distribution, b: Distribution, group_ids: Tensor | None,
                 soft_rows: tuple[Tensor, Tensor] | None) -> Tensor:
        """PCME++'s pairwise loss over every pair of the global batch (gathered as the InfoNCE term is)."""
        gather = all_gather_with_grad if self.cfg.gather_with_grad else all_gather_no_grad
        a_all, b_all = a.map(gather), b.map(gather)
        n = a_all.batch_size
        groups = torch.arange(n, device=self.log_logit_scale.device) if group_ids is None \
            else all_gather_no_grad(group_ids)
        if soft_rows is not None and n != a.batch_size:
            raise ValueError("loss.mixup needs a single process (its mixed rows are local)")
        sim = self.similarity(a_all, b_all)
        labels = pair_labels(groups, groups, sim, self.pseudo_positive_weight(), soft_rows)
        scale = self.logit_scale()
        return sigmoid_pairwise_loss(sim, scale, self.logit_bias, labels)

    def composition(self, composed: Distribution, compound: Distribution, meaning: Tensor) -> Tensor:
        """Symmetric InfoNCE of the composed distributions against their compounds' caption distributions, both
        (N,), local to the rank. `meaning` (N,) keys the compounds' concept sets: two rows that compose the same
        concept ("a red circle" twice) are not each other's negatives."""
        sim = self.similarity(composed, compound)
        return info_nce(sim, self.logit_scale(), None, meaning, meaning, self.cfg.label_smoothing, True)

    def _contrastive(self, a: Distribution, b: Distribution, group_ids: Tensor | None) -> Tensor:
        cfg = self.cfg
        rank, _ = rank_and_world()
        gather = all_gather_with_grad if cfg.gather_with_grad else all_gather_no_grad
        a_all, b_all = a.map(gather), b.map(gather)
        groups_all = None if group_ids is None else all_gather_no_grad(group_ids)
        scale = self.logit_scale()
        eps, chunk = cfg.label_smoothing, INFO_NCE_CHUNK_ELEMENTS
        if cfg.local_loss:
            n = a.batch_size
            positive = torch.arange(n, device=scale.device) + rank * n
            sim_ab = self._tempered(self.similarity(a, b_all), a)
            sim_ba = self._tempered(self.similarity(b, a_all), b)
            loss_ab = info_nce(sim_ab, scale, positive, group_ids, groups_all, eps, False, chunk)
            loss_ba = info_nce(sim_ba, scale, positive, group_ids, groups_all, eps, False, chunk)
            return (loss_ab + loss_ba) / 2
        sim = self.similarity(a_all, b_all)
        if cfg.uncertainty_temperature > 0:  # each direction's rows tempered by their own query's variance
            loss_ab = info_nce(self._tempered(sim, a_all), scale, None, groups_all, groups_all, eps, False, chunk)
            loss_ba = info_nce(self._tempered(sim.T, b_all), scale, None, groups_all, groups_all, eps, False, chunk)
            return (loss_ab + loss_ba) / 2
        return info_nce(sim, scale, None, groups_all, groups_all, eps, True, chunk)

    def _tempered(self, sim: Tensor, queries: Distribution) -> Tensor:
        """The similarities of each query's row divided by 1 + loss.uncertainty_temperature x its total variance."""
        beta = self.cfg.uncertainty_temperature
        if beta == 0:
            return sim
        variance = mixture_total_variance(queries).to(sim.dtype)  # type: ignore[arg-type]
        return sim / (1.0 + beta * variance)[:, None]

    def _check(self, a: Distribution, b: Distribution, group_ids: Tensor | None) -> None:
        if family_of(a) is not self.family or family_of(b) is not self.family:
            raise TypeError(
                f"model.geometry {self.geometry!r} expects {self.family.batch_type.__name__} on both sides, "
                f"got {type(a).__name__} and {type(b).__name__}"
            )
        if a.batch_size != b.batch_size:
            raise ValueError(f"both sides need the same batch size, got {a.batch_size} and {b.batch_size}")
        if self.geometry == "point" and (a.n_components != 1 or b.n_components != 1):
            raise ValueError(f"model.geometry 'point' needs K = 1, got {a.n_components} and {b.n_components}")
        if group_ids is not None and tuple(group_ids.shape) != (a.batch_size,):
            raise ValueError(f"group_ids must be ({a.batch_size},), got {tuple(group_ids.shape)}")
