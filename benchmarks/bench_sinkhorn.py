"""Accuracy and time of the Sinkhorn OT term's solver (`geometry.sinkhorn`) on badly scaled costs, beside POT.

For each regularisation: B pairs of K×K costs near 32 (32 + 2·N(0, 1)) with uneven weights (softmax of 2·N(0, 1)),
float32 as in training. Columns:
- `error vs POT`: the largest relative error of the value against `ot.sinkhorn2(method="sinkhorn_log",
  numItermax=100000, stopThr=1e-12)` (on the first `--reference` pairs, float64);
- `steps`: the solver's reported steps at `loss.sinkhorn_tol` (default 1e-6) and cap `loss.sinkhorn_max_iters`;
- `fwd+bwd s`: forward + backward of the solver, and of the anchor, the former fixed 50 log-domain iterations
  (`ot.batch.solve_batch(..., max_iter=50, method="log_sinkhorn", grad="autodiff")`), with its error beside it;
  best of interleaved repeats in one process, with their ratio.

Usage: python benchmarks/bench_sinkhorn.py [--batch 256 4096] [--components 4] [--reg 0.1 0.05] [--repeats 5]
"""

from __future__ import annotations

import argparse
import functools
import time

import numpy as np
import ot
import torch

from multigeometry.config import LossConfig
from multigeometry.geometry.sinkhorn import entropic_ot_cost


def problem(b: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    cost = 32.0 + 2.0 * torch.randn(b, k, k, generator=gen, dtype=torch.float64)
    a = torch.softmax(2.0 * torch.randn(b, k, generator=gen, dtype=torch.float64), -1)
    w = torch.softmax(2.0 * torch.randn(b, k, generator=gen, dtype=torch.float64), -1)
    return cost, a, w


def reference(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, reg: float) -> np.ndarray:
    return np.array([
        ot.sinkhorn2(a[i].numpy(), b[i].numpy(), cost[i].numpy(), reg, method="sinkhorn_log",
                     numItermax=100_000, stopThr=1e-12)
        for i in range(len(cost))
    ])


def run_ours(cost: torch.Tensor, a: torch.Tensor, w: torch.Tensor, reg: float,
             cfg: LossConfig) -> tuple[torch.Tensor, int]:
    c = cost.clone().requires_grad_()
    value, steps = entropic_ot_cost(c, a, w, reg, cfg.sinkhorn_max_iters, cfg.sinkhorn_tol)
    value.sum().backward()
    return value.detach(), steps


def run_anchor(cost: torch.Tensor, a: torch.Tensor, w: torch.Tensor, reg: float) -> torch.Tensor:
    c = cost.clone().requires_grad_()
    res = ot.batch.solve_batch(c, reg, a=a, b=w, max_iter=50, tol=1e-6, method="log_sinkhorn", grad="autodiff")
    res.value_linear.sum().backward()
    return res.value_linear.detach()


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 4096])
    parser.add_argument("--components", type=int, default=4)
    parser.add_argument("--reg", type=float, nargs="+", default=[0.1, 0.05])
    parser.add_argument("--reference", type=int, default=64, help="pairs compared with POT")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cfg = LossConfig()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; tol {cfg.sinkhorn_tol:g}, "
          f"cap {cfg.sinkhorn_max_iters}")
    print("| B | K | reg | steps | error vs POT | fwd+bwd s | 50-iteration anchor: error vs POT | anchor s | "
          "time / anchor |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for b in args.batch:
        cost64, a64, w64 = problem(b, args.components)
        n_ref = min(b, args.reference)
        cost, a, w = cost64.float(), a64.float(), w64.float()
        for reg in args.reg:
            a_ref, w_ref = a[:n_ref].double(), w[:n_ref].double()
            expected = reference(cost[:n_ref].double(), a_ref / a_ref.sum(-1, keepdim=True),
                                 w_ref / w_ref.sum(-1, keepdim=True), reg)

            ours = functools.partial(run_ours, cost, a, w, reg, cfg)
            anchor = functools.partial(run_anchor, cost, a, w, reg)
            value, steps = ours()
            err = np.abs(value[:n_ref].double().numpy() - expected).max() / np.abs(expected).max()
            anchor_err = np.abs(anchor()[:n_ref].double().numpy() - expected).max() / np.abs(expected).max()
            t_ours, t_anchor = best_time(ours, args.repeats), best_time(anchor, args.repeats)
            print(f"| {b} | {args.components} | {reg:g} | {steps} | {err:.1e} | {t_ours:.4f} | {anchor_err:.1e} | "
                  f"{t_anchor:.4f} | {t_ours / t_anchor:.2f} |", flush=True)


if __name__ == "__main__":
    main()
