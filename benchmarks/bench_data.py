"""Data pipeline throughput on the CPU: shard writing, the feature models' pure inference, and streaming reads.

One generated world (`prepare` + `validate` into a temporary root, not timed) serves every measurement:

1. `write`: the whole `shard` stage (plan, process pool, index), wall clock, without pretrained features and with the
   default ones from params.yaml (image efficientnet-lite0, text all-minilm-l6-v2, audio whisper-tiny.en, code
   all-minilm-l6-v2). Each is run once untimed first, so model conversion/caching and file caches are warm.
   Timed `--write-repeats` times each; the median counts.
2. `inference`: the same models on the same inputs, decoded once up front (as `encode_rows` builds them), timing only
   `extractor.encode(items)`, one call per shard and modality exactly as `encode_rows` makes them (same batch sizes,
   same batch-mates), (a) split across `--workers` spawned processes with one torch thread each, shards handed out in
   plan order to the least-loaded worker as the shard pool does, and (b) in this one process with all threads.
   `encode_rows` also embeds each row's hierarchy descriptions with the text model; that pass is timed as
   `hierarchy`. Totals are samples / sum of the per-model times (every sample through every model).
3. `read`: `IterableStylePairDataset` over the train split through `make_loader` (decoded, augmented, collated and
   tokenised), samples/s from the first batch to the end, with worker start-up (time to the first batch) reported
   apart, over `--read-epochs` epochs with batches of `--read-batch` and no shuffle buffer (see `main`); beside it,
   `tarfile` reading every member's bytes of the same shard files, in this process.

Usage: python benchmarks/bench_data.py [--items 240] [--workers 2] [--out result.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from multigeometry.config import MODALITIES, Params, params_from_dict

REPO = Path(__file__).resolve().parents[1]
MODELS = (*MODALITIES, "hierarchy")  # "hierarchy": the rows' hierarchy descriptions through the text model
NO_FEATURES = [f"features.{m}.model=" for m in MODALITIES]


# ---------------------------------------------------------------------------------------------------------------------
# setup
# ---------------------------------------------------------------------------------------------------------------------


def base_params(items: int, workers: int, shard_samples: int, extra: list[str] | None = None) -> Params:
    """params.yaml (default features, loader, audio) with the benchmark's world size, pool size and shard size."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    overrides = [
        f"data.world.n_items={items}",
        f"data.world.workers={workers}",
        f"shard.workers={workers}",
        f"shard.max_samples={shard_samples}",
        "validate.data_docs=false",
        *(extra or []),
    ]
    return params_from_dict(raw, overrides)


def make_world(params: Params) -> Path:
    from multigeometry.stages.prepare import prepare
    from multigeometry.stages.validate import validate

    root = Path(tempfile.mkdtemp(prefix="bench-data-"))
    prepare(params, root)
    validate(params, root)
    return root


def machine() -> dict[str, Any]:
    import numpy
    import torch
    import transformers
    import webdataset

    cpu = platform.processor() or "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "webdataset": getattr(webdataset, "__version__", "?"),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


# ---------------------------------------------------------------------------------------------------------------------
# 1. shard writing
# ---------------------------------------------------------------------------------------------------------------------


def bench_write(params: Params, root: Path, repeats: int) -> dict[str, Any]:
    """The whole `shard` stage once untimed (warm caches, model conversion), then `repeats` times timed (median)."""
    from multigeometry.stages.shard import shard

    out = shard(params, root)
    runs = [timed(lambda: shard(params, root))[0] for _ in range(repeats)]
    index = json.loads((out / "index.json").read_text())
    samples = sum(s["samples"] for s in index["splits"].values())
    shards = sum(len(s["shards"]) for s in index["splits"].values())
    seconds = statistics.median(runs)
    return {
        "samples": samples,
        "shards": shards,
        "runs_s": runs,
        "seconds": seconds,
        "samples_per_s": samples / seconds,
    }


# ---------------------------------------------------------------------------------------------------------------------
# 2. pure inference
# ---------------------------------------------------------------------------------------------------------------------

Chunk = dict[str, list[Any]]  # one shard's model inputs, by model


