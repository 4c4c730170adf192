"""Retrieval at scale: exact ranks through the project against a plain matmul + topk, and approximate search (FAISS)
against exact search, on synthetic galleries (and optionally the real embeddings of a trained model).

exact: for each geometry and N, N queries against N items (query i's positive: item i), ranked by the evaluate
    stage's code (`rank_by_groups` with the geometry's own similarity, `geometry.similarity`, blocks of
    `--block` queries, counting ranks) against the anchor: a plain blockwise `matmul` + `topk(10)` over the same
    embedding vectors — the means of a point, the axes of a cone, the N·K component means of a mixture (against N·K
    query component means: the products a mixture similarity needs). Interleaved repeats, best of each; the ratio is
    the project's rate over the anchor's (anchor seconds / project seconds), target >= 0.5 (point, cone), >= 0.3
    (K = 2 mixture).
ann: for each geometry and N, the approximate index (`multigeometry.ann`, the defaults of `registry.ann_*` unless
    given) built over the items, then the top 10 of `--ann-queries` queries: recall@10 against the exact top 10 (the
    share of the exact top 10 that the approximate search returns), queries/s of both, build time, the index's size
    and the process's peak resident memory. Target: recall@10 >= 0.95 at 1 M items. `--candidates 128 256 512`
    measures several candidate counts on one index (built once).
real: the same on the embeddings of a trained model's split (`--model data/models/default/model.pt`): every text
    query against every other modality, approximate (threshold forced to 0) against exact.
sharded: exact ranks with the gallery split into `--shards` contiguous shards (`rank_by_groups_sharded`) against the
    unsharded `rank_by_groups`, `--queries` queries (default N) against N items, each configuration in fresh
    processes: unsharded (one process), every shard in one process (`InProcessReducer`), and one Gloo DDP rank a
    shard (`DistributedReducer`, spawned processes). Per process: the ranking's seconds, its peak resident memory
    (VmHWM reset after the data is built, so it is what the ranking adds to the queries and the shard it holds) and
    whether its rankings equal the unsharded ones.

Synthetic data: clustered like real embeddings, not uniform noise (on which no index beats a scan): 2·sqrt(N) unit
cluster centres in D dims, items scattered around them (cosine ~0.8 to their centre), each query a noisy copy of its
item (cosine ~0.9). Mixtures have K components scattered around the item, log-variances in U(−9, −3) and random
weights; cones an aperture in U(0.05, 1.2).

Usage: OMP_NUM_THREADS=1 python benchmarks/bench_retrieval.py exact [--sizes 1000 10000 50000] [--repeats 3]
       OMP_NUM_THREADS=1 python benchmarks/bench_retrieval.py ann [--sizes 10000 100000 1000000]
       OMP_NUM_THREADS=1 python benchmarks/bench_retrieval.py real --model data/models/default/model.pt
       OMP_NUM_THREADS=1 python benchmarks/bench_retrieval.py sharded [--sizes 10000 100000] [--queries 10000]
           [--shards 2 4] [--geometries point mixture]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import multiprocessing as mp
import os
import platform
import re
import resource
import sys
import tempfile
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from multigeometry.ann import ApproximateIndex, approximate_topk
from multigeometry.config import RegistryConfig
from multigeometry.evaluation.retrieval import blockwise_topk, rank_by_groups, summarize
from multigeometry.evaluation.sharded import (
    DistributedReducer,
    GalleryShard,
    InProcessReducer,
    rank_by_groups_sharded,
    shard_bounds,
)
from multigeometry.geometry import ConeParams, MixtureParams
from multigeometry.geometry.similarity import Similarity

GEOMETRIES = {"point": ("point", 1), "cone": ("cone", 1), "mixture": ("mixture", 2)}


def machine() -> dict[str, Any]:
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": model, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "load_avg": os.getloadavg()}


def synthetic(n: int, d: int, geometry: str, k: int, seed: int, queries_of: Any = None) -> Any:
    """n items (or, with `queries_of`, noisy copies of its first n items as queries) of a clustered gallery."""
    g = torch.Generator().manual_seed(seed)
    if queries_of is None:
        n_clusters = max(1, int(2 * math.sqrt(n)))
        centres = F.normalize(torch.randn(n_clusters, d, generator=g), dim=-1)
        base = F.normalize(centres[torch.randint(0, n_clusters, (n,), generator=g)]
                           + 0.75 * torch.randn(n, d, generator=g) / math.sqrt(d), dim=-1)
    else:
        base = F.normalize(queries_of[:n] + 0.5 * torch.randn(n, d, generator=g) / math.sqrt(d), dim=-1)
    if geometry == "cone":
        return base, ConeParams(base, 0.05 + 1.15 * torch.rand(n, generator=g))
    if geometry == "point":
        return base, MixtureParams.point(base)
    mu = F.normalize(base[:, None, :] + 0.3 * torch.randn(n, k, d, generator=g) / math.sqrt(d), dim=-1)
    return base, MixtureParams(torch.randn(n, k, generator=g), mu, -9.0 + 6.0 * torch.rand(n, k, d, generator=g))


def similarity(geometry: str, k: int) -> Similarity:
    """The similarity of a model of `geometry` with k components under the default `loss.similarity: auto`."""
    return Similarity.for_model(geometry, "auto", k)


def anchor_vectors(dist: Any) -> torch.Tensor:
    if isinstance(dist, ConeParams):
        return dist.direction
    return dist.mu.reshape(-1, dist.mu.shape[-1])


def bench_exact(args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    for n in args.sizes:
        for name in args.geometries:
            geometry, k = GEOMETRIES[name]
            base, items = synthetic(n, args.dim, geometry, k, seed=1)
            _, queries = synthetic(n, args.dim, geometry, k, seed=2, queries_of=base)
            sim = similarity(geometry, k)
            groups = torch.arange(n)
            x, y = anchor_vectors(queries), anchor_vectors(items)
            qblock = args.block * (x.shape[0] // n)  # the same queries a block: their K component rows

            def project(queries: Any = queries, items: Any = items, sim: Similarity = sim,
                        groups: torch.Tensor = groups) -> float:
                rankings = rank_by_groups(queries, items, sim, groups, groups, args.block)
                return summarize(rankings, (1,))["R@1"]

            def anchor(x: torch.Tensor = x, y: torch.Tensor = y, qblock: int = qblock) -> None:
                for i0 in range(0, x.shape[0], qblock):
                    (x[i0:i0 + qblock] @ y.T).topk(10, dim=1)

            best = {"project": math.inf, "anchor": math.inf}
            load = [os.getloadavg()[0]]
            with torch.no_grad():
                for _ in range(args.repeats):
                    for job_name, job in (("anchor", anchor), ("project", project)):
                        t = time.perf_counter()
                        r1 = job()
                        best[job_name] = min(best[job_name], time.perf_counter() - t)
            load.append(os.getloadavg()[0])
            row = {"N": n, "geometry": name, "K": k, "D": args.dim, "project_s": best["project"],
                   "anchor_s": best["anchor"], "ratio": best["anchor"] / best["project"],
                   "target": 0.3 if name == "mixture" else 0.5, "R@1": r1, "load": load}
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


def recall_at(approx: torch.Tensor, exact: torch.Tensor) -> float:
    hits = (approx[:, :, None] == exact[:, None, :]).any(dim=2).sum()
    return float(hits) / exact.numel()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ann_rows(name: str, queries: Any, items: Any, similarity: Any, kind: str, tau: float, cfg: RegistryConfig,
             candidates: list[int], k: int = 10) -> list[dict[str, Any]]:
    """One index built over `items`, the exact top k once, then the approximate top k for each candidate count."""
    t = time.perf_counter()
    index = ApproximateIndex.build(items, kind, tau, cfg.ann_nlist, cfg.ann_train_per_list)  # type: ignore[arg-type]
    build_s = time.perf_counter() - t
    q = queries.batch_size
    with torch.no_grad():
        t = time.perf_counter()
        _, exact = blockwise_topk(queries, items, similarity, k, 256)
        exact_s = time.perf_counter() - t
        rows = []
        for c in candidates:
            t = time.perf_counter()
            _, approx = approximate_topk(queries, items, similarity, index, k, c, cfg.ann_nprobe)
            approx_s = time.perf_counter() - t
            rows.append({"geometry": name, "N": items.batch_size, "nlist": index.nlist, "nprobe": cfg.ann_nprobe,
                         "candidates": c, "recall@10": recall_at(approx, exact),
                         "top1_agree": float((approx[:, 0] == exact[:, 0]).double().mean()), "build_s": build_s,
                         "approx_qps": q / approx_s, "exact_qps": q / exact_s, "speedup": exact_s / approx_s,
                         "index_mib": len(index.to_bytes()) / 2**20, "peak_rss_mib": peak_rss_mib(),
                         "load": os.getloadavg()[0]})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def bench_ann(args: argparse.Namespace) -> list[dict[str, Any]]:
    cfg = RegistryConfig(**{key: value for key, value in (("ann_nprobe", args.nprobe), ("ann_nlist", args.nlist))
                            if value is not None})
    candidates = args.candidates or [cfg.ann_candidates]
    out = []
    for n in args.sizes:
        for name in args.geometries:
            geometry, k = GEOMETRIES[name]
            base, items = synthetic(n, args.dim, geometry, k, seed=1)
            _, queries = synthetic(min(n, args.ann_queries), args.dim, geometry, k, seed=2, queries_of=base)
            del base
            sim = similarity(geometry, k)
            out += ann_rows(name, queries, items, sim, sim.kind, sim.csd_tau, cfg, candidates)
    return out


def bench_real(args: argparse.Namespace) -> list[dict[str, Any]]:
    from pathlib import Path

    from multigeometry.evaluation.embed import embed_split
    from multigeometry.inference import load_trained
    from multigeometry.paths import shards_dir

    trained = load_trained(args.model)
    kind = trained.model.similarity.kind
    cfg = trained.params.registry
    out = []
    for split in args.splits:
        emb = embed_split(trained, shards_dir(trained.params, Path(args.root)), split, 256, verify="size")
        for m, items in emb.dists.items():
            if m == "text" or "text" not in emb.dists:
                continue
            out += ann_rows(f"text->{m} ({split})", emb.dists["text"], items, trained.similarity, kind,
                            trained.params.loss.csd_tau, cfg, args.candidates or [cfg.ann_candidates])
    return out


def status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    return int(match.group(1)) / 1024 if match else math.nan


def reset_peak_rss() -> bool:
    """Linux: reset VmHWM (the peak resident set) to the current resident set."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def sharded_job(job: dict[str, Any], rank: int, results: Any) -> None:
    """One process of a `sharded` configuration: builds the gallery, keeps its shards of it and all queries, ranks."""
    torch.set_num_threads(1)
    geometry, k = GEOMETRIES[job["geometry"]]
    n, n_q, shards = job["N"], job["queries"], job["shards"]
    base, items = synthetic(n, job["dim"], geometry, k, seed=1)
    _, queries = synthetic(n_q, job["dim"], geometry, k, seed=2, queries_of=base)
    bounds = shard_bounds(n, shards)
    own = {"unsharded": [(0, n)], "in-process": bounds, "ddp": [bounds[rank]]}[job["layout"]]
    held = [GalleryShard(items.map(lambda t, i0=i0, i1=i1: t[i0:i1].clone()), i0) for i0, i1 in own]
    del base, items
    gc.collect()
    score = similarity(geometry, k)
    groups, query_groups = torch.arange(n), torch.arange(n_q)
    if job["layout"] == "ddp":
        dist.init_process_group("gloo", init_method=job["init"], rank=rank, world_size=shards)
    reset = reset_peak_rss()
    before = status_mib("VmRSS")
    t = time.perf_counter()
    with torch.no_grad():
        if job["layout"] == "unsharded":
            rankings = rank_by_groups(queries, held[0].items, score, query_groups, groups, job["block"])
        else:
            reducer = DistributedReducer() if job["layout"] == "ddp" else InProcessReducer()
            rankings = rank_by_groups_sharded(queries, held, score, query_groups, groups, job["block"], reducer)
    seconds = time.perf_counter() - t
    if job["layout"] == "ddp":
        dist.destroy_process_group()
    # plain lists: a tensor would travel through shared memory that the exiting process takes with it
    results.put({"rank": rank, "items": sum(i1 - i0 for i0, i1 in own), "seconds": seconds,
                 "rss_before_mib": before, "peak_rss_mib": status_mib("VmHWM") if reset else peak_rss_mib(),
                 "peak_reset": reset, "first_rank": rankings.first_rank.tolist(), "ap_at_r": rankings.ap_at_r.tolist()})


