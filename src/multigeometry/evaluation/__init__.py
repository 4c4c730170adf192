"""Evaluation of a trained model: retrieval for every modality pair and direction, uncertainty against error, and
hierarchy (containment AUC, level-wise retrieval). The metric functions are pure (tensors in, numbers out) and
computed in blocks; `evaluate_trained` runs them all on one split of the shards."""

from multigeometry.evaluation.retrieval import (
    Rankings,
    block_rankings,
    blockwise_topk,
    rank_blocks,
    rank_by_groups,
    recall_curve,
    summarize,
)
from multigeometry.evaluation.suite import EvalResult, directions, eval_device, evaluate_split, evaluate_trained

__all__ = [
    "EvalResult",
    "Rankings",
    "block_rankings",
    "blockwise_topk",
    "directions",
    "eval_device",
    "evaluate_split",
    "evaluate_trained",
    "rank_blocks",
    "rank_by_groups",
    "recall_curve",
    "summarize",
]
