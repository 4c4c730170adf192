"""The deployments of prefect.yaml against a real `prefect server start` on 127.0.0.1, with its scheduler:

- `python -m pipelines.deploy` creates them and says what it created; `prefect deploy --all` works on the same file;
- a schedule a minute ahead gets a SCHEDULED run created by the server's own scheduler service, and the CLI's
  listings (`deployment ls`, `flow-run ls`, `work-pool ls`) answer;
- a process worker runs a triggered `check` run in the project folder itself (its report lands there, not in a
  temporary copy) and the run's logs carry every stage's cache key."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

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
               PREFECT_UI_ENABLED="false", DO_NOT_TRACK="1", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
               PREFECT_LOCAL_STORAGE_PATH=str(tmp_path / "results"))
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
    errors = [line for line in (tmp_path / "server.log").read_text().splitlines() if "Error" in line]
    assert not errors, "the server logged errors:\n" + "\n".join(errors[:20])


def _prefect(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    out = subprocess.run([str(BIN / "prefect"), *args], cwd=cwd, env={**env, "COLUMNS": "200"}, capture_output=True,
                         text=True, timeout=180)  # wide enough that rich tables print whole names
    assert out.returncode == 0, f"prefect {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def _project(tmp_path: Path, nightly_cron: str) -> Path:
    """A copy of the project's Prefect files (no state recorded in the working tree), nightly on `nightly_cron`."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(REPO / name, project / name)
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    (nightly,) = [d for d in spec["deployments"] if d["name"] == "nightly"]
    nightly["schedules"][0]["cron"] = nightly_cron
    (project / "prefect.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    for folder in ("pipelines", "src"):  # src: the code deps of the stages' cache keys
        shutil.copytree(REPO / folder, project / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return project


def _wait(read, done, timeout_s: float = 150):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout_s
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(1)
        value = read()
    return value


def test_scheduled_and_triggered_runs_on_a_real_server(prefect_server, tmp_path: Path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from multigeometry.config import load_params
    from pipelines.stage_cache import stage_key

    api, env = prefect_server
    fire_at = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2)).replace(second=0, microsecond=0)
    project = _project(tmp_path, f"{fire_at.minute} {fire_at.hour} * * *")
    env = {**env, "PYTHONPATH": str(project)}

    _prefect(["work-pool", "create", "multigeometry", "--type", "process"], project, env)
    deployed = subprocess.run([sys.executable, "-m", "pipelines.deploy"], cwd=project, env=env, capture_output=True,
                              text=True, timeout=180)
    assert deployed.returncode == 0, deployed.stderr[-4000:]
    said = deployed.stdout
    assert "created deployment pipeline/nightly" in said and f"cron '{fire_at.minute} {fire_at.hour} * * *' (UTC)" \
        in said and "created deployment pipeline-check/check" in said, said
    assert said.count(f"runs in {project.resolve()}") == 2 and "work pool multigeometry;" in said, said

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("pipeline/nightly")
        assert nightly.parameters == {"params_file": "params.yaml", "overrides": [], "root": ".", "force": False}
        assert nightly.work_pool_name == "multigeometry"
        assert nightly.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(project.resolve())}}]

        # the server's scheduler service, not this test, creates the run of the schedule
        in_nightly = DeploymentFilter(id=DeploymentFilterId(any_=[nightly.id]))
        runs = _wait(lambda: client.read_flow_runs(deployment_filter=in_nightly), bool)
        assert runs, f"no run scheduled:\n{(tmp_path / 'server.log').read_text()[-3000:]}"
        first = min(runs, key=lambda r: r.expected_start_time)
        assert first.state.is_scheduled() and first.auto_scheduled
        assert first.expected_start_time == fire_at

        listed = _prefect(["deployment", "ls"], project, env)
        assert "pipeline/nightly" in listed and "pipeline-check/check" in listed, listed
        assert str(first.id)[:8] in _prefect(["flow-run", "ls"], project, env)
        assert "multigeometry" in _prefect(["work-pool", "ls"], project, env)

        check = client.read_deployment_by_name("pipeline-check/check")
        run = client.create_flow_run_from_deployment(check.id)
        log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 - closed below
        worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "multigeometry", "--type",
                                   "process"], cwd=tmp_path, env={**env, "PREFECT_WORKER_QUERY_SECONDS": "1"},
                                  stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            state = _wait(lambda: client.read_flow_run(run.id).state, lambda s: s is not None and s.is_final())
        finally:
            stop_group(worker)
            log.close()
        assert state is not None and state.is_completed(), f"{state}\n{(tmp_path / 'worker.log').read_text()[-4000:]}"
        # the run's log lines: on the worker's output (it streams its runs' output) and, shipped in batches, on the API
        of_run = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id]))
        shipped = _wait(lambda: "\n".join(e.message for e in client.read_logs(log_filter=of_run)),
                        lambda text: "check report" in text, timeout_s=30)
        logs = (tmp_path / "worker.log").read_text() + "\n" + shipped

    # the run worked in the project folder: its report is there, with the keys this process computes for it
    report = json.loads((project / "data/prefect/check.json").read_text())
    assert report["root"] == str(project.resolve())
    params = load_params(project / "params.yaml")
    for name, entry in report["stages"].items():
        assert entry["key"] == stage_key(name, params, project)
        assert f"key {entry['key']}" in logs, logs

    # `prefect deploy --all` reads the same prefect.yaml and records the folder it ran in
    _prefect(["--no-prompt", "deploy", "--all"], project, env)
    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        steps = client.read_deployment_by_name("pipeline/nightly").pull_steps
    assert steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(project.resolve())}}]
