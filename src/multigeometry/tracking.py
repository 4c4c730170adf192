"""MLflow tracking (training runs on rank 0 only, other ranks get a tracker that does nothing) and the store helpers
the registry shares.

A SQLite store's schema is created once, under a file lock, before anything uses it (two processes migrating a fresh
database at once fail). A resumed run continues the MLflow run its checkpoint names, and runs of the same training
folder that a kill left RUNNING are ended as KILLED, so one training is one run with one metric history.
"""

from __future__ import annotations

import contextlib
import json
import logging
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_S = 60
RUN_DIR_TAG = "multigeometry.run_dir"  # the training folder a run writes; runs of one folder are one training
_READY: set[str] = set()


def default_tracking_uri(root: Path) -> str:
    """An absolute SQLite store in the project root: MLflow 3 deprecates the file store, and a relative URI points
    elsewhere under `dvc exp run --temp`."""
    return f"sqlite:///{(Path(root) / 'mlflow.db').resolve()}"


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list) else value
    return flat


def configure_sqlite_busy_timeout() -> None:
    """SQLite answers "database is locked" at once unless told to wait; MLflow opens its store through SQLAlchemy,
    so every new connection gets a busy timeout."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if getattr(configure_sqlite_busy_timeout, "done", False):
        return

    @event.listens_for(Engine, "connect")
    def _busy_timeout(dbapi_connection: Any, _record: Any) -> None:
        if type(dbapi_connection).__module__.startswith("sqlite3"):
            dbapi_connection.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_S * 1000}")

    configure_sqlite_busy_timeout.done = True  # type: ignore[attr-defined]


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_store(uri: str) -> None:
    """Create a SQLite store's schema (tracking and registry tables) once, under `<db>.lock`: MLflow migrates an
    empty database on first use, and two processes doing so at once fail (alembic `CommandError`, `duplicate column
    name`). Other stores are left to their server."""
    if not uri.startswith("sqlite:///") or uri in _READY:
        return
    from mlflow import MlflowClient

    configure_sqlite_busy_timeout()
    db = Path(uri.removeprefix("sqlite:///"))
    with _file_lock(db.with_name(db.name + ".lock")):
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_experiments(max_results=1)  # the tracking store: creates or checks the schema
        client.search_registered_models(max_results=1)  # the registry store on the same database
    _READY.add(uri)


def default_artifact_location(uri: str) -> str | None:
    """For a SQLite store, `mlartifacts/` beside the database file, as an absolute URI: left to MLflow, artifacts go
    to `./mlruns` under whatever directory the run started in. Other stores (a tracking server) choose their own."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()


def ensure_experiment(experiment: str, uri: str) -> str:
    """The experiment's id, creating it (with its artifact location) when it does not exist yet; safe when two
    processes create it at once."""
    import mlflow
    from mlflow.exceptions import MlflowException

    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        try:
            return mlflow.create_experiment(experiment, artifact_location=default_artifact_location(uri))
        except MlflowException:  # created meanwhile by another process
            found = mlflow.get_experiment_by_name(experiment)
            if found is None:
                raise
    return found.experiment_id


def end_abandoned_runs(client: Any, experiment_id: str, run_dir: str, keep: str | None) -> list[str]:
    """End as KILLED the runs of `run_dir` still RUNNING (their process was killed), except `keep`; their ids."""
    runs = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    ended = []
    for run in runs:
        if run.data.tags.get(RUN_DIR_TAG) == run_dir and run.info.run_id != keep:
            client.set_terminated(run.info.run_id, status="KILLED")
            ended.append(run.info.run_id)
    return ended


def timed_run_name(run_name: str) -> str:
    """`<train.run_name>-<UTC time>`: runs of one name stay apart in the MLflow UI."""
    import datetime as dt

    return f"{run_name}-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"


class Tracker:
    """`run_dir` identifies the training (its folder); `resume_run_id`, the MLflow run a resumed training continues."""

    def __init__(self, enabled: bool, uri: str, experiment: str, run_name: str, run_dir: Path | None = None,
                 resume_run_id: str | None = None) -> None:
        self.enabled = enabled
        self.uri = uri
        self.run_id: str | None = None
        self.resumed = False
        if not enabled:
            return
        import mlflow
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        if uri.startswith("sqlite:"):
            ensure_store(uri)
        mlflow.set_tracking_uri(uri)
        experiment_id = ensure_experiment(experiment, uri)
        client = MlflowClient(tracking_uri=uri)
        folder = str(Path(run_dir).resolve()) if run_dir is not None else ""
        if folder:
            for ended in end_abandoned_runs(client, experiment_id, folder, resume_run_id):
                log.warning("MLflow run %s of %s was left RUNNING by a killed process: ended as KILLED", ended,
                            folder)
        run = None
        if resume_run_id:
            try:
                run = mlflow.start_run(run_id=resume_run_id)
                self.resumed = True
            except MlflowException as e:
                log.warning("MLflow run %s of the checkpoint cannot be continued (%s); starting a new run",
                            resume_run_id, e)
        if run is None:
            tags = {"multigeometry.run_name": run_name, **({RUN_DIR_TAG: folder} if folder else {})}
            run = mlflow.start_run(run_name=timed_run_name(run_name), experiment_id=experiment_id, tags=tags)
        self.run_id = run.info.run_id
        self._mlflow = mlflow
        self._client = client
        log.info("MLflow run %s in %s (experiment %s)%s", self.run_id, uri, experiment,
                 ", continued" if self.resumed else "")

    def params(self, params: dict[str, Any]) -> None:
        """Log the params; a continued run keeps the values it has (MLflow refuses to change one) and records each
        changed value as a tag `resumed.<key>`."""
        if not self.enabled:
            return
        flat = flatten(params)
        if self.resumed:
            logged = self._client.get_run(self.run_id).data.params
            changed = {k: v for k, v in flat.items() if k in logged and logged[k] != str(v)}
            if changed:
                self._mlflow.set_tags({f"resumed.{k}": str(v) for k, v in changed.items()})
            flat = {k: v for k, v in flat.items() if k not in logged}
        items = list(flat.items())
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params a call
            self._mlflow.log_params(dict(items[i : i + 100]))

    def system(self, info: dict[str, Any]) -> None:
        if self.enabled:
            self._mlflow.set_tags({f"system.{k}": str(v) for k, v in info.items()})

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.enabled:
            clean = {k.replace("@", "_at_"): float(v) for k, v in metrics.items()}
            self._mlflow.log_metrics(clean, step=step)

    def artifact(self, path: Path, folder: str | None = None) -> None:
        if self.enabled:
            self._mlflow.log_artifact(str(path), artifact_path=folder)

    def finish(self, status: str = "FINISHED") -> None:
        if self.enabled:
            self._mlflow.end_run(status=status)


def system_info(device: Any, world_size: int) -> dict[str, Any]:
    import torch

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "device": str(device),
        "world_size": world_size,
        "cpu_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
