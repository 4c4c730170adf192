"""Where each stage reads and writes, relative to the project root (DESIGN.md, "Data contracts"): every file and folder
name that dvc.yaml repeats is written once, here.

The locations are templates in dvc.yaml's own syntax (`data/raw/${data.dataset}`): the code fills them from the
params (`raw_dir(params, root)`, `fill(TEMPLATE, params, root)`), dvc.yaml names the same strings, and
tests/test_stage_deps.py checks that each stage's `outs`, `metrics` and `plots` in dvc.yaml are exactly its
`STAGE_OUTPUTS` and that every data dep is an output of an earlier stage.
"""

from __future__ import annotations

import re
from pathlib import Path

from multigeometry.config import Params

# file names inside the stages' folders
MANIFEST = "manifest.parquet"  # data/raw/<dataset>/ and data/validated/<dataset>/
PREPARE_STAMP = "prepare.json"  # data/raw/<dataset>/: what was prepared, from which params (no timings: an output)
QUARANTINE = "quarantine.parquet"
VALIDATION_REPORT = "report.json"
DATA_DOCS = "data_docs"  # GX's HTML: not an output (it embeds GX's run times; README, "Validation")
MODEL_FILE = "model.pt"
RESOLVED_PARAMS = "resolved_params.json"
CHECKPOINTS = "checkpoints"  # not an output: DVC leaves it in place for `train.resume: latest`
TRAIN_METRICS = "train.json"
LOSS_PLOT = "plots/loss.csv"
METRICS_FILE = "metrics.json"
GRID_DIR = "grids"
HEADLINE_FILE = "headline.json"
RECALL_PLOT = "plots/recall_at_k.csv"
CERTAIN_PLOT = "plots/certain_r1.csv"
DECILE_PLOT = "plots/r1_by_uncertainty_decile.csv"
REGISTRATION = "registration.json"

# the stages' folders, as dvc.yaml writes them
FINGERPRINT = "data/sources/${data.dataset}.json"
RAW = "data/raw/${data.dataset}"
VALIDATED = "data/validated/${data.dataset}"
SHARDS = "data/shards/${data.dataset}"
MODELS = "data/models/${train.run_name}"
EVAL = "data/eval/${train.run_name}"
REGISTRY = "data/registry/${train.run_name}"
# Metrics and plot data live outside data/ (which git ignores) so that git holds them beside dvc.lock: `dvc metrics
# diff`, `dvc plots diff` and `dvc exp show` compare them across commits and experiments.
METRICS_ROOT = "metrics"
DATA_REPORT = f"{METRICS_ROOT}/data/${{data.dataset}}.json"
RUN_REPORTS = f"{METRICS_ROOT}/runs/${{train.run_name}}"

# what each stage writes that DVC tracks (its `outs`, `metrics` and `plots` in dvc.yaml), in pipeline order
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "fingerprint": (FINGERPRINT,),
    "prepare": (RAW,),
    "validate": (f"{VALIDATED}/{MANIFEST}", f"{VALIDATED}/{QUARANTINE}", f"{VALIDATED}/{VALIDATION_REPORT}",
                 DATA_REPORT),
    "shard": (SHARDS,),
    "train": (f"{MODELS}/{MODEL_FILE}", f"{MODELS}/{RESOLVED_PARAMS}", f"{RUN_REPORTS}/{TRAIN_METRICS}",
              f"{RUN_REPORTS}/{LOSS_PLOT}"),
    "evaluate": (f"{EVAL}/{GRID_DIR}", f"{EVAL}/{METRICS_FILE}", f"{RUN_REPORTS}/{HEADLINE_FILE}",
                 f"{RUN_REPORTS}/{RECALL_PLOT}", f"{RUN_REPORTS}/{CERTAIN_PLOT}", f"{RUN_REPORTS}/{DECILE_PLOT}"),
    "register": (f"{REGISTRY}/{REGISTRATION}",),
}

TEMPLATE_KEY = re.compile(r"\$\{\s*([A-Za-z0-9_.]+)\s*\}")


class UnknownParamError(KeyError):
    """A template names a param that does not exist."""


def resolve(template: str, params: Params) -> str:
    """`template` with each `${dotted.key}` replaced by that param's value, as DVC fills dvc.yaml from params.yaml."""

    def value(match: re.Match[str]) -> str:
        node: object = params
        for part in match.group(1).split("."):
            if not hasattr(node, part) or part.startswith("_"):
                raise UnknownParamError(f"{template}: ${{{match.group(1)}}} names no param")
            node = getattr(node, part)
        return str(node)

    return TEMPLATE_KEY.sub(value, template)


def fill(template: str, params: Params, root: Path = Path(".")) -> Path:
    """The path `template` names for `params`, below `root`."""
    return Path(root) / resolve(template, params)


def fingerprint_file(params: Params, root: Path = Path(".")) -> Path:
    return fill(FINGERPRINT, params, root)


def raw_dir(params: Params, root: Path = Path(".")) -> Path:
    return fill(RAW, params, root)


def validated_dir(params: Params, root: Path = Path(".")) -> Path:
    return fill(VALIDATED, params, root)


def shards_dir(params: Params, root: Path = Path(".")) -> Path:
    return fill(SHARDS, params, root)


def models_dir(params: Params, root: Path = Path(".")) -> Path:
    return fill(MODELS, params, root)


def eval_dir(params: Params, root: Path = Path(".")) -> Path:
    return fill(EVAL, params, root)


def registry_dir(params: Params, root: Path = Path(".")) -> Path:
    return fill(REGISTRY, params, root)


def run_reports_dir(params: Params, root: Path = Path(".")) -> Path:
    """`metrics/runs/<run>/`: train.json, headline.json (the evaluation's summary), plots/*.csv."""
    return fill(RUN_REPORTS, params, root)


def data_report_path(params: Params, root: Path = Path(".")) -> Path:
    """`metrics/data/<dataset>.json`: the validate stage's counts."""
    return fill(DATA_REPORT, params, root)
