"""Cache keys of the flow's stage tasks, from the same declarations `dvc repro` uses.

dvc.yaml is the single source of truth: a stage's key is a hash of the params sections it lists under `params:` and
the content of every path it lists under `deps:`, so the flow re-runs exactly what `dvc repro` would. Paths under
`data/` and `metrics/` are read below the run's root; code paths (`src/...`) below the project holding dvc.yaml.

The run's root is not part of the key either: the same params and the same dep contents give the same key in any
folder (a scheduled run, a copy of the project, another machine with the same data), so such a run finds the cache.

Outputs are not part of the key (a key computed before a first run would never match the one after it); instead the
flow re-runs a stage, overwriting its cache entry, when any of its `outs:`/`metrics:` is missing (`missing_outputs`),
so a deleted data/ folder is rebuilt.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from multigeometry.config import Params

PROJECT = Path(__file__).resolve().parents[1]
DVC_YAML = PROJECT / "dvc.yaml"
KEY_VERSION = "2"  # bump to invalidate every cached stage result (e.g. when what a task returns changes)
_TEMPLATE = re.compile(r"\$\{\s*([A-Za-z0-9_.]+)\s*\}")
_SKIPPED = {"__pycache__", ".ipynb_checkpoints"}


class StageSpecError(ValueError):
    """dvc.yaml does not declare a stage the way the flow needs it."""


@dataclass(frozen=True)
class StageSpec:
    name: str
    params: tuple[str, ...]
    deps: tuple[str, ...]
    outs: tuple[str, ...]


def _resolve(text: str, tree: dict[str, Any], where: str) -> str:
    def value(match: re.Match[str]) -> str:
        node: Any = tree
        for part in match.group(1).split("."):
            if not isinstance(node, dict) or part not in node:
                raise StageSpecError(f"{where}: ${{{match.group(1)}}} names no param")
            node = node[part]
        return str(node)

    return _TEMPLATE.sub(value, text)


def _paths(entries: Any, tree: dict[str, Any], where: str) -> list[str]:
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise StageSpecError(f"{where}: expected a list, got {type(entries).__name__}")
    paths = []
    for entry in entries:
        if isinstance(entry, dict):  # `- path: {cache: false, ...}`
            if len(entry) != 1:
                raise StageSpecError(f"{where}: an entry with options must have exactly one path, got {entry}")
            entry = next(iter(entry))
        if not isinstance(entry, str):
            raise StageSpecError(f"{where}: {entry!r} is not a path")
        paths.append(_resolve(entry, tree, where))
    return paths


def load_stage(name: str, params: Params, dvc_yaml: Path = DVC_YAML) -> StageSpec:
    """The stage `name` of dvc.yaml with `${...}` filled in from `params`."""
    try:
        stages = yaml.safe_load(Path(dvc_yaml).read_text())["stages"]
        stage = stages[name]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        raise StageSpecError(f"{dvc_yaml}: no stage {name!r} ({type(e).__name__}: {e})") from e
    tree = params.to_dict()
    where = f"{dvc_yaml}: stages.{name}"
    keys = stage.get("params") or []
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise StageSpecError(f"{where}.params: expected a list of dotted keys, got {keys!r}")
    return StageSpec(
        name=name,
        params=tuple(keys),
        deps=tuple(_paths(stage.get("deps"), tree, f"{where}.deps")),
        outs=tuple(_paths(stage.get("outs"), tree, f"{where}.outs") + _paths(stage.get("metrics"), tree,
                                                                              f"{where}.metrics")),
    )


RUN_FOLDERS = ("data", "metrics")  # what stages write below the run's root; every other dep is code in PROJECT


def _base(path: str, root: Path) -> Path:
    return (Path(root) if Path(path).parts[:1][0] in RUN_FOLDERS else PROJECT) / path


def hash_path(path: Path) -> str:
    """sha256 over a file's bytes, or over a folder's relative file names and bytes; "missing" when absent."""
    digest = hashlib.sha256()
    if path.is_file():
        files = [(Path(path.name), path)]
    elif path.is_dir():
        files = sorted(
            (p.relative_to(path), p) for p in path.rglob("*")
            if p.is_file() and not _SKIPPED.intersection(p.parts) and p.suffix != ".pyc"
        )
    else:
        return "missing"
    for rel, file in files:
        digest.update(rel.as_posix().encode() + b"\0")
        with file.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def missing_outputs(spec: StageSpec, root: Path) -> list[str]:
    return [out for out in spec.outs if not (Path(root) / out).exists()]


def stage_key(name: str, params: Params, root: Path, dvc_yaml: Path = DVC_YAML) -> str:
    """The cache key of stage `name` on `params` in `root`: its params sections and the content of its deps (read
    below `root`), not where `root` is."""
    spec = load_stage(name, params, dvc_yaml)
    parts = [KEY_VERSION, name, params.section_hash(*spec.params)]
    parts += [f"{dep}={hash_path(_base(dep, root))}" for dep in spec.deps]
    return f"{name}-" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]
