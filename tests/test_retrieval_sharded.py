"""Exact ranks with the gallery sharded (in one process, and over two Gloo ranks) equal the unsharded ranks; so do the
evaluate stage's metrics under two ranks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from multigeometry.evaluation.retrieval import Rankings, positive_lists, rank_by_groups, slice_rows
from multigeometry.evaluation.sharded import (
    DistributedReducer,
    GalleryShard,
    combine,
    count_partials,
    positive_partials,
    rank_by_groups_over_ranks,
    rank_by_groups_sharded,
    rankings_from_partials,
    shard_bounds,
    shard_positive_scores,
    split_gallery,
)
from multigeometry.geometry.mixture import MixtureParams, csd_similarity
from tests.test_losses_ddp import free_port

N_QUERIES, N_ITEMS, DIM = 41, 67, 5


def dot(a: MixtureParams, b: MixtureParams) -> torch.Tensor:
    return a.mu[:, 0] @ b.mu[:, 0].T


def tied_data(seed: int, n_groups: int = 9) -> tuple[MixtureParams, MixtureParams, torch.Tensor, torch.Tensor]:
    """Small integer vectors (exact dot products, ties everywhere); groups with several positives, and query groups
    that no item has."""
    g = torch.Generator().manual_seed(seed)
    queries = MixtureParams.point(torch.randint(-1, 2, (N_QUERIES, DIM), generator=g).float())
    items = MixtureParams.point(torch.randint(-1, 2, (N_ITEMS, DIM), generator=g).float())
    query_groups = torch.randint(0, n_groups + 4, (N_QUERIES,), generator=g)
    item_groups = torch.randint(0, n_groups, (N_ITEMS,), generator=g)
    return queries, items, query_groups, item_groups


def shards_at(items: MixtureParams, bounds: list[tuple[int, int]]) -> list[GalleryShard]:
    return [GalleryShard(slice_rows(items, i0, i1), i0) for i0, i1 in bounds]


def assert_same(got: Rankings, want: Rankings) -> None:
    assert torch.equal(got.first_rank, want.first_rank)
    assert torch.equal(got.ap_at_r, want.ap_at_r)
    assert torch.equal(got.n_positive, want.n_positive)


UNEVEN = {
    "one shard": [(0, N_ITEMS)],
    "uneven": [(0, 5), (5, 40), (40, 41), (41, N_ITEMS)],
    "empty shards": [(0, 0), (0, 30), (30, 30), (30, N_ITEMS), (N_ITEMS, N_ITEMS)],
}


@pytest.mark.parametrize("block_size", [1, 16, 1000])
@pytest.mark.parametrize("layout", list(UNEVEN))
def test_sharded_ranks_equal_unsharded_with_ties(layout: str, block_size: int) -> None:
    queries, items, qg, ig = tied_data(seed=block_size)
    want = rank_by_groups(queries, items, dot, qg, ig, block_size)
    assert (~want.valid).any() and (want.n_positive > 1).any()  # queries without positives, multi-positive groups
    assert (want.first_rank > 1).any()
    got = rank_by_groups_sharded(queries, shards_at(items, UNEVEN[layout]), dot, qg, ig, block_size)
    assert_same(got, want)


@pytest.mark.parametrize("layout", list(UNEVEN))
def test_a_driver_combining_two_passes_of_workers_gets_the_unsharded_rankings(layout: str) -> None:
    queries, items, qg, ig = tied_data(seed=9)
    want = rank_by_groups(queries, items, dot, qg, ig, 16)
    shards = shards_at(items, UNEVEN[layout])  # each a worker (a Dask task) in a real fan-out
    lists = positive_lists(qg, ig)
    values = combine([positive_partials(queries, shard, dot, lists, 16) for shard in shards], "max")
    counts = combine([count_partials(queries, shard, dot, values, 16) for shard in shards], "sum")
    assert_same(rankings_from_partials(values, counts, lists), want)


def test_many_positives_a_query_take_the_bucketing_count() -> None:
    queries, items, qg, ig = tied_data(seed=3, n_groups=2)  # ~33 positives a query, above COUNT_PASSES_MAX
    want = rank_by_groups(queries, items, dot, qg, ig, 8)
    assert int(want.n_positive.max()) > 8
    assert_same(rank_by_groups_sharded(queries, split_gallery(items, 3), dot, qg, ig, 8), want)


def test_collapsed_scores_keep_the_pessimistic_ranks() -> None:
    queries, items, qg, ig = tied_data(seed=4)
    same = MixtureParams.point(torch.ones(N_ITEMS, DIM))
    want = rank_by_groups(queries, same, dot, qg, ig)
    got = rank_by_groups_sharded(queries, split_gallery(same, 4), dot, qg, ig)
    assert_same(got, want)
    assert bool((got.first_rank[got.valid] == N_ITEMS - got.n_positive[got.valid] + 1).all())


def test_mixture_similarity_sharded() -> None:
    g = torch.Generator().manual_seed(5)

    def mixtures(n: int) -> MixtureParams:
        return MixtureParams(torch.randn(n, 2, generator=g), torch.randn(n, 2, DIM, generator=g),
                             torch.randn(n, 2, DIM, generator=g) - 2)

    queries, items = mixtures(N_QUERIES), mixtures(N_ITEMS)
    qg, ig = torch.randint(0, 20, (N_QUERIES,), generator=g), torch.randint(0, 15, (N_ITEMS,), generator=g)
    want = rank_by_groups(queries, items, csd_similarity, qg, ig, 16)
    assert_same(rank_by_groups_sharded(queries, split_gallery(items, 3), csd_similarity, qg, ig, 16), want)


def test_shard_bounds_cover_the_gallery_contiguously() -> None:
    assert shard_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert shard_bounds(2, 4) == [(0, 1), (1, 2), (2, 2), (2, 2)]
    assert shard_bounds(0, 2) == [(0, 0), (0, 0)]
    with pytest.raises(ValueError):
        shard_bounds(5, 0)


def test_shard_positive_scores_hold_only_the_shards_positives() -> None:
    scores = torch.tensor([[1.0, 2.0, 3.0]])
    lists = torch.tensor([[9, 11, 13, -1]])  # global items 9..11 live in the shard at offset 9
    got = shard_positive_scores(scores, lists, offset=9)
    inf = float("-inf")
    assert torch.equal(got, torch.tensor([[1.0, 3.0, inf, inf]]))
    assert torch.equal(shard_positive_scores(scores[:, :0], lists, offset=9), torch.full((1, 4), inf))
    assert torch.equal(combine([got, torch.tensor([[inf, inf, 5.0, inf]])], "max"), torch.tensor([[1.0, 3, 5, inf]]))


def test_shards_outside_the_group_ids_are_refused() -> None:
    queries, items, qg, ig = tied_data(seed=6)
    with pytest.raises(ValueError, match="outside"):
        rank_by_groups_sharded(queries, [GalleryShard(items, 1)], dot, qg, ig)
    with pytest.raises(ValueError, match="no gallery shard"):
        rank_by_groups_sharded(queries, [], dot, qg, ig)


# Per rank, the shards it holds: rank 1 holds two (combined locally before the all-reduce) in one layout and none of
# the items (one empty shard) in the other.
RANK_LAYOUTS = {
    "uneven": [[(0, 20)], [(20, 50), (50, N_ITEMS)]],
    "empty rank": [[(0, N_ITEMS)], [(N_ITEMS, N_ITEMS)]],
}


def worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        queries, items, qg, ig = tied_data(seed=7)
        results = {
            name: rank_by_groups_sharded(queries, shards_at(items, layout[rank]), dot, qg, ig, 16,
                                         DistributedReducer())
            for name, layout in RANK_LAYOUTS.items()
        }
        results["over ranks"] = rank_by_groups_over_ranks(queries, items, dot, qg, ig, 16)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_give_the_unsharded_rankings(tmp_path: Path) -> None:
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    queries, items, qg, ig = tied_data(seed=7)
    want = rank_by_groups(queries, items, dot, qg, ig, 16)
    for rank in range(2):
        results = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        for name in [*RANK_LAYOUTS, "over ranks"]:
            assert_same(results[name], want)


def test_over_ranks_in_one_process_is_rank_by_groups() -> None:
    queries, items, qg, ig = tied_data(seed=8)
    want = rank_by_groups(queries, items, dot, qg, ig, 7)
    assert_same(rank_by_groups_over_ranks(queries, items, dot, qg, ig, 7), want)


def evaluate_worker(rank: int, port: int, params: object, root: Path, out_dir: str) -> None:
    import multigeometry.evaluation.suite as suite
    from multigeometry.distributed import rank_and_world
    from multigeometry.stages.evaluate import evaluate

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    torch.set_num_threads(1)
    seen: list[tuple[int, int]] = []  # (rank, world) at each retrieval ranking: did it run sharded?
    unsharded = suite.rank_by_groups_over_ranks

    def recording(*args: object, **kwargs: object) -> Rankings:
        seen.append(rank_and_world())
        return unsharded(*args, **kwargs)  # type: ignore[arg-type]

    suite.rank_by_groups_over_ranks = recording  # type: ignore[assignment]
    evaluate(params, root)  # type: ignore[arg-type]
    (Path(out_dir) / f"seen{rank}.json").write_text(json.dumps(seen))


@pytest.mark.slow
def test_evaluate_stage_under_two_ranks_gives_the_same_metrics(tiny_trained, tmp_path: Path) -> None:
    from multigeometry.evaluation.report import METRICS_FILE
    from multigeometry.paths import eval_dir
    from multigeometry.stages.evaluate import evaluate

    params, root = tiny_trained
    metrics_file = evaluate(params, root) / METRICS_FILE
    one = json.loads(metrics_file.read_text())
    metrics_file.unlink()
    mp.spawn(evaluate_worker, args=(free_port(), params, root, str(tmp_path)), nprocs=2, join=True)
    two = json.loads((eval_dir(params, root) / METRICS_FILE).read_text())
    assert one == two
    for rank in range(2):
        seen = json.loads((tmp_path / f"seen{rank}.json").read_text())
        assert seen and all(s == [rank, 2] for s in seen)
