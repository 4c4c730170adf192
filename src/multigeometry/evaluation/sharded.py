"""Exact retrieval ranks with the gallery (the items) sharded over processes: DDP ranks or Dask-style workers.

Each process holds a contiguous slice of the items (a `GalleryShard`, with the global index of its first item) and
all the queries. For each block of queries it scores the block against its slice, then two reductions over the
processes give what `block_rankings` computes on one machine:

1. each positive's score: a process knows the scores of the positives inside its slice and puts −inf for the rest;
   the element-wise MAX over the processes fills in every one;
2. the number of items scoring at or above each positive (`at_or_above`): each process counts its slice; the SUM over
   the processes is the count over the whole gallery.

Ranks and AP@R then follow from the counts as on one machine (`ranks_from_counts`), so the rankings equal
`rank_by_groups`'s exactly, ties included — as long as the similarity gives a pair the same score whether the item is
scored within its slice or within the whole gallery (a matrix product of another shape may round differently in the
last bit, which can only matter for scores that tie to within that). A DDP rank never holds more than one block ×
its slice of scores, and only (block, P) positive scores and counts cross between processes.

`rank_by_groups_over_ranks` is what the evaluate stage calls: `rank_by_groups` in one process, and under torchrun
(WORLD_SIZE > 1) each rank's contiguous slice of the items, combined over the ranks.

The combine step is a `Reducer`: `DistributedReducer` all-reduces over torch.distributed (Gloo or NCCL, under
torchrun); `InProcessReducer` combines the partials of several shards held by one process.

Workers that cannot all-reduce in lockstep (Dask tasks, a driver's fan-out) take two passes instead, each a task per
shard: `positive_partials` (every query's positive scores inside the shard, `positive_lists` giving the positives)
combined by `combine(..., "max")`, then `count_partials` (the shard's counts at or above those scores) combined by
`combine(..., "sum")`; the driver then gets the rankings from `rankings_from_partials`. Each worker scores its shard
twice, against once under DDP.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.distributed as dist
from torch import Tensor

from multigeometry.distributed import rank_and_world
from multigeometry.evaluation.retrieval import (
    Rankings,
    Workspace,
    at_or_above,
    check_finite,
    no_positives,
    positive_lists,
    rank_by_groups,
    rank_query_blocks,
    ranks_from_counts,
    slice_rows,
)
from multigeometry.geometry.distribution import Distribution, device_of

log = logging.getLogger(__name__)

ReduceOp = Literal["max", "sum"]
Similarity = Callable[[Distribution, Distribution], Tensor]


class Reducer(Protocol):
    def reduce(self, parts: Sequence[Tensor], op: ReduceOp) -> Tensor:
        """The element-wise `op` of the partials of the shards this process holds and of every other process's."""
        ...


def combine(parts: Sequence[Tensor], op: ReduceOp) -> Tensor:
    """The element-wise max or sum of equally shaped partials (at least one)."""
    if not parts:
        raise ValueError("nothing to combine: no shard")
    stacked = torch.stack(list(parts))
    return stacked.amax(dim=0) if op == "max" else stacked.sum(dim=0)


class InProcessReducer:
    """Every shard is in this process: combining their partials is the whole reduction."""

    def reduce(self, parts: Sequence[Tensor], op: ReduceOp) -> Tensor:
        return combine(parts, op)


class DistributedReducer:
    """One or more shards in each process of a torch.distributed group: combined here, then all-reduced."""

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        self.group = group

    def reduce(self, parts: Sequence[Tensor], op: ReduceOp) -> Tensor:
        out = combine(parts, op).contiguous()
        dist.all_reduce(out, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM, group=self.group)
        return out


@dataclass(frozen=True)
class GalleryShard:
    """The items `offset` .. `offset + items.batch_size` of the gallery."""

    items: Distribution
    offset: int


def shard_bounds(n_items: int, n_shards: int) -> list[tuple[int, int]]:
    """Contiguous (start, stop) slices of `n_items` items for `n_shards` shards, sizes differing by at most one."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be at least 1, got {n_shards}")
    base, extra = divmod(n_items, n_shards)
    stops = [(s + 1) * base + min(s + 1, extra) for s in range(n_shards)]
    return list(zip([0, *stops[:-1]], stops, strict=True))


def split_gallery(items: Distribution, n_shards: int) -> list[GalleryShard]:
    return [GalleryShard(slice_rows(items, i0, i1), i0) for i0, i1 in shard_bounds(items.batch_size, n_shards)]


def shard_positive_scores(scores: Tensor, lists: Tensor, offset: int) -> Tensor:
    """The scores (b, P) of the positives (global index lists, −1 padded) that lie in a shard whose scores (b, n)
    start at global item `offset`; −inf for positives outside it and for padding."""
    if scores.shape[1] == 0:
        return torch.full(lists.shape, float("-inf"), dtype=scores.dtype, device=scores.device)
    local = lists - offset
    inside = (lists >= 0) & (local >= 0) & (local < scores.shape[1])
    return scores.gather(1, local.clamp(0, scores.shape[1] - 1)).masked_fill(~inside, float("-inf"))


def positive_partials(
    queries: Distribution, shard: GalleryShard, similarity: Similarity, lists: Tensor, block_size: int = 1024
) -> Tensor:
    """First pass of a worker: the scores (Q, P) of the positives (global index lists) inside `shard`, −inf for the
    others; the element-wise max over all shards is every positive's score."""
    blocks = [
        shard_positive_scores(similarity(slice_rows(queries, i0, i1), shard.items), lists[i0:i1], shard.offset)
        for i0, i1 in query_blocks(queries.batch_size, block_size)
    ]
    return torch.cat(blocks) if blocks else torch.full(lists.shape, float("-inf"))


