"""The train stage end to end on a tiny world: learning, resuming bit for bit, DDP, MLflow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from multigeometry.config import params_from_dict
from multigeometry.paths import run_reports_dir
from multigeometry.stages.prepare import prepare
from multigeometry.stages.shard import shard
from multigeometry.stages.validate import validate
from multigeometry.training.checkpoint import list_checkpoints, load_checkpoint
from multigeometry.training.loop import MODEL_FILE, read_train_metrics, train_model
from tests.conftest import MLP_RECIPE, still

pytestmark = pytest.mark.slow

FEATURES = {
    "image": {"model": "efficientnet-lite0"},
    "text": {"model": "all-minilm-l6-v2"},
    "audio": {"model": "whisper-tiny.en"},
    "code": {"model": "all-minilm-l6-v2"},
}


def train_raw(tmp_root: Path, **train) -> dict:
    return still({
        "seed": 0,
        "data": {"world": {"n_items": 160, "workers": 2, "image_size": 64}},
        "features": FEATURES,
        "shard": {"max_samples": 32, "workers": 2},
        "loader": {"batch_size": 32, "workers": 0, "shuffle_buffer": 64, "tokenizer": ""},
        "model": {
            "geometry": "mixture",
            "embed_dim": 64,
            "n_components": 2,
            **MLP_RECIPE,
            **{m: {"input": "emb", "hidden_dim": 128, "layers": 1} for m in ("image", "text", "audio", "code")},
            "text": {"input": "emb", "hidden_dim": 128, "layers": 1, "lock": False},
            "code": {"input": "emb", "hidden_dim": 128, "layers": 1, "init": "random"},
        },
        "train": {
            "epochs": 12,
            "lr": 2e-3,
            "warmup_steps": 5,
            "val_every": 20,
            "checkpoint_every": 10,
            "log_every": 5,
            "tracking_uri": f"sqlite:///{tmp_root / 'mlflow.db'}",
            **train,
        },
    })


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trainworld")
    params = params_from_dict(train_raw(root))
    prepare(params, root)
    validate(params, root)
    shard(params, root)
    return root


def test_tiny_model_learns(world):
    params = params_from_dict(train_raw(world))
    out = train_model(params, world)
    history = load_checkpoint(list_checkpoints(out / "checkpoints")[-1])["history"]
    first = sum(h["train/loss"] for h in history[:5]) / 5
    last = sum(h["train/loss"] for h in history[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    metrics = read_train_metrics(params, world)
    val_items = 16  # about 10% of 160 groups
    chance = 1 / val_items
    assert metrics["val/mean_R@1"] >= 5 * chance, metrics
    assert (out / MODEL_FILE).is_file() and (run_reports_dir(params, world) / "plots/loss.csv").is_file()


def test_mlflow_run_is_read_back(world, caplog):
    import logging
    import re

    from mlflow.tracking import MlflowClient

    params = params_from_dict(
        train_raw(world, run_name="tracked", epochs=1, val_every=2, log_every=1, experiment="readback")
    )
    with caplog.at_level(logging.INFO, logger="multigeometry.training.loop"):
        train_model(params, world)
    # a line a `log_every` steps for runs without a terminal: step, loss, lr, samples/s, time left
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    shape = r"step \d+/\d+ \(\d+%\) loss [\d.]+ lr \S+ [\d.]+ samples/s eta (\d+m\d\ds|\d+h\d\dm)"
    assert lines and all(re.fullmatch(shape, line) for line in lines), lines
    client = MlflowClient(tracking_uri=params.train.tracking_uri)
    experiment = client.get_experiment_by_name("readback")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and re.fullmatch(r"tracked-\d{8}-\d{6}", run.info.run_name)
    assert run.data.params["model.geometry"] == "mixture"
    assert run.data.params["train.lr"] == str(params.train.lr)
    for key in ("train/loss", "train/lr", "train/samples_per_s", "val/mean_R_at_1", "train/image-text/contrastive"):
        assert key in run.data.metrics, key
    assert run.data.tags["system.world_size"] == "1"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"resolved_params.json", "metrics", "model"} <= artifacts
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert len(history) >= 2
    # artifacts beside the SQLite store, wherever the run was started from (not ./mlruns under the cwd)
    assert experiment.artifact_location == (world / "mlartifacts").resolve().as_uri()
    assert (world / "mlartifacts" / run.info.run_id / "artifacts" / "model" / MODEL_FILE).is_file()


def _train_command(params_file: Path, root: Path) -> list[str]:
    code = (
        "import sys\nfrom pathlib import Path\nfrom multigeometry.config import load_params\n"
        "from multigeometry.training.loop import train_model\n"
        "train_model(load_params(sys.argv[1]), Path(sys.argv[2]))\n"
    )
    return [sys.executable, "-c", code, str(params_file), str(root)]


def test_killed_and_resumed_run_ends_with_the_same_weights(world, tmp_path):
    raw = train_raw(world, epochs=3, checkpoint_every=3, val_every=1000, keep_checkpoints=20, run_name="full")
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    subprocess.run(_train_command(params_file, world), check=True, capture_output=True)
    reference = torch.load(world / "data" / "models" / "full" / MODEL_FILE, weights_only=True)["model"]

    raw["train"]["run_name"] = "killed"
    params_file.write_text(yaml.safe_dump(raw))
    out = world / "data" / "models" / "killed"
    proc = subprocess.Popen(
        _train_command(params_file, world), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if len(list_checkpoints(out / "checkpoints")) >= 2:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    saved = list_checkpoints(out / "checkpoints")
    # resume from a mid-run checkpoint even if the kill came late
    for later in saved[2:]:
        later.unlink()
    (out / MODEL_FILE).unlink(missing_ok=True)
    raw["train"]["resume"] = "latest"
    params_file.write_text(yaml.safe_dump(raw))
    subprocess.run(_train_command(params_file, world), check=True, capture_output=True)
    resumed = torch.load(out / MODEL_FILE, weights_only=True)["model"]
    assert resumed.keys() == reference.keys()
    for key in reference:
        assert torch.equal(resumed[key], reference[key]), key


def test_torchrun_two_ranks_with_gloo(world, tmp_path):
    raw = train_raw(world, run_name="ddp", epochs=3, nproc=2, val_every=1000, checkpoint_every=1000)
    raw["loader"]["batch_size"] = 16  # per rank: the global batch is 32, as in one process
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    torchrun = Path(sys.executable).parent / "torchrun"
    subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc-per-node=2",
            "-m",
            "multigeometry",
            "train",
            "--params",
            str(params_file),
        ],
        cwd=world,
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    out = world / "data" / "models" / "ddp"
    assert read_train_metrics(params_from_dict({"train": {"run_name": "ddp"}}), world)["step"] > 0
    assert (out / MODEL_FILE).is_file()
    state = load_checkpoint(list_checkpoints(out / "checkpoints")[-1])
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    history = state["history"]
    assert history[-1]["train/loss"] < history[0]["train/loss"]
