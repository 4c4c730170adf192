"""MLflow tracking for a training run, on rank 0 only; other ranks get a tracker that does nothing."""

from __future__ import annotations

import json
import logging
import platform
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_S = 60


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


def timed_run_name(run_name: str) -> str:
    """`<train.run_name>-<UTC time>`: runs of one name stay apart in the MLflow UI."""
    import datetime as dt

    return f"{run_name}-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"


class Tracker:
    def __init__(self, enabled: bool, uri: str, experiment: str, run_name: str) -> None:
        self.enabled = enabled
        self.uri = uri
        self.run_id: str | None = None
        if not enabled:
            return
        import mlflow

        if uri.startswith("sqlite:"):
            configure_sqlite_busy_timeout()
        mlflow.set_tracking_uri(uri)
        run = mlflow.start_run(run_name=timed_run_name(run_name), experiment_id=ensure_experiment(experiment, uri),
                               tags={"multigeometry.run_name": run_name})
        self.run_id = run.info.run_id
        self._mlflow = mlflow
        log.info("MLflow run %s in %s (experiment %s)", self.run_id, uri, experiment)

    def params(self, params: dict[str, Any]) -> None:
        if self.enabled:
            flat = {k: v for k, v in flatten(params).items()}
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
