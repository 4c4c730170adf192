"""The deployments of prefect.yaml against a real `prefect server start` on 127.0.0.1: `python -m pipelines.deploy`
creates them with their schedule (read back through the Prefect client), and a process worker runs one triggered run
of the cheap `check` deployment to COMPLETED."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.servers import free_port, stop_group, wait_until_up

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


@pytest.fixture()
def prefect_server(tmp_path: Path):
    """(api url, environment for Prefect commands) of a server with its own PREFECT_HOME under tmp_path."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect_home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_UI_ENABLED="false", DO_NOT_TRACK="1", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        wait_until_up(f"{api}/health", proc, tmp_path / "server.log", "prefect server")
        yield api, {**env, "PREFECT_API_URL": api}
    finally:
        stop_group(proc)
        log.close()


def _prefect(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    out = subprocess.run([str(BIN / "prefect"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, f"prefect {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def test_deployments_on_a_real_server(prefect_server, tmp_path: Path):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api, env = prefect_server
    project = tmp_path / "project"  # a copy, so that deploying records no state in the working tree
    project.mkdir()
    for name in ("prefect.yaml", "dvc.yaml", "params.yaml"):
        shutil.copy2(REPO / name, project / name)
    shutil.copytree(REPO / "pipelines", project / "pipelines", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**env, "PYTHONPATH": str(project)}

    _prefect(["work-pool", "create", "multigeometry", "--type", "process"], project, env)
    deployed = subprocess.run([sys.executable, "-m", "pipelines.deploy"], cwd=project, env=env, capture_output=True,
                              text=True, timeout=180)
    assert deployed.returncode == 0, deployed.stderr[-4000:]

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("pipeline/nightly")
        assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in nightly.schedules] == [
            ("0 2 * * *", "UTC", True)]
        assert nightly.parameters == {"params_file": "params.yaml", "overrides": [], "root": ".", "force": False}
        assert nightly.work_pool_name == "multigeometry"
        check = client.read_deployment_by_name("pipeline-check/check")
        run = client.create_flow_run_from_deployment(check.id)

        log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 - closed below
        worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "multigeometry", "--type",
                                   "process"], cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            deadline = time.monotonic() + 180
            state = client.read_flow_run(run.id).state
            while not (state and state.is_final()) and time.monotonic() < deadline:
                time.sleep(1)
                state = client.read_flow_run(run.id).state
        finally:
            stop_group(worker)
            log.close()
        assert state is not None and state.is_completed(), (
            f"{state}\n{(tmp_path / 'worker.log').read_text()[-4000:]}")
