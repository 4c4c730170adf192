"""Training throughput (samples/s) on the CPU: the configured model beside the `point` geometry and a plain CLIP loss
with the same encoders and batch, and the configured model on 2 ranks against 1.

A step is what the train stage's step is: forward of every pair in the batch, the loss, backward, gradient clipping
and AdamW. The batches are read from the shards once and kept in memory, so the figures are the model's and the
loss's, not the loader's. The variants run interleaved (one round of steps each, repeated), so that a slower or
faster moment of a shared machine does not favour one of them.

- `configured`: params.yaml's model and loss (default: a K-component mixture with the CSD similarity and the
  compositional layer with its loss term);
- `unfused-adamw`: the configured model with torch's per-tensor AdamW instead of the fused kernel;
- `recomputed-lse`: the configured model with the mixture similarity's backward pass recomputing its one chunk of
  products instead of keeping the forward pass's softmax weights (`geometry.blockwise.KEEP_WEIGHTS` off);
- `no-composer`: the same without the compositional layer (`model.composer.enabled: false`);
- `no-hierarchy`: the same without the hierarchy terms (the mixtures' variance order and inclusion, the cones'
  entailment and aperture order, the contrastive term over each level), so without encoding the general descriptions;
- `point`: the same encoders, `model.geometry: point` through MainCriterion (InfoNCE over cosines, group-aware);
- `clip`: the same encoders and point head, with OpenCLIP's plain ClipLoss in place of MainCriterion (normalised
  features, one matmul, cross-entropy both ways against the diagonal): the OpenCLIP-equivalent baseline.
Ranks: the configured model under DDP with Gloo, 1 rank against 2 (the same per-rank batch, so 2 ranks train on a
global batch twice the size), each run using all the machine's cores between its ranks.

Usage: python benchmarks/bench_train.py [--params params.yaml] [--set key=value ...] [--steps 12] [--rounds 3]
Needs the shard stage's output (`dvc repro shard`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import time
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from multigeometry.config import LossConfig, Params, load_params
from multigeometry.data.batch import Batch
from multigeometry.data.collate import load_tokenizer
from multigeometry.data.datasets import IterableStylePairDataset, make_loader, read_index
from multigeometry.geometry import blockwise
from multigeometry.inference import needs_tokens
from multigeometry.losses import MainCriterion
from multigeometry.models.pair_model import PairModel
from multigeometry.paths import shards_dir
from multigeometry.training.loop import resolve_batch_size
from multigeometry.training.objective import TrainModule, accumulated_backward
from multigeometry.training.optim import make_optimizer, param_groups


class PlainClipLoss(nn.Module):
    """OpenCLIP's ClipLoss on one-component point embeddings: the baseline every other variant is measured against."""

    def __init__(self, loss_cfg: LossConfig) -> None:
        super().__init__()
        self.log_logit_scale = nn.Parameter(torch.tensor(float(loss_cfg.init_logit_scale)).log())
        # TrainModule reads the extra terms' weights from the criterion's config: none of them for the baseline
        self.cfg = replace(loss_cfg, mixup=0.0, composition_weight=0.0, temporal_weight=0.0,
                           hierarchy_contrastive_weight=0.0)
        self.uses_hierarchy = False

    def forward(self, a: Any, b: Any, group_ids: Tensor | None = None, hierarchy: Any = None,
                soft_rows: Any = None) -> dict[str, Tensor]:
        fa, fb = F.normalize(a.mu[:, 0], dim=-1), F.normalize(b.mu[:, 0], dim=-1)
        logits = self.log_logit_scale.exp() * fa @ fb.T
        labels = torch.arange(len(fa), device=fa.device)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        return {"loss": loss, "contrastive": loss.detach()}


def variant_params(params: Params, name: str) -> Params:
    if name in ("configured", "unfused-adamw", "recomputed-lse"):
        return params
    if name == "no-composer":
        return replace(params, model=replace(params.model, composer=replace(params.model.composer, enabled=False)))
    if name == "no-hierarchy":
        return replace(params, loss=replace(params.loss, variance_order_weight=0.0, inclusion_weight=0.0,
                                            entailment_weight=0.0, aperture_weight=0.0,
                                            hierarchy_contrastive_weight=0.0))
    # the point geometry keeps the configured composer; plain CLIP has none (it is the OpenCLIP baseline)
    composer = replace(params.model.composer, enabled=params.model.composer.enabled and name == "point")
    model = replace(params.model, geometry="point", n_components=1, composer=composer)
    return replace(params, model=model, loss=replace(params.loss, similarity="point"))


def build(params: Params, name: str, index: dict, vocab: int | None) -> tuple[TrainModule, torch.optim.Optimizer]:
    torch.manual_seed(params.seed)
    p = variant_params(params, name)
    model = PairModel.from_index(p, index, vocab_size=vocab)
    criterion = PlainClipLoss(p.loss) if name == "clip" \
        else MainCriterion(p.loss, p.model, similarity=model.similarity)
    module = TrainModule(model, criterion)
    if name == "unfused-adamw":  # torch's per-tensor AdamW, as before the fused kernel was the default
        cfg = p.train
        groups = param_groups([module], cfg.weight_decay)
        return module, torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=False)
    return module, make_optimizer([module], p.train)


def read_batches(params: Params, n: int, rank: int = 0, world: int = 1) -> list[Batch]:
    shards = shards_dir(params)
    dataset = IterableStylePairDataset(shards, "train", params, train=True, rank=rank, world_size=world, resampled=True)
    tokenizer = load_tokenizer(params.loader.tokenizer) if needs_tokens(params) else None
    batches: list[Batch] = []
    epoch = 0
    while len(batches) < n:  # as many epochs as n batches take
        dataset.set_epoch(epoch)
        loader = make_loader(dataset, params, workers=0, tokenizer=tokenizer, seed=params.seed + rank + 1000 * epoch)
        batches.extend(batch for batch, _ in zip(loader, range(n - len(batches)), strict=False))
        epoch += 1
    return batches


