"""Cross-rank gathering for a global contrastive batch, with or without gradients (OpenCLIP's gather_with_grad)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import Tensor

_LOCAL_ONLY = False


def is_distributed() -> bool:
    return not _LOCAL_ONLY and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """Inside, losses gather nothing across ranks: for work that one rank does alone (validation on rank 0)."""
    global _LOCAL_ONLY
    before, _LOCAL_ONLY = _LOCAL_ONLY, True
    try:
        yield
    finally:
        _LOCAL_ONLY = before


def init_from_env(use_cuda: bool) -> bool:
    """Join torchrun's process group (NCCL on CUDA, each rank on its LOCAL_RANK device; Gloo on CPU) when WORLD_SIZE
    is above 1 and none is joined yet; whether it joined one (the caller then destroys it)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return True


def rank_and_world() -> tuple[int, int]:
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenate every rank's tensor along dim 0; the backward pass returns this rank's slice of the gradient
    summed over all ranks, since every rank's loss depends on every rank's features."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        rank, world = rank_and_world()
        ctx.rank, ctx.rows = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad.narrow(0, ctx.rank * ctx.rows, ctx.rows)


def all_gather_with_grad(x: Tensor) -> Tensor:
    """All ranks' `x` concatenated along dim 0 (equal shapes on every rank), differentiable; `x` itself alone when
    not running distributed."""
    if not is_distributed():
        return x
    return _AllGatherWithGrad.apply(x)


def all_gather_no_grad(x: Tensor) -> Tensor:
    """All ranks' `x` concatenated along dim 0; only this rank's own slice carries gradients (OpenCLIP without
    --gather-with-grad). Also the way to gather labels and ids."""
    if not is_distributed():
        return x
    rank, world = rank_and_world()
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank] = x
    return torch.cat(parts, dim=0)
