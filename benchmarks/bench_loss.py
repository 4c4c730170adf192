"""Forward+backward time and peak memory of MainCriterion (default similarity: CSD) on the CPU, beside plain matmuls.

For every batch size B and number of components K, in a fresh process (so that its peak resident memory is its own):
- `criterion`: MainCriterion(LossConfig(), ModelConfig(n_components=K)) forward and backward on random mixtures;
- `similarity`: csd_similarity alone, forward and backward (with a random upstream gradient);
- `matmul`: the three plain products of the same shape that a similarity of this size needs at the least, forward
  (B·K×D)·(D×B·K) and the two of its backward pass, (B·K×B·K)·(B·K×D) and its transpose, each a plain
  `torch.matmul` allocating its output as autograd would; `matmul_prealloc` is the same into preallocated outputs,
  the machine's best GEMM rate;
- `clip` (K = 1 only): a plain CLIP loss (normalise, matmul, cross-entropy both ways) on the same means.
Peak memory is the rise of the peak resident set during one criterion (or CLIP loss) forward+backward, each in a
process of its own.

Usage: python benchmarks/bench_loss.py [--batch 1024 4096] [--components 1 4 8] [--dim 256] [--budget-s 4]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from multigeometry.config import LossConfig, ModelConfig
from multigeometry.geometry import MixtureParams, csd_similarity
from multigeometry.losses import MainCriterion


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def random_mixture(b: int, k: int, d: int, gen: torch.Generator) -> MixtureParams:
    return MixtureParams(
        torch.randn(b, k, generator=gen).requires_grad_(),
        (torch.randn(b, k, d, generator=gen) / math.sqrt(d)).requires_grad_(),
        (-9.0 + 11.0 * torch.rand(b, k, d, generator=gen)).requires_grad_(),
    )


def clip_loss(image: torch.Tensor, text: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    logits = log_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    labels = torch.arange(image.shape[0])
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def setup(b: int, k: int, d: int) -> tuple[MainCriterion, MixtureParams, MixtureParams, torch.Generator]:
    gen = torch.Generator().manual_seed(0)
    crit = MainCriterion(LossConfig(), ModelConfig(n_components=k, embed_dim=d))
    small_a, small_b = random_mixture(64, k, d, gen), random_mixture(64, k, d, gen)
    crit(small_a, small_b)["loss"].backward()  # one-time costs (thread pools, first allocations) out of the way
    return crit, random_mixture(b, k, d, gen), random_mixture(b, k, d, gen), gen


def measure_memory(b: int, k: int, d: int, what: str) -> dict:
    """Rise of the peak resident set during one forward+backward of `what` ("criterion" or "clip").

    Run in a process of its own with MALLOC_MMAP_THRESHOLD_ set, so that freed buffers go back to the system at once
    and the resident set follows live memory (glibc otherwise keeps freed blocks of up to 32 MiB in its heap).
    """
    crit, a, b_, _ = setup(b, k, d)
    if what == "clip":
        image = a.mu.detach()[:, 0].clone().requires_grad_()
        text = b_.mu.detach()[:, 0].clone().requires_grad_()
        log_scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
        clip_loss(image[:64], text[:64], log_scale).backward()
        job = lambda: clip_loss(image, text, log_scale).backward()  # noqa: E731
    else:
        job = lambda: crit(a, b_)["loss"].backward()  # noqa: E731
    before = rss_bytes()
    job()
    return {"peak_bytes": max(0, peak_rss_bytes() - before)}


def measure_time(b: int, k: int, d: int, budget_s: float) -> dict:
    crit, a, b_, gen = setup(b, k, d)
    n = b * k
    upstream = torch.randn(b, b, generator=gen)
    x, y = torch.randn(n, d, generator=gen), torch.randn(n, d, generator=gen)

    def criterion() -> None:
        crit(a, b_)["loss"].backward()

    def similarity() -> None:
        csd_similarity(a, b_, 1.0).backward(upstream)

    def matmul() -> None:
        g = torch.matmul(x, y.T)
        torch.matmul(g, y)
        torch.matmul(g.T, x)

    bufs = {"g": torch.zeros(n, n), "dx": torch.zeros(n, d), "dy": torch.zeros(n, d)}  # zeros: pages touched now

    def matmul_prealloc() -> None:
        torch.matmul(x, y.T, out=bufs["g"])
        torch.matmul(bufs["g"], y, out=bufs["dx"])
        torch.matmul(bufs["g"].T, x, out=bufs["dy"])

    jobs = {"criterion": criterion, "similarity": similarity, "matmul": matmul, "matmul_prealloc": matmul_prealloc}
    if k == 1:
        image = a.mu.detach()[:, 0].clone().requires_grad_()
        text = b_.mu.detach()[:, 0].clone().requires_grad_()
        log_scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
        jobs["clip"] = lambda: clip_loss(image, text, log_scale).backward()

    # interleaved repeats, best of each: other load on the machine slows all of them alike
    best = {name: math.inf for name in jobs}
    load_before = os.getloadavg()[0]
    start, repeats = time.perf_counter(), 0
    while repeats < 2 or (time.perf_counter() - start < budget_s and repeats < 30):
        for name, job in jobs.items():
            t = time.perf_counter()
            job()
            best[name] = min(best[name], time.perf_counter() - t)
        repeats += 1
    flop = 3 * 2 * n * n * d
    return {
        "repeats": repeats,
        "seconds": best,
        "gflops_matmul": flop / best["matmul"] / 1e9,
        "gflops_matmul_prealloc": flop / best["matmul_prealloc"] / 1e9,
        "gflops_similarity": flop / best["similarity"] / 1e9,
        "load_avg": [load_before, os.getloadavg()[0]],  # 1-minute load: other work on the machine skews timings
    }


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def table(results: list[dict]) -> str:
    head = (
        "| B | K | B·K | criterion fwd+bwd s | similarity fwd+bwd s | 3 matmuls s (prealloc s) | "
        "similarity rate / matmul rate (/ prealloc) | peak MiB | peak / (B·K)² fp32 | CLIP loss s | criterion / CLIP | "
        "CLIP peak / (B·K)² fp32 | load avg |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        s = r["seconds"]
        clip = f"{s['clip']:.4f}" if "clip" in s else "–"
        vs_clip = f"{s['criterion'] / s['clip']:.2f}" if "clip" in s else "–"
        clip_peak = f"{r['clip_peak_bytes'] / r['matrix_bytes']:.2f}" if "clip_peak_bytes" in r else "–"
        lines.append(
            f"| {r['B']} | {r['K']} | {r['B'] * r['K']} | {s['criterion']:.3f} | {s['similarity']:.3f} | "
            f"{s['matmul']:.3f} ({s['matmul_prealloc']:.3f}) | "
            f"{s['matmul'] / s['similarity']:.2f} ({s['matmul_prealloc'] / s['similarity']:.2f}) | "
            f"{r['peak_bytes'] / 2**20:.0f} | {r['peak_bytes'] / r['matrix_bytes']:.2f} | "
            f"{clip} | {vs_clip} | {clip_peak} | "
            f"{r['load_avg'][0]:.1f}–{r['load_avg'][1]:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--components", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--budget-s", type=float, default=4.0, help="time to spend repeating each configuration")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--one", nargs=3, metavar=("MODE", "B", "K"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        mode, b, k = args.one[0], int(args.one[1]), int(args.one[2])
        out = measure_time(b, k, args.dim, args.budget_s) if mode == "time" else measure_memory(b, k, args.dim, mode)
        print(json.dumps(out))
        return
    print(f"machine: {machine()}", flush=True)
    results = []
    for b in args.batch:
        for k in args.components:
            result = {"B": b, "K": k, "D": args.dim, "matrix_bytes": (b * k) ** 2 * 4}
            for mode in ["criterion", "time"] + (["clip"] if k == 1 else []):
                out = run_child(mode, b, k, args)
                if out is None:
                    break
                result.update({"clip_peak_bytes": out["peak_bytes"]} if mode == "clip" else out)
            else:
                results.append(result)
                print(json.dumps(result), flush=True)
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "results": results}, f, indent=1)


def run_child(mode: str, b: int, k: int, args: argparse.Namespace) -> dict | None:
    cmd = [sys.executable, __file__, "--one", mode, str(b), str(k), "--dim", str(args.dim)]
    cmd += ["--budget-s", str(args.budget_s), "--threads", str(args.threads)]
    env = dict(os.environ)
    if mode != "time":
        env["MALLOC_MMAP_THRESHOLD_"] = str(1 << 17)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"B={b} K={k} {mode}: failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}", flush=True)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