def decode_inputs(params: Params, root: Path) -> tuple[list[Chunk], Any, float]:
    """Every shard's model inputs, built as `encode_rows` builds them; the stage's plan-time `FeatureModels`; and the
    seconds `plan` took (the stage's parent process sizes every sample and loads every model for its dimension)."""
    import io

    from PIL import Image

    from multigeometry.data.audio import load_audio
    from multigeometry.data.shards import image_member
    from multigeometry.paths import raw_dir
    from multigeometry.stages.shard import plan

    plan_seconds, (plans, models) = timed(lambda: plan(params, root))
    raw = raw_dir(params, root)
    chunks: list[Chunk] = []
    for p in plans:
        chunk: Chunk = {m: [] for m in MODELS}
        for row in p.rows:
            if isinstance(row.get("image"), str):
                _, data = image_member(raw / row["image"], params.shard.max_image_side,
                                       params.validate.image_max_pixels)
                chunk["image"].append(Image.open(io.BytesIO(data)).convert("RGB"))
            if isinstance(row.get("text"), str):
                chunk["text"].append(row["text"])
            if isinstance(row.get("code"), str):
                chunk["code"].append((raw / row["code"]).read_text(encoding="utf-8"))
            if isinstance(row.get("audio"), str):
                chunk["audio"].append(load_audio(raw / row["audio"], params.audio))
            chunk["hierarchy"].extend(list(row.get("hierarchy") or []))
        chunks.append(chunk)
    return chunks, models, plan_seconds


def assign(chunks: list[Chunk], workers: int) -> list[list[int]]:
    """Shards in plan order, each to the worker with the fewest samples so far: the pool's `as_completed` schedule
    when every sample costs the same."""
    load = [0] * workers
    out: list[list[int]] = [[] for _ in range(workers)]
    for i, chunk in enumerate(chunks):
        w = load.index(min(load))
        out[w].append(i)
        load[w] += max(len(chunk[m]) for m in MODALITIES)
    return out


def extractor_for(models: Any, model: str) -> Any:
    return models.get("text" if model == "hierarchy" else model)


def warm_up(models: Any, chunks: list[Chunk]) -> None:
    """One small call per model: first-call costs (allocator, thread pools, kernel selection) out of the timings."""
    for model in MODELS:
        items = next((c[model] for c in chunks if c[model]), [])
        if items:
            extractor_for(models, model).encode(items[:4])


def encode_all(models: Any, chunks: list[Chunk], model: str) -> None:
    for chunk in chunks:
        if chunk[model]:
            extractor_for(models, model).encode(chunk[model])


def _inference_worker(params: Params, chunks: list[Chunk], barrier: Any, conn: Any) -> None:
    """A shard-pool-like worker: load the models, then on each barrier encode its shards for one model, one thread."""
    started = time.perf_counter()
    from multigeometry.data.shards import FeatureModels, one_torch_thread

    models = FeatureModels(params)
    for m in models.modalities:
        models.get(m)
    conn.send(("loaded", time.perf_counter() - started))
    with one_torch_thread():
        warm_up(models, chunks)
        for model in MODELS:
            barrier.wait()
            encode_all(models, chunks, model)
            conn.send(("done", model))
    conn.close()


def bench_inference_pool(params: Params, chunks: list[Chunk], workers: int) -> dict[str, Any]:
    """(a) `workers` spawned processes, one torch thread each; per model, the wall time from the barrier that
    releases every worker to the last worker's done."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    shares = assign(chunks, workers)
    barrier = ctx.Barrier(workers + 1)
    pipes, procs = [], []
    spawned = time.perf_counter()
    for share in shares:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_inference_worker, args=(params, [chunks[i] for i in share], barrier, child))
        proc.start()
        child.close()  # so that a worker that dies is an EOFError here, not a hang
        pipes.append(parent)
        procs.append(proc)
    load_seconds = [conn.recv()[1] for conn in pipes]
    startup = time.perf_counter() - spawned
    seconds: dict[str, float] = {}
    for model in MODELS:
        barrier.wait(timeout=600)
        start = time.perf_counter()
        for conn in pipes:
            conn.recv()
        seconds[model] = time.perf_counter() - start
    for proc in procs:
        proc.join()
    return {
        "seconds": seconds,
        "shards_per_worker": [len(s) for s in shares],
        "startup_s": startup,
        "model_load_s_per_worker": load_seconds,
    }


def bench_inference_single(models: Any, chunks: list[Chunk]) -> dict[str, Any]:
    """(b) this one process, torch on every core."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        warm_up(models, chunks)
        seconds = {model: timed(lambda m=model: encode_all(models, chunks, m))[0] for model in MODELS}
        threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    return {"seconds": seconds, "threads": threads}


