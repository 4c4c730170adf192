"""Registration with a gate: the trained model becomes a new version of `registry.model_name`, and `registry.alias`
moves to it, only when its gate metric is at least `registry.min_metric` and above the current champion's on the
same evaluation data (a tie keeps the champion). The champion's own number comes from its tags when they record the
same evaluation data and eval params, else from evaluating its packaged model again here. A champion of another
dataset or other modalities is never compared: the model is refused and the outcome says to give it its own
`registry.model_name`. A model whose weights are the champion's (by a hash of the tensors, not of model.pt's bytes)
registers nothing.

Lineage: when the training run is in the registry's store, the model is logged into that run (its params, metrics
and the model version link up in MLflow); otherwise a registration run carries its params and the run's id."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multigeometry.config import Params

log = logging.getLogger(__name__)

TAG_PREFIX = "multigeometry."


def tracking_uri(params: Params, root: Path) -> str:
    """`registry.tracking_uri`, or the train stage's default: the SQLite store in the project root."""
    from multigeometry.tracking import default_tracking_uri

    return params.registry.tracking_uri or default_tracking_uri(root)


def connect(uri: str) -> Any:
    """An MlflowClient on `uri`, with the SQLite schema lock and busy timeout the training tracker uses."""
    import mlflow
    from mlflow import MlflowClient

    from multigeometry.tracking import ensure_store

    ensure_store(uri)  # a fresh SQLite store gets its schema once, under a lock
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def metric_key(name: str) -> str:
    """A metric name as MLflow accepts it in metric names and tag keys (`mean_R@1` -> `mean_R_at_1`)."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", name.replace("@", "_at_"))


# ---------------------------------------------------------------------------------------------------------------------
# fingerprints
# ---------------------------------------------------------------------------------------------------------------------


def git_commit(root: Path) -> str:
    """HEAD of the repository at `root` ("+dirty" when tracked files changed), or "unknown" outside one."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=30)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=60)
        return head.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def weights_sha256(model_path: Path) -> str:
    """A hash of the model's tensors (names, dtypes, shapes, values) and logit scale: the same for two trainings that
    end with the same weights, whatever else model.pt records (its MLflow run, the time)."""
    import torch

    state = torch.load(model_path, map_location="cpu", weights_only=True)
    digest = hashlib.sha256()
    for name, tensor in sorted(state["model"].items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    digest.update(repr(float(torch.as_tensor(state["logit_scale"]).detach())).encode())
    return digest.hexdigest()


def model_identity(model_path: Path) -> dict[str, str]:
    """What the gate compares before any metric: the dataset and the modalities the model embeds, and the training
    run that made it (from model.pt)."""
    import torch

    state = torch.load(model_path, map_location="cpu", weights_only=True)
    raw, info = state["params"], state.get("info", {})
    modalities = sorted({m for p in raw["pairs"]["pairs"] for m in (p["a"], p["b"])})
    return {"dataset": raw["data"]["dataset"], "modalities": ",".join(modalities),
            "train_run_id": str(info.get("mlflow_run_id") or ""),
            "train_tracking_uri": str(info.get("mlflow_tracking_uri") or "")}


def params_hash(model_path: Path) -> str:
    """A hash of the params the model was trained with (as its model.pt records them)."""
    import torch

    state = torch.load(model_path, map_location="cpu", weights_only=True)
    return hashlib.sha256(json.dumps(state["params"], sort_keys=True).encode()).hexdigest()[:16]


def dvc_data_hash(root: Path, out: Path) -> str:
    """The md5 DVC recorded in dvc.lock for the output `out` (relative to `root`), or "" when there is none."""
    import yaml

    lock = Path(root) / "dvc.lock"
    if not lock.is_file():
        return ""
    try:
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    except yaml.YAMLError as e:
        log.warning("%s: unreadable (%s); no DVC data hash recorded", lock, e)
        return ""
    wanted = Path(out).as_posix().rstrip("/")
    for stage in stages.values():
        for entry in stage.get("outs", []) or []:
            if str(entry.get("path", "")).rstrip("/") == wanted:
                return str(entry.get("md5") or entry.get("hash") or "")
    return ""


def eval_fingerprint(params: Params, root: Path) -> dict[str, str]:
    """What makes two evaluations comparable: the split's shard contents and the eval params. The shards are read
    whole and checked against index.json (sizes, sample counts, sha256), and the fingerprint is made of what their
    bytes are, not of what the index says."""
    from multigeometry.data.shard_index import read_index, verify_split
    from multigeometry.paths import shards_dir

    shards = shards_dir(params, root)
    index = read_index(shards)
    split = params.eval.split
    if split not in index["splits"]:
        raise ValueError(f"{shards}/index.json: no split {split!r} (eval.split)")
    facts = verify_split(shards, split, "sha256")
    found = {"samples": sum(f.samples for f in facts), "shards": [f.entry() for f in facts]}
    content = json.dumps({"split": split, "shards": found, "features": index.get("features", {})}, sort_keys=True)
    return {
        "eval_split": split,
        "eval_data_hash": hashlib.sha256(content.encode()).hexdigest()[:16],
        "eval_params_hash": params.section_hash("eval"),
    }


# ---------------------------------------------------------------------------------------------------------------------
# the gate
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Gate:
    passed: bool
    reason: str
    metric: str
    value: float
    min_metric: float
    champion_version: str | None = None
    champion_value: float | None = None
    champion_source: str | None = None  # "tags" | "re-evaluated"


def decide(metric: str, value: float, min_metric: float, champion_value: float | None) -> tuple[bool, str]:
    """The gate as a pure function: (passes, why)."""
    if math.isnan(value):
        return False, f"{metric} is NaN"
    if value < min_metric:
        return False, f"{metric}={value:.4f} is below registry.min_metric={min_metric:.4f}"
    if champion_value is not None and value < champion_value:
        return False, f"{metric}={value:.4f} is below the champion's {champion_value:.4f} on the same data"
    if champion_value is not None and value == champion_value:
        return False, f"{metric}={value:.4f} ties the champion's {champion_value:.4f}: the champion stays"
    if champion_value is None:
        return True, f"{metric}={value:.4f} >= registry.min_metric={min_metric:.4f} and there is no champion yet"
    return True, (f"{metric}={value:.4f} >= registry.min_metric={min_metric:.4f} and above the champion's "
                  f"{champion_value:.4f}")


def current_champion(client: Any, name: str, alias: str) -> Any | None:
    """The model version that holds `alias`, or None when the model or the alias does not exist yet."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if getattr(e, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def champion_metric(champion: Any, params: Params, root: Path, fingerprint: dict[str, str]) -> tuple[float, str]:
    """The champion's gate metric on this evaluation data: from its tags when they match, else re-evaluated."""
    tags = champion.tags or {}
    key = f"{TAG_PREFIX}metric.{metric_key(params.registry.gate_metric)}"
    same = all(tags.get(f"{TAG_PREFIX}{k}") == v for k, v in fingerprint.items())
    if same and key in tags:
        return float(tags[key]), "tags"
    log.info("champion v%s was evaluated on other data or eval params: evaluating it again", champion.version)
    import mlflow

    from multigeometry.evaluation import evaluate_trained
    from multigeometry.registry.pyfunc import unwrap

    uri = f"models:/{champion.name}/{champion.version}"
    trained = unwrap(mlflow.pyfunc.load_model(uri)).trained
    # the champion's own architecture and preprocessing, on the current data: the shards of this dataset
    trained = dataclasses.replace(trained, params=dataclasses.replace(trained.params, data=params.data))
    try:
        metrics = evaluate_trained(trained, root, params.eval.split, params.eval)
    except Exception as e:
        raise RuntimeError(
            f"cannot evaluate the champion {uri} on this data to compare: {type(e).__name__}: {e}"
        ) from e
    if params.registry.gate_metric not in metrics:
        raise RuntimeError(f"the champion {uri} has no {params.registry.gate_metric!r} on this data")
    return float(metrics[params.registry.gate_metric]), "re-evaluated"


# ---------------------------------------------------------------------------------------------------------------------
# the whole registration
# ---------------------------------------------------------------------------------------------------------------------


def read_metrics(path: Path, gate_metric: str) -> dict[str, float]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no evaluation metrics; run the evaluate stage first")
    metrics = json.loads(path.read_text())
    if not isinstance(metrics, dict):
        raise ValueError(f"{path}: expected a JSON object of metrics")
    if gate_metric not in metrics:
        raise KeyError(f"{path}: no metric {gate_metric!r} (registry.gate_metric); it has {sorted(metrics)}")
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def _other_kind(champion: Any, identity: dict[str, str], model_name: str) -> str:
    """Why the champion cannot be compared with this model (another dataset or other modalities), or ""."""
    tags = champion.tags or {}
    theirs = {k: tags.get(f"{TAG_PREFIX}{k}") for k in ("dataset", "modalities")}
    ours = {k: identity[k] for k in theirs}
    differ = [k for k in theirs if theirs[k] is not None and theirs[k] != ours[k]]
    if not differ:
        return ""
    return (f"the champion (version {champion.version}) is a model of dataset {theirs['dataset']!r} with modalities "
            f"{theirs['modalities']}; this one of {ours['dataset']!r} with {ours['modalities']}: models of different "
            f"{' and '.join(differ)} are not compared. Register it under its own name, e.g. "
            f"registry.model_name={model_name}-{ours['dataset']}")


@contextlib.contextmanager
def _lineage_run(params: Params, uri: str, identity: dict[str, str], model_path: Path) -> Iterator[Any]:
    """The MLflow run to log the model into: the training run itself when the registry's store holds it (its params
    and metrics are then the version's), else a new registration run that records the params and the training run's
    id."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from multigeometry.tracking import ensure_experiment, flatten

    run_id = identity["train_run_id"]
    if run_id:
        try:
            mlflow.MlflowClient(tracking_uri=uri).get_run(run_id)
        except MlflowException:
            log.info("register: the training run %s is not in %s; logging a registration run", run_id, uri)
            run_id = ""
    if run_id:
        with mlflow.start_run(run_id=run_id) as run:
            yield run
        return
    import torch

    experiment_id = ensure_experiment(params.registry.experiment, uri)
    trained_with = torch.load(model_path, map_location="cpu", weights_only=True)["params"]
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"register-{params.train.run_name}") as run:
        items = list(flatten(trained_with).items())
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params a call
            mlflow.log_params(dict(items[i : i + 100]))
        yield run


def register_model(params: Params, root: Path, model_path: Path, metrics_path: Path) -> dict[str, Any]:
    """Gate the model at `model_path` on its metrics at `metrics_path`, register it when it passes; the outcome."""
    import mlflow

    from multigeometry.paths import shards_dir
    from multigeometry.registry.pyfunc import log_pyfunc, sha256_file

    cfg = params.registry
    root = Path(root)
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: no trained model; run the train stage first")
    metrics = read_metrics(metrics_path, cfg.gate_metric)
    value = metrics[cfg.gate_metric]
    uri = tracking_uri(params, root)
    client = connect(uri)
    fingerprint = eval_fingerprint(params, root)
    identity = model_identity(model_path)
    weights = weights_sha256(model_path)
    champion = current_champion(client, cfg.model_name, cfg.alias)
    gate = Gate(False, "", cfg.gate_metric, value, cfg.min_metric)
    refusal = ""
    if champion is not None:
        gate.champion_version = str(champion.version)
        refusal = _other_kind(champion, identity, cfg.model_name)
        if not refusal:
            try:
                gate.champion_value, gate.champion_source = champion_metric(champion, params, root, fingerprint)
            except RuntimeError as e:  # a champion that cannot be evaluated on this data: no comparison
                refusal = f"cannot compare with the champion (version {champion.version}): {e}"
    if refusal:
        gate.passed, gate.reason = False, refusal
    else:
        gate.passed, gate.reason = decide(cfg.gate_metric, value, cfg.min_metric, gate.champion_value)
    tags = {
        "git_commit": git_commit(root),
        "params_hash": params_hash(model_path),
        "dvc_data_hash": dvc_data_hash(root, shards_dir(params, Path("."))) or "none",
        "model_sha256": sha256_file(model_path),
        "weights_sha256": weights,
        "dataset": identity["dataset"],
        "modalities": identity["modalities"],
        "train_run_name": params.train.run_name,
        "train_run_id": identity["train_run_id"] or "none",
        "gate_metric": cfg.gate_metric,
        **fingerprint,
        **{f"metric.{metric_key(k)}": repr(v) for k, v in metrics.items()},
    }
    outcome: dict[str, Any] = {
        "registered": False,
        "model_name": cfg.model_name,
        "alias": cfg.alias,
        "tracking_uri": uri,
        "gate": dataclasses.asdict(gate),
        "metrics": metrics,
        "tags": tags,
        "version": None,
        "model_uri": None,
        "run_id": None,
    }
    champion_tags = (champion.tags or {}) if champion is not None else {}
    same_weights = champion is not None and not refusal and champion_tags.get(f"{TAG_PREFIX}weights_sha256") == weights
    if same_weights and value >= cfg.min_metric:  # (it ties the champion; below min_metric it is refused as any)
        outcome.update(registered=True, version=str(champion.version),
                       model_uri=f"models:/{cfg.model_name}@{cfg.alias}", run_id=champion.run_id)
        gate.passed = True
        gate.reason = (f"this model's weights are the champion's (version {champion.version}, weights_sha256 "
                       f"{weights[:12]}): nothing to register")
        outcome["gate"] = dataclasses.asdict(gate)
        log.info("register: %s", gate.reason)
        return outcome
    if not gate.passed:
        log.warning("register: refused, nothing registered: %s", gate.reason)
        return outcome

    with _lineage_run(params, uri, identity, model_path) as run:
        mlflow.log_metrics({f"eval/{metric_key(k)}": v for k, v in metrics.items() if not math.isnan(v)})
        mlflow.set_tags({f"{TAG_PREFIX}{k}": v for k, v in tags.items()})
        info = log_pyfunc(model_path, registered_model_name=cfg.model_name)
    version = str(info.registered_model_version)
    for key, val in tags.items():
        client.set_model_version_tag(cfg.model_name, version, f"{TAG_PREFIX}{key}", val)
    client.set_registered_model_alias(cfg.model_name, cfg.alias, version)
    outcome.update(registered=True, version=version, model_uri=f"models:/{cfg.model_name}@{cfg.alias}",
                   run_id=run.info.run_id)
    log.info("register: %s version %s is now @%s (%s)", cfg.model_name, version, cfg.alias, gate.reason)
    return outcome
