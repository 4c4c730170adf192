"""Registration over HTTP against a real `mlflow server` started on 127.0.0.1 (SQLite store, proxied artifacts):
the version, its alias and tags land on the server, and the champion loads back through it and embeds; and the
champion served by a real `mlflow models serve` answers HTTP requests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from multigeometry.evaluation.report import METRICS_FILE
from multigeometry.paths import eval_dir
from tests.servers import free_port, stop_group, wait_until_up
from tests.test_registry import with_registry, write_metrics

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mlflow_server")


@pytest.fixture(scope="module")
def mlflow_server(server_dir: Path):
    """A real `mlflow server` for the module; the registration of `served` below uses it."""
    tmp_path = server_dir
    port = free_port()
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed below
    mlflow = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen(
        [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "MLFLOW_TRACKING_URI": ""},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/health", proc, tmp_path / "server.log", "mlflow server")
        yield url
    finally:
        stop_group(proc)
        log.close()


@pytest.fixture(scope="module")
def served(tiny_trained, mlflow_server) -> dict:
    """The tiny model registered as `served` through the server, once for the module: the outcome."""
    from multigeometry.stages.register import register

    params, root = tiny_trained
    params = with_registry(params, tracking_uri=mlflow_server, model_name="served")
    if not (eval_dir(params, root) / METRICS_FILE).is_file():
        write_metrics(params, root)
    return json.loads(register(params, root).read_text())


def test_register_over_http(served, mlflow_server, server_dir):
    import mlflow
    import pandas as pd

    from multigeometry.registry.register import connect

    outcome = served
    assert outcome["registered"] is True and outcome["version"] == "1", outcome["gate"]["reason"]
    assert outcome["tracking_uri"] == mlflow_server

    client = connect(mlflow_server)
    version = client.get_model_version_by_alias("served", "champion")
    assert str(version.version) == "1"
    assert version.tags["multigeometry.gate_metric"] == "mean_R@1"
    # the artifacts went through the server's proxy into its own folder
    assert any((server_dir / "artifacts").rglob("package.json"))
    out = mlflow.pyfunc.load_model("models:/served@champion").predict(pd.DataFrame({"text": ["a red circle"]}))
    assert list(out["modality"]) == ["text"] and len(out["means"][0]) == 2


def _serve(model_uri: str, env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen, str]:
    """`mlflow models serve` of `model_uri` on a free port, in this environment (no new one is built)."""
    port = free_port()
    log = open(log_path, "w")  # noqa: SIM115 - the process owns it until stopped
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    return proc, f"http://127.0.0.1:{port}"


def test_mlflow_models_serve_embeds_over_http(tiny_trained, served, mlflow_server, tmp_path):
    """The champion behind `mlflow models serve`: JSON in (a DataFrame of raw inputs), the distributions out, as the
    in-process model gives them."""
    import urllib.request

    import mlflow
    import numpy as np
    import pandas as pd

    from multigeometry.registry.register import connect

    _, root = tiny_trained
    assert served["registered"]
    bin_dir = Path(sys.executable).parent  # it runs `uvicorn` from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    proc, url = _serve("models:/served@champion", env, tmp_path / "serve.log")
    try:
        wait_until_up(f"{url}/ping", proc, tmp_path / "serve.log", "mlflow models serve", timeout_s=300)
        image = str(next((root / "data/raw/world/image").iterdir()))
        body = {"dataframe_split": {"columns": ["text", "image"], "data": [["a red circle", None], [None, image]]}}
        request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            served = json.loads(response.read())["predictions"]
    finally:
        stop_group(proc)
    assert [(r["row"], r["modality"]) for r in served] == [(0, "text"), (1, "image")]
    connect(mlflow_server)
    local = mlflow.pyfunc.load_model("models:/served@champion").predict(
        pd.DataFrame({"text": ["a red circle", None], "image": [None, image]}))
    for got, want in zip(served, local.to_dict("records"), strict=True):
        assert np.allclose(np.array(got["means"], dtype=float), np.stack(list(want["means"])), atol=1e-6)
        assert got["uncertainty"] == pytest.approx(want["uncertainty"])