def inference_rates(result: dict[str, Any], chunks: list[Chunk], samples: int) -> dict[str, Any]:
    items = {m: sum(len(c[m]) for c in chunks) for m in MODELS}
    seconds = result["seconds"]
    four = sum(seconds[m] for m in MODALITIES)
    return {
        **result,
        "items": items,
        "items_per_s": {m: items[m] / seconds[m] for m in MODELS if seconds[m] > 0},
        "total_4_models_samples_per_s": samples / four,
        "total_with_hierarchy_samples_per_s": samples / (four + seconds["hierarchy"]),
    }


# ---------------------------------------------------------------------------------------------------------------------
# 3. streaming reads
# ---------------------------------------------------------------------------------------------------------------------


def bench_read(params: Params, shards_root: Path, workers: int, batch: int, epochs: int) -> dict[str, Any]:
    """`make_loader` over the train split, `epochs` times (fresh workers each). Steady state: from the first batch to
    the end, counting the samples after each worker's first batch (the workers produce their first batches side by
    side, so by the first batch's arrival the others are nearly done)."""
    from multigeometry.data.datasets import IterableStylePairDataset, make_loader

    dataset = IterableStylePairDataset(shards_root, "train", params, train=True)
    loader = make_loader(dataset, params, workers=workers, batch_size=batch)  # loads the tokenizer here
    startups, steady_seconds, steady_samples, total = [], 0.0, 0, 0
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        start = time.perf_counter()
        sizes = []
        first = 0.0
        for b in loader:
            sizes.append(len(b["sample_id"]))
            if len(sizes) == 1:
                first = time.perf_counter()
        end = time.perf_counter()
        startups.append(first - start)
        steady_seconds += end - first
        steady_samples += sum(sizes[workers:])
        total += sum(sizes)
    return {
        "shards": len(dataset.urls),
        "samples_per_epoch": total // epochs,
        "epochs": epochs,
        "batch_size": batch,
        "workers": workers,
        "startup_s": startups,
        "steady_samples": steady_samples,
        "steady_seconds": steady_seconds,
        "samples_per_s": steady_samples / steady_seconds,
    }


def bench_tar(urls: list[str], repeats: int) -> dict[str, Any]:
    """Plain `tarfile`: every member's bytes of the same shard files, in this process; median of `repeats`."""
    import tarfile

    def read_all() -> int:
        keys = set()
        for url in urls:
            with tarfile.open(url) as tar:
                for member in tar:
                    if member.isfile():
                        tar.extractfile(member).read()
                        keys.add(member.name.split(".", 1)[0])
        return len(keys)

    runs = [timed(read_all) for _ in range(repeats)]
    seconds = statistics.median(s for s, _ in runs)
    samples = runs[0][1]
    return {"samples": samples, "repeats": repeats, "seconds": seconds, "samples_per_s": samples / seconds}


# ---------------------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------------------


