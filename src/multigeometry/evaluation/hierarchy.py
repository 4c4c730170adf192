"""Hierarchy metrics: how well a containment score separates containing pairs (a general description ⊇ a specific
description or item) from the rest (AUC), for cones and for mixtures, and which ground truth says what contains what.

Ground truth: every description and every sample carries a set of atoms; a description contains a sample when its
atoms are a subset of the sample's. The world gives concept sets (`concepts`, `hierarchy_concepts`), so "a picture of
a diamond" contains every item with a diamond of the right count; without concepts a description's atom is the
description itself and a sample's atoms are its own hierarchy, so a description contains exactly the rows that list it.

Scores (higher = more contained):
- cones: −containment(outer, inner), the angle by which the inner cap leaves the outer one (0 inside);
- mixtures: −KL(inner ‖ outer), the general distribution should put mass wherever the specific one has it
  (Hershey & Olsen's variational approximation, `geometry/mixture_kl.py`).
Both are the geometry's own (`geometry.distribution.containment_score`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

ScoreBlock = Callable[[int, int], Tensor]


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