def step(
    module: TrainModule, optimizer: torch.optim.Optimizer, batch: Batch, clip: float, ddp: nn.Module | None
) -> None:
    optimizer.zero_grad(set_to_none=True)
    accumulated_backward(module, [batch], ddp)
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
    optimizer.step()
    module.criterion.step = getattr(module.criterion, "step", 0) + 1  # as the trainer counts (model.composer.every)


def bench_variants(params: Params, steps: int, rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    index = read_index(shards_dir(params))
    tokenizer = load_tokenizer(params.loader.tokenizer) if needs_tokens(params) else None
    vocab = len(tokenizer) if tokenizer is not None else None
    batches = read_batches(params, steps)
    names = ["configured", "unfused-adamw", "recomputed-lse", "no-composer", "no-hierarchy", "point", "clip"]
    built = {name: build(params, name, index, vocab) for name in names}
    for name, (module, optimizer) in built.items():  # one warm-up step each
        blockwise.KEEP_WEIGHTS = name != "recomputed-lse"
        step(module, optimizer, batches[0], params.train.grad_clip, None)
    seconds = dict.fromkeys(names, 0.0)
    samples = sum(len(b) for b in batches)
    for _ in range(rounds):
        for name in names:
            blockwise.KEEP_WEIGHTS = name != "recomputed-lse"
            module, optimizer = built[name]
            started = time.perf_counter()
            for batch in batches:
                step(module, optimizer, batch, params.train.grad_clip, None)
            seconds[name] += time.perf_counter() - started
    blockwise.KEEP_WEIGHTS = True
    rates = {name: rounds * samples / seconds[name] for name in names}
    return rates, optimizer_step_ms({name: built[name] for name in ("configured", "unfused-adamw")})


def optimizer_step_ms(built: dict[str, tuple[TrainModule, torch.optim.Optimizer]], rounds: int = 5,
                      steps: int = 20) -> dict[str, float]:
    """The AdamW step alone (the gradients already there), best of `rounds`, per optimizer."""
    best = dict.fromkeys(built, math.inf)
    for _ in range(rounds):
        for name, (_module, optimizer) in built.items():
            started = time.perf_counter()
            for _ in range(steps):
                optimizer.step()
            best[name] = min(best[name], (time.perf_counter() - started) / steps)
    return {name: round(1e3 * t, 2) for name, t in best.items()}


def _rank_worker(rank: int, world: int, port: int, params: Params, steps: int, threads: int, out: Any) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        index = read_index(shards_dir(params))
        tokenizer = load_tokenizer(params.loader.tokenizer) if needs_tokens(params) else None
        module, optimizer = build(params, "configured", index, len(tokenizer) if tokenizer is not None else None)
        ddp = nn.parallel.DistributedDataParallel(module) if world > 1 else None
        batches = read_batches(params, steps, rank, world)
        step(module, optimizer, batches[0], params.train.grad_clip, ddp)
        dist.barrier()
        started = time.perf_counter()
        for batch in batches:
            step(module, optimizer, batch, params.train.grad_clip, ddp)
        dist.barrier()
        elapsed = time.perf_counter() - started
        total = torch.tensor(float(sum(len(b) for b in batches)))
        dist.all_reduce(total)
        if rank == 0:
            out.put(float(total) / elapsed)
    finally:
        dist.destroy_process_group()


def bench_ranks(params: Params, world: int, steps: int) -> float:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    threads = max(1, (os.cpu_count() or 1) // world)
    mp.spawn(_rank_worker, args=(world, port, params, steps, threads, out), nprocs=world, join=True)
    return out.get()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", "-S", dest="overrides", action="append", default=[])
    parser.add_argument("--steps", type=int, default=12, help="training steps per round (batches held in memory)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-ranks", action="store_true", help="skip the 1-rank against 2-rank comparison")
    args = parser.parse_args()
    params = load_params(args.params, args.overrides)
    params = resolve_batch_size(params, read_index(shards_dir(params)), 1)  # loader.batch_size 0: the whole split
    rates, adamw_ms = bench_variants(params, args.steps, args.rounds)
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "batch_size": params.loader.batch_size,
        "geometry": params.model.geometry,
        "n_components": params.model.n_components,
        "similarity": params.loss.similarity,
        "samples_per_s": {k: round(v, 1) for k, v in rates.items()},
        "configured_over_clip": round(rates["configured"] / rates["clip"], 3),
        "no_composer_over_clip": round(rates["no-composer"] / rates["clip"], 3),
        "point_over_clip": round(rates["point"] / rates["clip"], 3),
        "configured_over_point": round(rates["configured"] / rates["point"], 3),
        # the compositional layer's share of the configured step's time
        "composer_share": round(1 - rates["configured"] / rates["no-composer"], 3),
        # the hierarchy terms' share (with the general descriptions' encoding)
        "hierarchy_share": round(1 - rates["configured"] / rates["no-hierarchy"], 3),
        "fused_over_unfused": round(rates["configured"] / rates["unfused-adamw"], 3),
        "kept_over_recomputed_lse": round(rates["configured"] / rates["recomputed-lse"], 3),
        "adamw_step_ms": {"fused": adamw_ms["configured"], "unfused": adamw_ms["unfused-adamw"]},
    }
    if not args.no_ranks:
        one = bench_ranks(params, 1, args.steps)
        two = bench_ranks(params, 2, args.steps)
        report["ranks_samples_per_s"] = {"1": round(one, 1), "2": round(two, 1)}
        report["two_over_one"] = round(two / one, 3)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