def print_table(r: dict[str, Any]) -> None:
    m, w, a, b = r["machine"], r["write"], r["inference_pool"], r["inference_single"]
    print(
        f"\nmachine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; python {m['python']}, torch {m['torch']},"
        f" transformers {m['transformers']}; load before {m['load_avg_1_5_15']},"
        f" after {m['load_avg_after']}; {m['date']}"
    )
    print(
        f"world: {r['config']['items']} samples, {w['features']['shards']} shards of <= "
        f"{r['config']['shard_samples']}, {r['config']['workers']} workers\n"
    )
    print(f"{'shard writing (whole stage, median)':44s} {'s':>8s} {'samples/s':>10s}  runs (s)")
    for name in ("no_features", "features"):
        runs = ", ".join(f"{x:.2f}" for x in w[name]["runs_s"])
        print(f"  {name:42s} {w[name]['seconds']:8.2f} {w[name]['samples_per_s']:10.1f}  {runs}")
    print(
        f"\n{'inference (items/s)':20s} {'items':>6s} {'(a) pool s':>11s} {'(a) /s':>8s} {'(b) 1 proc s':>13s} "
        f"{'(b) /s':>8s}"
    )
    for model in MODELS:
        print(
            f"  {model:18s} {a['items'][model]:6d} {a['seconds'][model]:11.2f} {a['items_per_s'][model]:8.1f} "
            f"{b['seconds'][model]:13.2f} {b['items_per_s'][model]:8.1f}"
        )
    for key, label in (
        ("total_4_models_samples_per_s", "total, 4 models"),
        ("total_with_hierarchy_samples_per_s", "total + hierarchy"),
    ):
        print(f"  {label:18s} {'samples/s':>6s} {a[key]:20.1f} {b[key]:22.1f}")
    share = {k: v / sum(a["seconds"].values()) for k, v in a["seconds"].items()}
    print(f"  (a) time shares: {', '.join(f'{k} {v:.0%}' for k, v in share.items())}")
    print(f"  (a) start-up (spawn, import, load models): {a['startup_s']:.2f} s; (b) threads: {b['threads']}")
    print(f"  the stage's plan (parent sizes samples, loads every model once): {w['features']['plan_s']:.2f} s")
    print("\nwriting-with-features / inference (target >= 0.80):")
    for key, value in r["ratios"].items():
        print(f"  {key:52s} {value:6.2f}  {'met' if value >= 0.8 else 'NOT met'}")
    rd, tar = r["read"], r["tar"]
    print(
        f"\nread: make_loader {rd['workers']} workers, batch {rd['batch_size']}, {rd['epochs']} epochs of "
        f"{rd['samples_per_epoch']} samples ({rd['shards']} shards)"
    )
    print(
        f"  loader steady state      {rd['samples_per_s']:10.1f} samples/s  (start-up per epoch: "
        f"{', '.join(f'{s:.2f}' for s in rd['startup_s'])} s)"
    )
    print(f"  tarfile, every member    {tar['samples_per_s']:10.1f} samples/s")
    print(f"  loader / tar             {r['read_over_tar']:10.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=240, help="samples in the generated world")
    parser.add_argument("--workers", type=int, default=2, help="shard pool and loader worker processes")
    parser.add_argument(
        "--shard-samples",
        type=int,
        default=48,
        help="shard.max_samples: small enough that the train split gives every worker several shards",
    )
    parser.add_argument("--write-repeats", type=int, default=3, help="timed runs of each shard stage (median)")
    parser.add_argument("--read-batch", type=int, default=16, help="loader batch size (several batches per worker)")
    parser.add_argument("--read-epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

    features = base_params(args.items, args.workers, args.shard_samples)
    plain = base_params(args.items, args.workers, args.shard_samples, NO_FEATURES)
    # no shuffle buffer: the default (512) holds a whole epoch of this world, which would put every decode into the
    # start-up; in steady state a buffer does the same per-sample work (one sample in, one out)
    reading = base_params(args.items, args.workers, args.shard_samples, ["loader.shuffle_buffer=0"])
    result: dict[str, Any] = {"machine": machine(), "config": vars(args) | {"out": str(args.out)}}

    print(f"world: {args.items} items (prepare + validate, not timed) ...", file=sys.stderr)
    root = make_world(features)
    print("shard writing ...", file=sys.stderr)
    result["write"] = {
        "no_features": bench_write(plain, root, args.write_repeats),
        "features": bench_write(features, root, args.write_repeats),
    }
    samples = result["write"]["features"]["samples"]

    print("inference ...", file=sys.stderr)
    chunks, models, plan_seconds = decode_inputs(features, root)
    result["write"]["features"]["plan_s"] = plan_seconds
    result["inference_pool"] = inference_rates(bench_inference_pool(features, chunks, args.workers), chunks, samples)
    result["inference_single"] = inference_rates(bench_inference_single(models, chunks), chunks, samples)
    write_rate = result["write"]["features"]["samples_per_s"]
    result["ratios"] = {
        f"vs (a) {args.workers} procs x 1 thread, + hierarchy [like-for-like]": write_rate
        / result["inference_pool"]["total_with_hierarchy_samples_per_s"],
        "vs (a), 4 models only": write_rate / result["inference_pool"]["total_4_models_samples_per_s"],
        "vs (b) 1 proc x all threads, + hierarchy": write_rate
        / result["inference_single"]["total_with_hierarchy_samples_per_s"],
        "vs (b), 4 models only": write_rate / result["inference_single"]["total_4_models_samples_per_s"],
    }

    print("reading ...", file=sys.stderr)
    from multigeometry.paths import shards_dir

    result["read"] = bench_read(reading, shards_dir(features, root), args.workers, args.read_batch, args.read_epochs)
    train = sorted(str(p) for p in (shards_dir(features, root) / "train").glob("*.tar"))
    result["tar"] = bench_tar(train, repeats=5)
    result["read_over_tar"] = result["read"]["samples_per_s"] / result["tar"]["samples_per_s"]
    result["machine"]["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]

    print_table(result)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    import shutil

    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
