"""Every output DVC hashes is a function of the params and the inputs: two clean runs of prepare, validate and shard,
in two folders, write the same bytes (so the same `dvc.lock` entries), GX's data docs (stamped with the run's time)
included in neither's outputs; a fresh clone's `dvc repro` leaves the committed dvc.lock as it is."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from multigeometry.config import Params
from multigeometry.paths import DATA_DOCS, PREPARE_STAMP, STAGE_OUTPUTS, fill, raw_dir, validated_dir
from multigeometry.stages.prepare import prepare
from multigeometry.stages.shard import shard
from multigeometry.stages.validate import validate
from tests.conftest import REPO, tiny_params
from tests.test_dvc_pipeline import STILL_KEYS, _git_commit, _ran, _run, _set

STAGES = {"prepare": prepare, "validate": validate, "shard": shard}
NO_FEATURES = {m: {"model": ""} for m in ("image", "text", "audio", "code")}


def _digests(path: Path) -> dict[str, str]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {p.relative_to(path).as_posix() if path.is_dir() else p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files}


def _clean_run(params: Params, root: Path) -> dict[str, dict[str, str]]:
    """Run the stages in `root`; the digests of every file of every output they declare in dvc.yaml."""
    for run in STAGES.values():
        run(params, root)
    outputs = {out: _digests(fill(out, params, root)) for stage in STAGES for out in STAGE_OUTPUTS[stage]}
    assert all(outputs.values()), [out for out, files in outputs.items() if not files]
    return outputs


def test_two_clean_runs_write_the_same_outputs(tmp_path):
    params = tiny_params(features=NO_FEATURES, shard={"max_samples": 4, "workers": 1}, validate={"data_docs": True})
    first = _clean_run(params, tmp_path / "a")
    second = _clean_run(params, tmp_path / "b")
    assert first == second, [out for out in first if first[out] != second[out]]
    stamp = json.loads((raw_dir(params, tmp_path / "a") / PREPARE_STAMP).read_text())
    assert "seconds" not in stamp  # the time a run took is in its log, not in an output later stages hash
    # the data docs are written, beside the outputs but not among them
    assert (validated_dir(params, tmp_path / "a") / DATA_DOCS / "index.html").is_file()
    assert not any(DATA_DOCS in out for stage in STAGE_OUTPUTS for out in STAGE_OUTPUTS[stage])


@pytest.mark.slow
def test_a_fresh_clone_reproduces_the_committed_lock(tmp_path):
    """`dvc repro shard` in a repository, committed; a clone (no data, no DVC cache) runs the stages again and leaves
    dvc.lock as committed, and its next repro runs nothing but the always-run fingerprint."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", "pyproject.toml"):
        shutil.copy2(REPO / name, repo / name)
    shutil.copytree(REPO / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (repo / ".dvc").mkdir()
    for name in ("config", ".gitignore"):
        shutil.copy2(REPO / ".dvc" / name, repo / ".dvc" / name)
    for key, value in {"data.world.n_items": 10, "data.world.image_size": 48, "data.world.workers": 1,
                       "validate.image_min_side": 16, "validate.data_docs": True, "shard.workers": 1,
                       **{f"features.{m}.model": "" for m in NO_FEATURES}, **STILL_KEYS}.items():
        _set(repo, key, value)
    _run(["git", "init", "-q"], repo)
    _run(["dvc", "repro", "shard"], repo)
    _git_commit(repo, "repro")
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert not (clone / "data").exists()
    assert _ran(_run(["dvc", "repro", "shard"], clone)) == ["prepare", "validate", "shard"]
    lock = "dvc.lock"
    assert (clone / lock).read_text() == (repo / lock).read_text(), _run(["git", "diff", lock], clone)
    assert _ran(_run(["dvc", "repro", "shard"], clone)) == []
