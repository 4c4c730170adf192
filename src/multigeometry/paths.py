"""Where each stage reads and writes, relative to the project root (DESIGN.md, "Data contracts")."""

from __future__ import annotations

from pathlib import Path

from multigeometry.config import Params


def fingerprint_file(params: Params, root: Path = Path(".")) -> Path:
    return Path(root) / "data" / "sources" / f"{params.data.dataset}.json"


def raw_dir(params: Params, root: Path = Path(".")) -> Path:
    return Path(root) / "data" / "raw" / params.data.dataset


def validated_dir(params: Params, root: Path = Path(".")) -> Path:
    return Path(root) / "data" / "validated" / params.data.dataset


def shards_dir(params: Params, root: Path = Path(".")) -> Path:
    return Path(root) / "data" / "shards" / params.data.dataset


def models_dir(params: Params, root: Path = Path(".")) -> Path:
    return Path(root) / "data" / "models" / params.train.run_name


def eval_dir(params: Params, root: Path = Path(".")) -> Path:
    return Path(root) / "data" / "eval" / params.train.run_name


def registry_dir(params: Params, root: Path = Path(".")) -> Path:
    return Path(root) / "data" / "registry" / params.train.run_name


# Metrics and plot data live outside data/ (which git ignores) so that git holds them beside dvc.lock: `dvc metrics
# diff`, `dvc plots diff` and `dvc exp show` compare them across commits and experiments.
METRICS_ROOT = "metrics"


def run_reports_dir(params: Params, root: Path = Path(".")) -> Path:
    """`metrics/runs/<run>/`: train.json, headline.json (the evaluation's summary), plots/*.csv."""
    return Path(root) / METRICS_ROOT / "runs" / params.train.run_name


def data_report_path(params: Params, root: Path = Path(".")) -> Path:
    """`metrics/data/<dataset>.json`: the validate stage's counts."""
    return Path(root) / METRICS_ROOT / "data" / f"{params.data.dataset}.json"