def run_sharded_job(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Every process of one configuration, each spawned fresh; their results by rank."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    world = job["shards"] if job["layout"] == "ddp" else 1
    with tempfile.TemporaryDirectory() as tmp:
        job = {**job, "init": f"file://{tmp}/rendezvous"}
        procs = [ctx.Process(target=sharded_job, args=(job, rank, results)) for rank in range(world)]
        for proc in procs:
            proc.start()
        out = [results.get() for _ in procs]
        for proc in procs:
            proc.join()
            if proc.exitcode != 0:
                raise RuntimeError(f"{job['layout']} process exited with {proc.exitcode}")
    return sorted(out, key=lambda r: r["rank"])


def bench_sharded(args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    for n in args.sizes:
        for name in args.geometries:
            job = {"N": n, "queries": min(n, args.queries or n), "geometry": name, "dim": args.dim,
                   "block": args.block}
            [reference] = run_sharded_job({**job, "layout": "unsharded", "shards": 1})
            layouts = [("unsharded", 1)] + [(lay, s) for s in args.shards for lay in ("in-process", "ddp")]
            for layout, shards in layouts:
                procs = [reference] if layout == "unsharded" else run_sharded_job(
                    {**job, "layout": layout, "shards": shards})
                row = {**job, "K": GEOMETRIES[name][1], "layout": layout, "shards": shards,
                       "equal": all(p["first_rank"] == reference["first_rank"] and p["ap_at_r"] == reference["ap_at_r"]
                                    for p in procs),
                       "load": os.getloadavg()[0],
                       "processes": [{key: p[key] for key in ("rank", "items", "seconds", "rss_before_mib",
                                                             "peak_rss_mib", "peak_reset")} for p in procs]}
                print(json.dumps(row), flush=True)
                out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["exact", "ann", "real", "sharded"])
    parser.add_argument("--sizes", type=int, nargs="+")
    parser.add_argument("--geometries", nargs="+", default=list(GEOMETRIES), choices=list(GEOMETRIES))
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--block", type=int, default=1024, help="queries per block (eval.block_size)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ann-queries", type=int, default=1000)
    parser.add_argument("--nprobe", type=int, help="default: registry.ann_nprobe")
    parser.add_argument("--candidates", type=int, nargs="+", help="one or more (one index): default "
                        "registry.ann_candidates")
    parser.add_argument("--nlist", type=int, help="default: registry.ann_nlist (0: auto)")
    parser.add_argument("--model", help="real: a trained model.pt")
    parser.add_argument("--root", default=".", help="real: the project whose shards to embed")
    parser.add_argument("--splits", nargs="+", default=["train"], help="real: splits to embed, one gallery each")
    parser.add_argument("--queries", type=int, help="sharded: queries (default: N)")
    parser.add_argument("--shards", type=int, nargs="+", default=[2, 4], help="sharded: shard counts")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--threads", type=int, default=1, help="torch (and FAISS) threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.sizes is None:
        args.sizes = {"exact": [1000, 10000, 50000], "sharded": [10000, 100000]}.get(
            args.what, [10000, 100000, 1000000])
    print(f"command: {' '.join(sys.argv)}", flush=True)
    print(f"machine: {json.dumps(machine())}", flush=True)
    rows = {"exact": bench_exact, "ann": bench_ann, "real": bench_real, "sharded": bench_sharded}[args.what](args)
    print(f"load average at the end: {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": sys.argv, "machine": machine(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
