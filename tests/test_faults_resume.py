"""Fault suite, training: resuming with changed params is refused naming the keys; a truncated latest checkpoint falls
back to the previous one; stale half-written checkpoints are removed; a killed run is continued as the same MLflow run,
abandoned RUNNING runs are ended as KILLED; two trainings started at once on a fresh SQLite store are both recorded."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from multigeometry.config import params_from_dict
from multigeometry.paths import models_dir, shards_dir
from multigeometry.tracking import RUN_DIR_TAG
from multigeometry.training.checkpoint import ResumeError, list_checkpoints, load_checkpoint
from multigeometry.training.loop import read_train_metrics, train_model
from tests.conftest import tiny_trained_raw

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite store for the module's trainings (its schema is made once; runs are told apart by folder)."""
    return f"sqlite:///{tmp_path_factory.mktemp('resume_store').resolve() / 'mlflow.db'}"


@pytest.fixture()
def project(tiny_trained, tmp_path, store):
    """The tiny world's shards in a fresh root: (root, a function that gives raw params)."""
    params, source = tiny_trained
    shutil.copytree(shards_dir(params, source), shards_dir(params, tmp_path))

    def raw(run_name: str = "r", **train: object) -> dict:
        base = tiny_trained_raw(tmp_path, run_name=run_name, epochs=4, checkpoint_every=2, keep_checkpoints=5,
                                val_every=100, log_every=1, tracking_uri=store)
        base["train"].update(train)
        return base

    return tmp_path, raw


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _runs_of(uri: str, run_dir: Path) -> list:
    client = _client(uri)
    experiment = client.get_experiment_by_name("multigeometry")
    return [r for r in client.search_runs([experiment.experiment_id])
            if r.data.tags.get(RUN_DIR_TAG) == str(run_dir.resolve())]


def test_resume_with_changed_params_is_refused_naming_the_keys(project):
    root, raw = project
    train_model(params_from_dict(raw()), root)
    changed = raw(resume="latest", lr=0.5)
    changed["loss"]["kl_weight"] = 0.1
    with pytest.raises(ResumeError) as e:
        train_model(params_from_dict(changed), root)
    message = str(e.value)
    assert "step-00000004.pt: saved with other params" in message
    assert "train.lr (0.003 -> 0.5)" in message and "loss.kl_weight (1e-05 -> 0.1)" in message
    assert "train.epochs" in message  # the keys that may change are listed
    longer = params_from_dict(raw(resume="latest", epochs=6, checkpoint_every=3))  # length and cadence may change
    train_model(longer, root)
    assert read_train_metrics(longer, root)["step"] == 6


def test_a_truncated_latest_checkpoint_falls_back_to_the_previous(project, caplog):
    root, raw = project
    params = params_from_dict(raw())
    out = train_model(params, root)
    checkpoints = list_checkpoints(out / "checkpoints")
    assert [p.name for p in checkpoints] == ["step-00000002.pt", "step-00000004.pt"]
    latest = checkpoints[-1]
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    stale = out / "checkpoints" / ".step-00000006.pt.x1y2.tmp"
    stale.write_bytes(b"half a checkpoint")
    stale_model = out / ".model.pt.k3j4.tmp"
    stale_model.write_bytes(b"half a model")
    with caplog.at_level(logging.WARNING, logger="multigeometry.training.checkpoint"):
        train_model(params_from_dict(raw(resume="latest", epochs=5)), root)
    assert f"{latest}: unreadable checkpoint" in caplog.text and "falling back to the previous one" in caplog.text
    assert not stale.exists() and not stale_model.exists()
    history = load_checkpoint(list_checkpoints(out / "checkpoints")[-1])["history"]
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5]  # steps 3 and 4 trained again from step 2


def test_an_unreadable_checkpoint_named_explicitly_is_an_error(project, tmp_path):
    root, raw = project
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ResumeError, match=f"train.resume: {bad} does not load"):
        train_model(params_from_dict(raw(resume=str(bad))), root)


