"""Two ranks (gloo, spawned processes) give the loss and gradients of one rank on the concatenated batch."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from multigeometry.config import LossConfig, ModelConfig
from multigeometry.distributed import all_gather_no_grad, all_gather_with_grad
from multigeometry.geometry import ConeParams, MixtureParams
from multigeometry.losses import Hierarchy, MainCriterion

WORLD = 2
LOCAL_BATCH = 5
F64 = torch.float64

MIXTURE = dict(entropy_weight=0.2, kl_weight=0.01, sinkhorn_weight=0.3, label_smoothing=0.1)
CASES: dict[str, tuple[ModelConfig, LossConfig]] = {
    "csd": (ModelConfig(n_components=3), LossConfig(**MIXTURE)),
    "csd-local": (ModelConfig(n_components=3), LossConfig(local_loss=True, **MIXTURE)),
    # without gathering gradients only the contrastive term matches (see the comment in the test below)
    "csd-no-grad-gather": (
        ModelConfig(n_components=3),
        LossConfig(gather_with_grad=False, kl_weight=0.0, label_smoothing=0.1),
    ),
    "product-kernel-local": (ModelConfig(n_components=2), LossConfig(similarity="product_kernel", local_loss=True)),
    "point": (ModelConfig(geometry="point"), LossConfig(similarity="point")),
    "cone-local": (ModelConfig(geometry="cone"), LossConfig(local_loss=True, entailment_weight=0.2)),
}


def global_batch(case: str, seed: int) -> dict:
    """The whole batch of both ranks as leaf tensors, the same on every process for a seed."""
    gen = torch.Generator().manual_seed(seed)
    n = WORLD * LOCAL_BATCH
    model_cfg, _ = CASES[case]
    # groups shared across the two ranks' halves (rows 4 and 5), and within one (rows 7, 8)
    batch: dict = {"group_ids": torch.tensor([0, 1, 2, 3, 4, 4, 5, 6, 6, 7])}
    if model_cfg.geometry == "cone":
        for side in "ab":
            batch[f"{side}.direction"] = F.normalize(torch.randn(n, 6, generator=gen, dtype=F64), dim=-1)
            batch[f"{side}.theta"] = 0.1 + torch.rand(n, generator=gen, dtype=F64)
        batch["general.direction"] = F.normalize(torch.randn(n, 6, generator=gen, dtype=F64), dim=-1)
        batch["general.theta"] = 0.5 + torch.rand(n, generator=gen, dtype=F64)
    else:
        k = model_cfg.n_components if model_cfg.geometry == "mixture" else 1
        for side in "ab":
            batch[f"{side}.logits"] = torch.randn(n, k, generator=gen, dtype=F64)
            batch[f"{side}.mu"] = torch.randn(n, k, 6, generator=gen, dtype=F64)
            if model_cfg.geometry == "mixture":
                batch[f"{side}.logvar"] = torch.randn(n, k, 6, generator=gen, dtype=F64) - 2.0
    return batch


def rows(batch: dict, start: int, stop: int) -> dict:
    """Leaf copies of the rows start:stop of every tensor; grads are read from these."""
    return {key: t[start:stop].clone().requires_grad_(t.is_floating_point()) for key, t in batch.items()}


def run_loss(case: str, leaves: dict) -> tuple[torch.Tensor, MainCriterion]:
    model_cfg, loss_cfg = CASES[case]
    crit = MainCriterion(loss_cfg, model_cfg).double()
    if model_cfg.geometry == "cone":
        a = ConeParams(leaves["a.direction"], leaves["a.theta"])
        b = ConeParams(leaves["b.direction"], leaves["b.theta"])
        # one general caption per row, owned by the local row
        general = ConeParams(leaves["general.direction"], leaves["general.theta"])
        hierarchy = Hierarchy(general, owner=torch.arange(a.batch_size))
    else:
        a, b = (MixtureParams(leaves[f"{s}.logits"], leaves[f"{s}.mu"], leaves.get(f"{s}.logvar")) for s in "ab")
        hierarchy = None
    loss = crit(a, b, group_ids=leaves["group_ids"], hierarchy=hierarchy)["loss"]
    return loss, crit


def worker(rank: int, port: int, seed: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        results = {}
        for case in CASES:
            leaves = rows(global_batch(case, seed), rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
            loss, crit = run_loss(case, leaves)
            loss.backward()
            grads = {key: t.grad for key, t in leaves.items() if t.grad is not None}
            results[case] = {"loss": loss.detach(), "grads": grads, "scale_grad": crit.log_logit_scale.grad}
        x = (torch.arange(3.0) + 10 * rank).requires_grad_()
        gathered = all_gather_with_grad(x)
        (gathered * torch.arange(6.0)).sum().backward()
        results["gather"] = {"value": gathered.detach(), "grad": x.grad, "no_grad": all_gather_no_grad(x).detach()}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, list[dict]]:
    seed = secrets.randbits(31)
    print(f"random seed {seed}")
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker, args=(free_port(), seed, str(out_dir)), nprocs=WORLD, join=True)
    return seed, [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


def test_all_gather_helpers(two_rank_results: tuple[int, list[dict]]) -> None:
    _, results = two_rank_results
    for rank, res in enumerate(results):
        g = res["gather"]
        torch.testing.assert_close(g["value"], torch.tensor([0.0, 1, 2, 10, 11, 12]))
        torch.testing.assert_close(g["no_grad"], g["value"])
        # every rank's loss weights the gathered entries by their index; the sum over ranks reaches this slice
        torch.testing.assert_close(g["grad"], WORLD * torch.arange(6.0)[rank * 3 : rank * 3 + 3])


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_equal_one_rank_on_the_whole_batch(two_rank_results: tuple[int, list[dict]], case: str) -> None:
    seed, results = two_rank_results
    leaves = rows(global_batch(case, seed), 0, WORLD * LOCAL_BATCH)
    loss, crit = run_loss(case, leaves)
    loss.backward()
    per_rank = [res[case] for res in results]
    # DDP averages the ranks' gradients: the mean of the ranks' losses is the loss it follows
    torch.testing.assert_close(torch.stack([r["loss"] for r in per_rank]).mean(), loss.detach())
    torch.testing.assert_close(torch.stack([r["scale_grad"] for r in per_rank]).mean(), crit.log_logit_scale.grad)
    # Each rank's features get the gradient of every rank's loss (summed by the gather's backward pass), so after
    # DDP's division by the world size a rank's rows get what one rank would give them. Without gathering with
    # gradients only the rank's own loss reaches them, which for the full (not local) contrastive loss is the same
    # gradient — but per-rank terms (KL, entropy, Sinkhorn) then weigh W times more than the contrastive one.
    factor = 1.0 if not CASES[case][1].gather_with_grad else float(WORLD)
    for key, t in leaves.items():
        if t.grad is None:
            continue
        got = torch.cat([r["grads"][key] for r in per_rank]) / factor
        torch.testing.assert_close(got, t.grad, msg=lambda m, key=key: f"{case} {key}: {m}")
