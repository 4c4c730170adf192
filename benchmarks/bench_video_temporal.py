"""meanP against seqTransf on the temporal check (issue 15), on the CPU.

Builds a world with video once in a temporary folder or `--root` (`--items` items, clips of 8 frames of 32 px; frame
features by EfficientNet-Lite0 at `--feature-side` px, captions by all-MiniLM-L6-v2), then trains the same video-text
model once with each temporal pooling (`model.video.temporal`; or each `--config`), and evaluates the test split:
retrieval R@1 both ways and the temporal check (`video/temporal_R@1`, `text_to_video/temporal_R@1`,
`video_to_text/temporal_R@1`).

Prints JSON: per configuration each seed's metrics and training seconds, and their means.

Usage: python benchmarks/bench_video_temporal.py [--items 300] [--epochs 20] [--feature-side 64]
           [--temporal-weight 0.5] [--seeds 0 1 2] [--root DIR] [-S key=value ...]
           [--config NAME=key=value,key=value ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("bench_video_temporal")
KEPT = ("video_to_text/R@1", "text_to_video/R@1", "video/temporal_R@1", "text_to_video/temporal_R@1",
        "video_to_text/temporal_R@1")


def raw_params(root: Path, items: int, epochs: int, side: int, temporal: str, weight: float) -> dict[str, Any]:
    encoder = {"input": "emb", "hidden_dim": 128, "layers": 1}
    return {
        "data": {"dataset": "world-video", "world": {"n_items": items, "workers": 2, "audio": False, "video": True,
                                                     "video_size": 32, "video_frames": 8}},
        "validate": {"modalities": ["text", "video"], "data_docs": False},
        "features": {"image": {"model": ""}, "audio": {"model": ""}, "code": {"model": ""},
                     "text": {"model": "all-minilm-l6-v2"},
                     "video": {"model": "efficientnet-lite0", "image_size": side, "batch_size": 64}},
        "video": {"feature_frames": 8, "num_frames": 8, "jitter": False},
        "shard": {"workers": 2},
        "pairs": {"pairs": [{"a": "video", "b": "text"}]},
        "loader": {"batch_size": 32, "workers": 0, "tokenizer": ""},
        "model": {"embed_dim": 64, "n_components": 2, "trunk": "mlp",
                  "text": {**encoder, "lock": False, "init": "random"},
                  "video": {**encoder, "temporal": temporal, "temporal_width": 64, "temporal_heads": 4}},
        "train": {"run_name": temporal, "device": "cpu", "epochs": epochs, "lr": 2e-3, "warmup_steps": 5,
                  "select": "last", "patience": 0,
                  "tracking_uri": f"sqlite:///{root.resolve() / 'mlflow.db'}"},
        "loss": {"temporal_weight": weight},
        "eval": {"device": "cpu", "grid_queries": 0},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--feature-side", type=int, default=64)
    parser.add_argument("--temporal-weight", type=float, default=0.5, help="loss.temporal_weight")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--root", type=Path, help="keep the data (and reuse it) here instead of a temporary folder")
    parser.add_argument("--set", "-S", dest="overrides", action="append", default=[], help="params for every run")
    parser.add_argument("--config", action="append", default=[], metavar="NAME=key=value,key=value",
                        help="a model configuration to train (default: meanP and seqTransf)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from bench_video import emit  # this folder is on sys.path when the script runs

    from multigeometry.config import params_from_dict
    from multigeometry.paths import shards_dir
    from multigeometry.stages.evaluate import evaluate
    from multigeometry.stages.prepare import prepare
    from multigeometry.stages.shard import shard
    from multigeometry.stages.train import train
    from multigeometry.stages.validate import validate

    configs = dict(spec.split("=", 1) for spec in args.config) or {
        "meanP": "model.video.temporal=meanP", "seqTransf": "model.video.temporal=seqTransf"}
    report: dict[str, Any] = {"items": args.items, "epochs": args.epochs, "feature_side": args.feature_side,
                              "temporal_weight": args.temporal_weight, "overrides": args.overrides, "configs": configs}

    def params_for(name: str, overrides: list[str], root: Path):  # noqa: ANN202
        raw = raw_params(root, args.items, args.epochs, args.feature_side, "meanP", args.temporal_weight)
        params = params_from_dict(raw, [*args.overrides, *overrides, f"train.run_name={name}"])
        # one dataset folder per data configuration, so a kept --root is reused only for the same data
        digest = params.section_hash("data.world", "validate", "features", "video", "shard")[:8]
        return params_from_dict(raw, [*args.overrides, *overrides, f"train.run_name={name}",
                                      f"data.dataset=world-video-{digest}"])

    with tempfile.TemporaryDirectory(prefix="bench-video-temporal-") as tmp:
        root = args.root or Path(tmp)
        start = time.perf_counter()
        params = params_for("data", [], root)
        if not (shards_dir(params, root) / "index.json").is_file():
            for stage in (prepare, validate, shard):
                stage(params, root)
        report["data_s"] = round(time.perf_counter() - start, 1)
        for name, spec in configs.items():
            runs = []
            for seed in args.seeds:
                params = params_for(name, [kv for kv in spec.split(",") if kv] + [f"seed={seed}"], root)
                start = time.perf_counter()
                train(params, root)
                seconds = time.perf_counter() - start
                metrics = json.loads((evaluate(params, root) / "metrics.json").read_text())
                runs.append({"seed": seed, "train_s": round(seconds, 1),
                             **{k: round(metrics[k], 4) for k in KEPT if k in metrics}})
                log.info("%s seed %d: %s", name, seed, runs[-1])
            report[name] = {"runs": runs, **{k: round(sum(r[k] for r in runs) / len(runs), 4)
                                             for k in KEPT if all(k in r for r in runs)}}
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
