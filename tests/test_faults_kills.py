"""Fault suite, kills: kill -9 or SIGTERM of the shard stage leaves no worker process alive, SIGTERM removes the
staging folder, and the complete output is never touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from multigeometry.paths import shards_dir

from .conftest import tiny_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def validated(prepared_world):
    from multigeometry.stages.validate import validate

    params, root = prepared_world
    validate(params, root)
    return root


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            continue
    return alive


def _start_shard_stage(root: Path, tmp_path: Path) -> tuple[subprocess.Popen, list[int], Path]:
    """`multigeometry shard` with two pool workers (text features, so they stay busy a while), stopped once a shard
    is in its staging folder: (process, its descendants, the staging folder)."""
    params = tiny_params(features={"image": {"model": ""}, "text": {"model": "all-minilm-l6-v2"},
                                   "audio": {"model": ""}, "code": {"model": ""}},
                         shard={"max_samples": 1, "workers": 2}, validate={"data_docs": False})
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.to_dict()))
    cli = Path(sys.executable).parent / "multigeometry"
    # stderr to a file, not a pipe: nobody reads a pipe until the stage ends, and a full one (progress bars) would
    # block the stage's unwinding on SIGTERM in a write
    with (tmp_path / "stderr.log").open("wb") as stderr:
        proc = subprocess.Popen([str(cli), "shard", "--params", str(params_file)], cwd=root, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=stderr)
    out = shards_dir(params, root)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        staging = list(out.parent.glob(f".{out.name}.*.tmp"))
        if staging and any(staging[0].glob("*/shard-*.tar")):
            children = psutil.Process(proc.pid).children(recursive=True)
            if len(children) >= 2:
                return proc, [c.pid for c in children], staging[0]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"the shard stage ended (rc {proc.poll()}) or stalled before both workers were busy")


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_shard_stage_leaves_no_worker_alive(validated, tmp_path, signum):
    proc, descendants, staging = _start_shard_stage(validated, tmp_path)
    try:
        assert len(_alive(descendants)) >= 2
        os.kill(proc.pid, signum)  # the stage's own process only, as a scheduler or a user would
        proc.wait(timeout=60)
        deadline = time.time() + 15
        while _alive(descendants) and time.time() < deadline:
            time.sleep(0.1)
        assert _alive(descendants) == [], "worker processes outlived the shard stage"
        if signum == signal.SIGTERM:
            assert proc.returncode == 128 + 15
            assert b"terminated by signal SIGTERM" in (tmp_path / "stderr.log").read_bytes()
            assert not staging.exists(), "SIGTERM left the staging folder behind"
        else:
            assert proc.returncode == -signal.SIGKILL
    finally:
        for pid in _alive(descendants):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
