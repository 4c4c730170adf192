"""The training objective's gradients: two DDP ranks (gloo, spawned) and gradient accumulation with cached features
both equal one process on the whole batch."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from multigeometry.config import params_from_dict
from multigeometry.data.batch import Batch, Texts
from multigeometry.losses import MainCriterion
from multigeometry.models.pair_model import PairModel
from multigeometry.training.objective import TrainModule, accumulated_backward

DIMS = {"image": 12, "text": 10}
GLOBAL = 8


def make_params(geometry: str):
    return params_from_dict(
        {
            "pairs": {"pairs": [{"a": "image", "b": "text"}]},
            "model": {
                "geometry": geometry,
                "embed_dim": 6,
                "n_components": 2,
                "trunk": "mlp",
                "image": {"hidden_dim": 16, "layers": 1},
                "text": {"hidden_dim": 16, "layers": 1, "lock": False},
            },
            "loss": {"kl_weight": 0.01, "entailment_weight": 0.2},
        }
    )


def make_module(geometry: str) -> TrainModule:
    params = make_params(geometry)
    torch.manual_seed(0)
    model = PairModel(params.model, ["image", "text"], feature_dims=DIMS)
    return TrainModule(model, MainCriterion(params.loss, params.model)).double()


def make_batch(rows: slice) -> Batch:
    gen = torch.Generator().manual_seed(1)
    n = GLOBAL
    image = torch.randn(n, DIMS["image"], generator=gen, dtype=torch.float64)
    text = torch.randn(n, DIMS["text"], generator=gen, dtype=torch.float64)
    hierarchy = torch.randn(2 * n, DIMS["text"], generator=gen, dtype=torch.float64)
    groups = torch.tensor([0, 1, 1, 2, 3, 4, 4, 5])
    idx = torch.arange(n)[rows]
    owner = idx.repeat_interleave(2) - idx[0]
    parent = torch.stack([torch.full_like(idx, -1), torch.arange(len(idx)) * 2], 1).flatten()
    entries = torch.arange(2 * idx[0], 2 * (idx[-1] + 1))
    return Batch(
        group_ids=groups[rows],
        present={"image": torch.ones(len(idx), dtype=torch.bool), "text": torch.ones(len(idx), dtype=torch.bool)},
        pairs=[("image", "text", 1.0)],
        inputs={"image.emb": image[rows], "text.emb": text[rows]},
        general=Texts(owner=owner, raw=[f"d{e}" for e in entries.tolist()], key=entries,
                      features=hierarchy[entries]),
        hierarchy_parent=parent,
    )


def grads(module: TrainModule) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def single(geometry: str) -> dict[str, torch.Tensor]:
    module = make_module(geometry)
    module(make_batch(slice(0, GLOBAL)))["loss"].backward()
    return grads(module)


def _rank(rank: int, port: int, geometry: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    module = make_module(geometry)
    ddp = torch.nn.parallel.DistributedDataParallel(module, find_unused_parameters=True)
    half = GLOBAL // 2
    ddp(make_batch(slice(rank * half, (rank + 1) * half)))["loss"].backward()
    if rank == 0:
        torch.save(grads(module), out)
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("geometry", ["mixture", "point"])
def test_two_ranks_give_the_gradients_of_one_process(geometry: str, tmp_path: Path):
    out = tmp_path / "grads.pt"
    mp.spawn(_rank, args=(_free_port(), geometry, str(out)), nprocs=2, join=True)
    ddp_grads = torch.load(out, weights_only=True)
    reference = single(geometry)
    assert ddp_grads.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(ddp_grads[name], reference[name], rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("geometry", ["mixture", "point", "cone"])
def test_accumulation_with_cached_features_keeps_the_batch_whole(geometry: str):
    reference = single(geometry)
    module = make_module(geometry)
    accumulated_backward(module, [make_batch(slice(0, 4)), make_batch(slice(4, 8))])
    accumulated = grads(module)
    assert accumulated.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(accumulated[name], reference[name], rtol=1e-9, atol=1e-12, msg=name)


def test_compiled_encoders_match_eager_and_keep_their_state_dict():
    from multigeometry.training.loop import compile_encoders

    module = make_module("mixture")
    batch = make_batch(slice(0, GLOBAL))
    eager = module.model(batch)["image"].mu
    keys = set(module.state_dict())
    compile_encoders(module.model, backend="aot_eager")  # dynamo's capture and autograd, without the C++ build
    compiled = module.model(batch)["image"].mu
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-8)
    compiled.sum().backward()
    assert all(p.grad is not None for p in module.model.encoders["image"].parameters())
    assert set(module.state_dict()) == keys
