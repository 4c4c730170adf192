"""Do a world's frame features carry the motion, and in what form? (issue 15, BENCHMARKS.md "meanP against seqTransf")

Reads the shards of a world with video (`video.emb`: frames x dim; the motion from each row's `motion(...)` concept),
keeps the rows with one of the six directed motions (left, right, up, down, grow, shrink), and fits a multinomial
logistic regression on the train split's rows, from each of three summaries of a clip's frames, tested on the val and
test rows: the mean frame (what meanP sees), the frames one after another (flattened), and the change (the mean of the
second half of the frames less that of the first half). Prints JSON: per summary and L2 weight, the held-out accuracy.

Usage: python benchmarks/video_motion_probe.py --shards data/shards/<dataset> [--l2 0.01 0.1 1]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

MOTIONS = ("left", "right", "up", "down", "grow", "shrink")


def rows(shards: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    from multigeometry.data.shard_index import read_shard

    index = json.loads((shards / "index.json").read_text())
    frames, labels = [], []
    for entry in index["splits"].get(split, {}).get("shards", []):
        for sample in read_shard(shards / split / entry["name"], entry):
            meta = json.loads(sample["meta.json"])
            directed = [c[len("motion("):-1] for c in meta["concepts"] if c.startswith("motion(")]
            directed = [m for m in directed if m in MOTIONS]
            if "video.emb.npy" in sample and len(directed) == 1:
                frames.append(np.load(__import__("io").BytesIO(sample["video.emb.npy"])))
                labels.append(MOTIONS.index(directed[0]))
    return np.stack(frames).astype(np.float32), np.array(labels)


def summary(frames: np.ndarray, kind: str) -> np.ndarray:
    half = frames.shape[1] // 2
    if kind == "mean":
        return frames.mean(1)
    if kind == "flattened":
        return frames.reshape(len(frames), -1)
    return frames[:, half:].mean(1) - frames[:, :half].mean(1)


def accuracy(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], l2: float) -> float:
    x, y = torch.from_numpy(train[0]), torch.from_numpy(train[1])
    mu, sd = x.mean(0), x.std(0) + 1e-6
    x = (x - mu) / sd
    linear = torch.nn.Linear(x.shape[1], len(MOTIONS))
    optimiser = torch.optim.LBFGS(linear.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(x), y) + l2 * linear.weight.pow(2).sum() / len(y)
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        predicted = linear((torch.from_numpy(test[0]) - mu) / sd).argmax(1).numpy()
    return float((predicted == test[1]).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=Path, required=True)
    parser.add_argument("--l2", nargs="+", type=float, default=[0.01, 0.1, 1.0])
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    train = rows(args.shards, "train")
    held = [rows(args.shards, s) for s in ("val", "test")]
    test = (np.concatenate([h[0] for h in held]), np.concatenate([h[1] for h in held]))
    report = {"train_rows": len(train[1]), "test_rows": len(test[1]), "chance": round(1 / len(MOTIONS), 3)}
    for kind in ("mean", "flattened", "change"):
        report[kind] = {str(l2): round(accuracy((summary(train[0], kind), train[1]),
                                                (summary(test[0], kind), test[1]), l2), 3) for l2 in args.l2}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
