"""Registration over HTTP against a real `mlflow server` started on 127.0.0.1 (SQLite store, proxied artifacts):
the version, its alias and tags land on the server, and the champion loads back through it and embeds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import free_port, stop_group, wait_until_up
from tests.test_registry import with_registry, write_metrics

pytestmark = pytest.mark.slow


@pytest.fixture()
def mlflow_server(tmp_path: Path):
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


def test_register_over_http(tiny_trained, mlflow_server, tmp_path):
    import mlflow
    import pandas as pd

    from multigeometry.paths import eval_dir
    from multigeometry.registry.register import connect
    from multigeometry.stages.register import register

    params, root = tiny_trained
    params = with_registry(params, tracking_uri=mlflow_server, model_name="served")
    if not (eval_dir(params, root) / "metrics.json").is_file():
        write_metrics(params, root)
    outcome = json.loads(register(params, root).read_text())
    assert outcome["registered"] is True and outcome["version"] == "1", outcome["gate"]["reason"]
    assert outcome["tracking_uri"] == mlflow_server

    client = connect(mlflow_server)
    version = client.get_model_version_by_alias("served", "champion")
    assert str(version.version) == "1"
    assert version.tags["multigeometry.gate_metric"] == "mean_R@1"
    # the artifacts went through the server's proxy into its own folder
    assert any((tmp_path / "artifacts").rglob("package.json"))
    out = mlflow.pyfunc.load_model("models:/served@champion").predict(pd.DataFrame({"text": ["a red circle"]}))
    assert list(out["modality"]) == ["text"] and len(out["means"][0]) == 2