def test_a_killed_run_is_continued_as_one_mlflow_run(project, tmp_path):
    root, raw = project
    long = raw(run_name="killed", epochs=400)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(long))
    code = ("import sys\nfrom pathlib import Path\nfrom multigeometry.config import load_params\n"
            "from multigeometry.training.loop import train_model\n"
            "train_model(load_params(sys.argv[1]), Path(sys.argv[2]))\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(params_file), str(root)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = models_dir(params_from_dict(long), root)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and not list_checkpoints(out / "checkpoints"):
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    uri = long["train"]["tracking_uri"]
    (run,) = _runs_of(uri, out)
    assert run.info.status == "RUNNING"  # what kill -9 leaves
    resumed = params_from_dict(raw(run_name="killed", epochs=8, resume="latest"))
    train_model(resumed, root)
    (after,) = _runs_of(uri, out)
    assert after.info.run_id == run.info.run_id and after.info.status == "FINISHED"
    steps = {m.step for m in _client(uri).get_metric_history(run.info.run_id, "train/loss")}
    assert steps == set(range(1, 9))
    assert after.data.tags["resumed.train.epochs"] == "8"


def test_an_abandoned_running_run_is_ended_as_killed(project):
    root, raw = project
    params = params_from_dict(raw(run_name="fresh", epochs=1))
    out = models_dir(params, root)
    import mlflow

    from multigeometry.tracking import ensure_experiment, ensure_store

    uri = params.train.tracking_uri
    client = _client(uri)
    ensure_store(uri)
    mlflow.set_tracking_uri(uri)
    experiment = ensure_experiment("multigeometry", uri)
    abandoned = client.create_run(experiment, tags={RUN_DIR_TAG: str(out.resolve())}).info.run_id
    other = client.create_run(experiment, tags={RUN_DIR_TAG: "/some/other/training"}).info.run_id
    train_model(params, root)  # no checkpoint: a fresh start
    assert client.get_run(abandoned).info.status == "KILLED"
    assert client.get_run(other).info.status == "RUNNING"  # another training's run is left alone
    assert {r.info.status for r in _runs_of(uri, out)} == {"KILLED", "FINISHED"}


def test_a_terminated_training_ends_its_run_as_killed(project, monkeypatch):
    """SIGTERM (which the CLI turns into `Terminated`, as the shard kill test shows) arriving mid-training."""
    from multigeometry.processes import Terminated
    from multigeometry.training.loop import Trainer

    root, raw = project
    params = params_from_dict(raw(run_name="terminated", epochs=1))

    def interrupted(self, tracker, rng_after_skip):
        raise Terminated("terminated by signal SIGTERM")

    monkeypatch.setattr(Trainer, "_loop", interrupted)
    with pytest.raises(Terminated):
        train_model(params, root)
    (run,) = _runs_of(params.train.tracking_uri, models_dir(params, root))
    assert run.info.status == "KILLED"


CONCURRENT = """
import sys, time
from pathlib import Path
from multigeometry.config import load_params
from multigeometry.training.loop import Trainer
trainer = Trainer(load_params(sys.argv[1]), Path(sys.argv[2]))
Path(sys.argv[4]).touch()
go = Path(sys.argv[3])
while not go.exists():
    time.sleep(0.005)
trainer.run()
"""


def test_two_trainings_started_at_once_on_a_fresh_store_are_both_recorded(project, tmp_path):
    """Both processes build their trainer, then start at the same instant on a store that does not exist yet."""
    root, raw = project
    fresh = tmp_path / "fresh" / "mlflow.db"
    uri = f"sqlite:///{fresh}"
    go = tmp_path / "go"
    procs = []
    for name in ("one", "two"):
        params_file = tmp_path / f"{name}.yaml"
        params_file.write_text(yaml.safe_dump(raw(run_name=name, max_steps=2, checkpoint_every=2, tracking_uri=uri)))
        procs.append(subprocess.Popen([sys.executable, "-c", CONCURRENT, str(params_file), str(root), str(go),
                                       str(tmp_path / f"{name}.ready")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    deadline = time.time() + 300
    while not all((tmp_path / f"{n}.ready").exists() for n in ("one", "two")):
        assert time.time() < deadline and all(p.poll() is None for p in procs), \
            [p.communicate()[1] for p in procs if p.poll() is not None]
        time.sleep(0.05)
    assert not fresh.exists()
    go.touch()
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    for name in ("one", "two"):
        (run,) = _runs_of(uri, models_dir(params_from_dict(raw(run_name=name)), root))
        assert run.info.status == "FINISHED"