def count_partials(
    queries: Distribution, shard: GalleryShard, similarity: Similarity, values: Tensor, block_size: int = 1024
) -> Tensor:
    """Second pass of a worker: how many items of `shard` score at or above each positive score (Q, P) of `values`
    (the first pass combined); summed over all shards."""
    workspace = Workspace()

    def counts(i0: int, i1: int) -> Tensor:
        scores = similarity(slice_rows(queries, i0, i1), shard.items)
        check_finite(scores)
        return at_or_above(scores, values[i0:i1], workspace.take(scores, scores.numel()))

    blocks = [counts(i0, i1) for i0, i1 in query_blocks(queries.batch_size, block_size)]
    return torch.cat(blocks) if blocks else torch.zeros(values.shape, dtype=torch.long)


def rankings_from_partials(values: Tensor, counts: Tensor, lists: Tensor) -> Rankings:
    """The rankings from the combined passes: the positive scores `values` and the counts at or above them."""
    order = values.argsort(dim=1, descending=True)  # tied scores have equal counts: their order does not matter
    n_pos = (lists >= 0).sum(dim=1)
    first, ap = ranks_from_counts(values.gather(1, order), counts.gather(1, order), n_pos)
    return Rankings(first.cpu(), ap.cpu(), n_pos.cpu())


def query_blocks(n_queries: int, block_size: int) -> list[tuple[int, int]]:
    return [(i0, min(n_queries, i0 + block_size)) for i0 in range(0, n_queries, block_size)]


def sharded_block_rankings(
    score_parts: Sequence[tuple[Tensor, int]], lists: Tensor, reducer: Reducer, workspace: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """`block_rankings` of one block of queries whose scores this process holds for some shards of the gallery:
    `score_parts` is each shard's (scores (b, n), offset), `lists` the positives as global index lists (b, P). Every
    process must call it for the same blocks, with the same `lists`."""
    for scores, _ in score_parts:
        check_finite(scores)
    n_pos = (lists >= 0).sum(dim=1)
    if lists.shape[0] == 0 or int(n_pos.max()) == 0:
        return no_positives(n_pos)
    lists = lists[:, : int(n_pos.max())]
    values = reducer.reduce([shard_positive_scores(s, lists, offset) for s, offset in score_parts], "max")
    values = values.sort(dim=1, descending=True).values
    counts = reducer.reduce([at_or_above(s, values, workspace) for s, _ in score_parts], "sum")
    first, ap = ranks_from_counts(values, counts, n_pos)
    return first, ap, n_pos


def rank_by_groups_sharded(
    queries: Distribution,
    shards: Sequence[GalleryShard],
    similarity: Similarity,
    query_groups: Tensor,
    item_groups: Tensor,
    block_size: int = 1024,
    reducer: Reducer | None = None,
) -> Rankings:
    """`rank_by_groups` with the gallery split into `shards`: those this process holds (one per DDP rank, or all of
    them with the default `InProcessReducer`). `item_groups` are the whole gallery's group ids, indexed globally."""
    reducer = reducer or InProcessReducer()
    if not shards:
        raise ValueError("no gallery shard")
    n_q = queries.batch_size
    if query_groups.shape != (n_q,):
        raise ValueError(f"query group ids {tuple(query_groups.shape)} do not match {n_q} queries")
    for shard in shards:
        if shard.offset < 0 or shard.offset + shard.items.batch_size > item_groups.shape[0]:
            raise ValueError(
                f"shard {shard.offset}..{shard.offset + shard.items.batch_size} lies outside the "
                f"{item_groups.shape[0]} items of item_groups"
            )
    device = device_of(queries)
    lists = positive_lists(query_groups.to(device), item_groups.to(device))
    workspace = Workspace()  # one shard's block of comparisons, reused by every shard and block

    def rank_block(i0: int, i1: int) -> tuple[Tensor, Tensor, Tensor]:
        block = slice_rows(queries, i0, i1)
        parts = [(similarity(block, shard.items), shard.offset) for shard in shards]
        ws = workspace.take(parts[0][0], max(s.numel() for s, _ in parts))
        return sharded_block_rankings(parts, lists[i0:i1], reducer, ws)

    return rank_query_blocks(rank_block, n_q, block_size)


def rank_by_groups_over_ranks(
    queries: Distribution,
    items: Distribution,
    similarity: Similarity,
    query_groups: Tensor,
    item_groups: Tensor,
    block_size: int = 1024,
) -> Rankings:
    """`rank_by_groups`; running distributed, each rank scores the queries against its contiguous slice of the
    items only, and every rank gets the whole rankings. Every rank must call it with the same arguments."""
    rank, world = rank_and_world()
    if world == 1:
        return rank_by_groups(queries, items, similarity, query_groups, item_groups, block_size)
    i0, i1 = shard_bounds(items.batch_size, world)[rank]
    log.debug("rank %d of %d ranks items %d..%d of %d", rank, world, i0, i1, items.batch_size)
    shard = GalleryShard(slice_rows(items, i0, i1), i0)
    return rank_by_groups_sharded(
        queries, [shard], similarity, query_groups, item_groups, block_size, DistributedReducer()
    )
