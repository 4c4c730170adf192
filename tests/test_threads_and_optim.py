"""The thread count chosen for the machine, and the fused AdamW against torch's plain one."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from multigeometry.config import TrainConfig
from multigeometry.threads import apply_threads, available_cpus, cgroup_cpu_limit, choose_threads
from multigeometry.training.optim import fused_supported, make_optimizer, param_groups


def _cgroup_v2(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cpu.max").write_text(text)
    return root


def test_cgroup_limit_reads_v2_and_v1(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(_cgroup_v2(tmp_path / "a", "150000 100000\n")) == 1.5
    assert cgroup_cpu_limit(_cgroup_v2(tmp_path / "b", "max 100000\n")) is None
    v1 = tmp_path / "c" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path / "c") == 2.0
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path / "c") is None
    assert cgroup_cpu_limit(tmp_path / "none") is None


def test_quota_caps_the_affinity_mask(tmp_path: Path) -> None:
    import os

    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(_cgroup_v2(tmp_path / "q", "50000 100000")) == 1  # half a CPU rounds up to one
    assert available_cpus(_cgroup_v2(tmp_path / "big", f"{(affinity + 8) * 100000} 100000")) == affinity


def test_choice_order_configured_then_env_then_cpus_per_process(tmp_path: Path) -> None:
    root = _cgroup_v2(tmp_path, "400000 100000")
    cpus = available_cpus(root)
    assert choose_threads(3, environ={"OMP_NUM_THREADS": "1"}, root=root) == (3, "train.threads")
    assert choose_threads(0, environ={"OMP_NUM_THREADS": "2"}, root=root) == (2, "OMP_NUM_THREADS")
    assert choose_threads(0, environ={}, root=root) == (cpus, "available CPUs")
    assert choose_threads(0, processes_per_node=64, environ={}, root=root) == (1, "available CPUs")


@pytest.mark.parametrize("value", ["two", "0"])
def test_bad_omp_num_threads_is_named(value: str) -> None:
    with pytest.raises(ValueError, match=f"OMP_NUM_THREADS='{value}'"):
        choose_threads(0, environ={"OMP_NUM_THREADS": value})


def test_apply_threads_sets_torch() -> None:
    before = torch.get_num_threads()
    try:
        assert apply_threads(1) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_fused_adamw_steps_like_the_plain_one() -> None:
    torch.manual_seed(0)
    fused_model = nn.Sequential(nn.Linear(16, 8), nn.LayerNorm(8), nn.Linear(8, 4))
    plain_model = copy.deepcopy(fused_model)
    cfg = TrainConfig()
    fused = make_optimizer([fused_model], cfg)
    assert fused.defaults["fused"] is True
    plain = torch.optim.AdamW(param_groups([plain_model], cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                              eps=cfg.eps)
    x = torch.randn(32, 16)
    for _ in range(5):
        for model, opt in ((fused_model, fused), (plain_model, plain)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for a, b in zip(fused_model.parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the state dicts are interchangeable, so checkpoints resume either way
    plain.load_state_dict(fused.state_dict())


def test_fused_only_for_floating_tensors_on_one_device() -> None:
    assert fused_supported([{"params": [nn.Parameter(torch.zeros(2))]}])
    assert not fused_supported([{"params": []}])
    two_devices = [nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2, device="meta"))]
    assert not fused_supported([{"params": two_devices}])
