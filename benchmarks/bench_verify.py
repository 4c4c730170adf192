"""What verifying shards against index.json costs (issue 13), on the CPU.

Builds the embedded world once in a temporary folder (prepare, validate, shard; by default without pretrained features,
which only add small .npy members), then times reading one split's shards with a warm page cache, the median of
`--repeats` runs each:

1. `raw read`: the bytes in 1 MiB blocks, nothing else: the floor.
2. `sha256 only`: hashlib over the same bytes (what hashing alone costs).
3. `shards, size+count`: `read_shard(verify="size")` over every shard: tar parsing, grouping into samples, the size
   check before and the sample count after each shard. What training and search read with.
4. `shards, sha256`: `read_shard(verify="sha256")`: the same single pass, hashed as it streams. What evaluate, the
   registry's champion re-evaluation and the eval fingerprint read with.
5. `shards, sha256 pass then read`: `verify_split(sha256)` as its own pass, then (3): hashing before trusting a shard
   would cost this (not what the code does; for comparison).
6. `decoded, size+count` / `decoded, sha256`: the evaluation reader end to end, `IterableStylePairDataset` with
   `verify=size` or `sha256` (images decoded, .npy loaded, sample dicts built): the share of sha256 in real reading.

Prints JSON: seconds, MB/s, and sha256's overhead over the same reader with size+count checks.

Usage: python benchmarks/bench_verify.py [--items 600] [--split train] [--repeats 5] [--features none|default]
                                         [--out FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def build(root: Path, items: int, features: str) -> Any:
    import yaml

    from multigeometry.config import load_params
    from multigeometry.stages.prepare import prepare
    from multigeometry.stages.shard import shard
    from multigeometry.stages.validate import validate

    tree = yaml.safe_load((REPO / "params.yaml").read_text())
    tree["data"]["world"]["n_items"] = items
    tree["validate"]["data_docs"] = False
    if features == "none":
        for modality in ("image", "text", "audio", "code"):
            tree["features"][modality]["model"] = ""
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    params = load_params(path)
    for stage in (prepare, validate, shard):
        started = time.perf_counter()
        stage(params, root)
        print(f"{stage.__name__}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return params


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
    fn()  # warm-up: the page cache holds the shards from here on
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs), runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=600)
    parser.add_argument("--split", default="train", choices=["train", "val", "test"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--features", default="none", choices=["none", "default"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    import torch

    from multigeometry.data.datasets import IterableStylePairDataset
    from multigeometry.data.shard_index import read_shard, split_shards, verify_split
    from multigeometry.paths import shards_dir

    torch.set_num_threads(1)  # one reader process, as one loader worker
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
        root = Path(tmp)
        params = build(root, args.items, args.features)
        shards = shards_dir(params, root)
        files = split_shards(shards, args.split)
        total = sum(entry["bytes"] for _path, entry in files)
        samples = sum(entry["samples"] for _path, entry in files)

        def raw() -> None:
            for path, _entry in files:
                with path.open("rb") as stream:
                    while stream.read(1 << 20):
                        pass

        def sha_only() -> None:
            for path, _entry in files:
                digest = hashlib.sha256()
                with path.open("rb") as stream:
                    while block := stream.read(1 << 20):
                        digest.update(block)

        def shards_with(verify: str) -> Callable[[], None]:
            def run() -> None:
                for path, entry in files:
                    for _sample in read_shard(path, entry, verify):  # type: ignore[arg-type]
                        pass
            return run

        def separate() -> None:
            verify_split(shards, args.split, "sha256")
            shards_with("size")()

        def decoded(verify: str) -> Callable[[], None]:
            def run() -> None:
                dataset = IterableStylePairDataset(shards, args.split, params, verify=verify)  # type: ignore[arg-type]
                count = sum(1 for _ in dataset)
                assert count == samples, (count, samples)
            return run

        cases = {
            "raw read": raw,
            "sha256 only": sha_only,
            "shards, size+count": shards_with("size"),
            "shards, sha256": shards_with("sha256"),
            "shards, sha256 pass then read": separate,
            "decoded, size+count": decoded("size"),
            "decoded, sha256": decoded("sha256"),
        }
        results: dict[str, Any] = {}
        for name, fn in cases.items():
            seconds, runs = median_time(fn, args.repeats)
            results[name] = {"median_s": round(seconds, 4), "MB_per_s": round(total / seconds / 1e6, 1),
                             "runs_s": [round(r, 4) for r in runs]}
            print(f"{name:32s} {seconds:8.4f} s  {total / seconds / 1e6:8.1f} MB/s", file=sys.stderr)

    def overhead(base: str, hashed: str) -> float:
        return round(results[hashed]["median_s"] / results[base]["median_s"] - 1.0, 3)

    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "load_average": [round(x, 2) for x in os.getloadavg()]},
        "items": args.items, "split": args.split, "features": args.features, "shards": len(files),
        "samples": samples, "bytes": total, "repeats": args.repeats,
        "results": results,
        "sha256_overhead": {
            "shards (one pass)": overhead("shards, size+count", "shards, sha256"),
            "shards (separate pass)": overhead("shards, size+count", "shards, sha256 pass then read"),
            "decoded (evaluation reader)": overhead("decoded, size+count", "decoded, sha256"),
        },
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
