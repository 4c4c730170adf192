"""The whole evaluation of a trained model on one split: retrieval for every configured pair in both directions,
uncertainty against error, hierarchy (containment AUC, level-wise R@1) and composition (compose(parts) -> items).
Returns flat metrics plus the curves and top-k lists that the report turns into plot data and image grids."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from multigeometry.config import EvalConfig
from multigeometry.evaluation.composition import composition_metrics
from multigeometry.evaluation.embed import SplitEmbeddings, embed_split
from multigeometry.evaluation.hierarchy import (
    atom_matrix,
    blockwise_auc,
    inclusion_mask,
    pad_columns,
)
from multigeometry.evaluation.retrieval import (
    blockwise_topk,
    rank_blocks,
    recall_curve,
    slice_rows,
    summarize,
)
from multigeometry.evaluation.sharded import rank_by_groups_over_ranks
from multigeometry.evaluation.temporal import temporal_metrics
from multigeometry.evaluation.uncertainty import (
    ambiguity_metrics,
    certain_recall,
    decile_recall,
    severities,
    spearman,
)
from multigeometry.geometry.distribution import containment_score, device_of, has_containment
from multigeometry.geometry.distribution import uncertainty as query_uncertainty
from multigeometry.inference import TrainedModel
from multigeometry.paths import shards_dir

log = logging.getLogger(__name__)


@dataclass
class TopK:
    """The best `k` items of a few queries of one direction, for the image grids: row indices into the split."""

    query_modality: str
    item_modality: str
    query_rows: list[int]
    item_rows: list[list[int]]
    correct: list[list[bool]]


@dataclass
class EvalResult:
    metrics: dict[str, float]
    recall_curves: dict[str, list[float]] = field(default_factory=dict)  # direction -> R@K, K = 1..curve_max_k
    certain_curves: dict[str, dict[int, float]] = field(default_factory=dict)  # direction -> {q%: R@1}
    decile_curves: dict[str, list[float]] = field(default_factory=dict)  # direction -> R@1, most certain decile first
    top_k: dict[str, TopK] = field(default_factory=dict)
    embeddings: SplitEmbeddings | None = None


def eval_device(cfg: EvalConfig) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("eval.device is 'cuda' but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


def directions(trained: TrainedModel) -> list[tuple[str, str]]:
    """(query, item) modality pairs: each configured pair both ways, in params order, without repeats."""
    out: list[tuple[str, str]] = []
    for p in trained.params.pairs.pairs:
        for d in ((p.a, p.b), (p.b, p.a)):
            if d not in out:
                out.append(d)
    return out


def evaluate_split(
    trained: TrainedModel, root: Path, split: str | None = None, cfg: EvalConfig | None = None
) -> EvalResult:
    cfg = cfg or trained.params.eval
    split = split or cfg.split
    emb = embed_split(trained, shards_dir(trained.params, root), split, cfg.batch_size)
    result = EvalResult(metrics={}, embeddings=emb)
    recalls, rhos = [], []
    ambiguity_scores: dict[str, list[float]] = {}
    for q, i in directions(trained):
        if q not in emb.dists or i not in emb.dists:
            log.warning("split %s has no %s or no %s samples: %s -> %s not evaluated", split, q, i, q, i)
            continue
        name = f"{q}_to_{i}"
        rankings = rank_by_groups_over_ranks(
            emb.dists[q], emb.dists[i], trained.similarity, emb.groups(q), emb.groups(i), cfg.block_size
        )
        summary = summarize(rankings, cfg.ks)
        if not summary:
            log.warning("%s: no query of %s has a positive among the items", split, name)
            continue
        result.metrics.update({f"{name}/{k}": v for k, v in summary.items()})
        recalls.append(summary["R@1"])
        result.recall_curves[name] = recall_curve(rankings, cfg.curve_max_k)
        uncertainty = query_uncertainty(emb.dists[q], cfg.mixture_uncertainty)
        if uncertainty is not None:
            valid = rankings.valid
            u, ranks = uncertainty.cpu()[valid], rankings.first_rank[valid]
            rho = spearman(u, ranks.to(torch.float64))
            if not math.isnan(rho):
                result.metrics[f"{name}/uncertainty_spearman"] = rho
                rhos.append(rho)
            result.certain_curves[name] = certain_recall(u, ranks, cfg.uncertainty_quantiles)
            deciles = decile_recall(u, ranks)
            if deciles:
                result.decile_curves[name] = deciles
                result.metrics[f"{name}/R@1_most_certain_decile"] = deciles[0]
                result.metrics[f"{name}/R@1_least_certain_decile"] = deciles[-1]
            severity = severities([emb.ambiguity[r] for r in emb.rows[q].tolist()], q)[valid]
            for key, value in ambiguity_metrics(u, severity).items():
                result.metrics[f"{name}/{key}"] = value
                ambiguity_scores.setdefault(key, []).append(value)
        if cfg.grid_queries > 0:
            result.top_k[name] = _top_k(trained, emb, q, i, cfg)
    if recalls:
        result.metrics["mean_R@1"] = sum(recalls) / len(recalls)
    if rhos:
        result.metrics["mean_uncertainty_spearman"] = sum(rhos) / len(rhos)
    for key, values in ambiguity_scores.items():
        result.metrics[f"mean_{key}"] = sum(values) / len(values)
    if cfg.hierarchy and emb.descriptions is not None:
        result.metrics.update(hierarchy_metrics(trained, emb, cfg))
    if cfg.composition:
        result.metrics.update(composition_metrics(emb, trained.similarity, cfg.block_size))
    if cfg.temporal and emb.temporal is not None:
        result.metrics.update(temporal_metrics(emb.temporal, trained.similarity))
    return result


def evaluate_trained(
    trained: TrainedModel, root: Path, split: str | None = None, cfg: EvalConfig | None = None
) -> dict[str, float]:
    """Flat metrics (`image_to_text/R@1`, ..., `mean_R@1`) of `trained` on `split` (default: eval.split) of the
    shards under `root`; `cfg` defaults to the eval section the model was trained with."""
    return evaluate_split(trained, root, split, cfg).metrics


def hierarchy_metrics(trained: TrainedModel, emb: SplitEmbeddings, cfg: EvalConfig) -> dict[str, float]:
    """Per modality m: `hierarchy/m/containment_AUC` (geometries with a containment score) and
    `hierarchy/m/level<l>/R@1`: each sample's ancestors at level l ranked by similarity among that level's
    descriptions; plus their means over modalities."""
    desc = emb.descriptions
    assert desc is not None
    vocabulary: dict[str, int] = {}
    desc_atoms = atom_matrix(desc.atoms, vocabulary)
    row_atoms = atom_matrix(emb.atoms, vocabulary)
    width = len(vocabulary)
    desc_atoms, row_atoms = pad_columns(desc_atoms, width), pad_columns(row_atoms, width)
    device = device_of(desc.dists)
    out: dict[str, float] = {}
    aucs: list[float] = []
    level_r1: dict[int, list[float]] = {}
    for m, dist in emb.dists.items():
        samples = row_atoms[emb.rows[m]].to(device)
        gen = desc_atoms.to(device)
        if has_containment(dist):
            auc = blockwise_auc(
                lambda i0, i1, dist=dist: containment_score(slice_rows(desc.dists, i0, i1), dist),
                lambda i0, i1, samples=samples, gen=gen: inclusion_mask(gen[i0:i1], samples),
                len(desc.texts),
                cfg.block_size,
            )
            if not math.isnan(auc):
                out[f"hierarchy/{m}/containment_AUC"] = auc
                aucs.append(auc)
        for level in range(desc.n_levels):
            idx = desc.at_level(level).to(device)
            if idx.numel() == 0:
                continue
            cands = desc.dists.map(lambda t, idx=idx: t[idx])
            level_atoms = gen[idx]
            rankings = rank_blocks(
                lambda i0, i1, dist=dist, cands=cands: trained.similarity(slice_rows(dist, i0, i1), cands),
                lambda i0, i1, samples=samples, level_atoms=level_atoms: inclusion_mask(level_atoms, samples[i0:i1]).T,
                dist.batch_size,
                cfg.block_size,
            )
            summary = summarize(rankings, (1,))
            if summary:
                out[f"hierarchy/{m}/level{level}/R@1"] = summary["R@1"]
                level_r1.setdefault(level, []).append(summary["R@1"])
    if aucs:
        out["hierarchy/containment_AUC"] = sum(aucs) / len(aucs)
    out.update(generality_metrics(emb, cfg))
    for level, values in sorted(level_r1.items()):
        out[f"hierarchy/level{level}/R@1"] = sum(values) / len(values)
    return out


def generality_metrics(emb: SplitEmbeddings, cfg: EvalConfig) -> dict[str, float]:
    """Whether general descriptions are the uncertain ones (ProLIP's check of its text uncertainty): the Spearman
    correlation of a description's uncertainty with how general it is, over the split's hierarchy descriptions
    (level 0 the most general) and the samples' own captions (the most specific level); and each level's mean
    uncertainty."""
    desc = emb.descriptions
    if desc is None:
        return {}
    u_desc = query_uncertainty(desc.dists, cfg.mixture_uncertainty)
    if u_desc is None:
        return {}
    levels = [min(lv) if lv else desc.n_levels for lv in desc.levels]
    uncertainty = [u_desc.cpu().double()]
    if "text" in emb.dists:
        u_text = query_uncertainty(emb.dists["text"], cfg.mixture_uncertainty)
        if u_text is not None:
            uncertainty.append(u_text.cpu().double())
            levels += [desc.n_levels] * u_text.numel()
    u = torch.cat(uncertainty)
    level = torch.tensor(levels, dtype=torch.float64)
    out: dict[str, float] = {}
    rho = spearman(u, -level)  # the more general (lower level), the more uncertain
    if not math.isnan(rho):
        out["hierarchy/generality_spearman"] = rho
    for value in sorted(set(levels)):
        out[f"hierarchy/level{value}/mean_uncertainty"] = float(u[level == value].mean())
    return out


def _top_k(trained: TrainedModel, emb: SplitEmbeddings, q: str, i: str, cfg: EvalConfig) -> TopK:
    """The first `grid_queries` queries (in split order, which is deterministic) and their best `grid_k` items."""
    n = min(cfg.grid_queries, emb.dists[q].batch_size)
    queries = slice_rows(emb.dists[q], 0, n)
    _, idx = blockwise_topk(queries, emb.dists[i], trained.similarity, cfg.grid_k, cfg.block_size)
    q_rows = emb.rows[q][:n].tolist()
    i_rows = emb.rows[i].cpu()
    item_rows = [[int(i_rows[j]) for j in row] for row in idx.tolist()]
    groups = emb.group_ids
    correct = [[bool(groups[r] == groups[qr]) for r in rows] for qr, rows in zip(q_rows, item_rows, strict=True)]
    return TopK(q, i, q_rows, item_rows, correct)

