from __future__ import annotations

import json

import pandas as pd
import pytest

from multigeometry.data.manifest import COLUMNS, MANIFEST, read_manifest
from multigeometry.paths import raw_dir
from multigeometry.stages import prepare as prepare_module
from multigeometry.stages.prepare import STAMP, prepare

from .conftest import tiny_params


def test_manifest_follows_the_contract(prepared_world):
    params, root = prepared_world
    frame = read_manifest(raw_dir(params, root) / MANIFEST)
    assert list(frame.columns) == list(COLUMNS)
    assert frame["sample_id"].is_unique
    assert set(frame["split"]) <= {"train", "val", "test"}
    # every sample of a group in one split
    assert (frame.groupby("group_id")["split"].nunique() == 1).all()
    assert all(len(h) == 3 for h in frame["hierarchy"])
    stamp = json.loads((raw_dir(params, root) / STAMP).read_text())
    assert stamp["rows"] == len(frame) == 12


def test_rerun_with_same_params_does_nothing(prepared_world):
    params, root = prepared_world
    manifest = raw_dir(params, root) / MANIFEST
    before = manifest.stat().st_mtime_ns
    prepare(params, root)
    assert manifest.stat().st_mtime_ns == before


def test_partly_written_folder_is_rebuilt(tmp_path):
    params = tiny_params(data={"world": {"n_items": 3, "workers": 1, "audio": False}})
    out = raw_dir(params, tmp_path)
    out.mkdir(parents=True)
    pd.DataFrame({"sample_id": ["junk"]}).to_parquet(out / MANIFEST)  # no stamp: not complete
    prepare(params, tmp_path)
    assert len(read_manifest(out / MANIFEST)) == 3
    assert (out / STAMP).is_file()


def test_changed_params_rebuild(tmp_path):
    params = tiny_params(data={"world": {"n_items": 2, "workers": 1, "audio": False}})
    prepare(params, tmp_path)
    more = tiny_params(data={"world": {"n_items": 4, "workers": 1, "audio": False}})
    prepare(more, tmp_path)
    assert len(read_manifest(raw_dir(more, tmp_path) / MANIFEST)) == 4


def test_failure_leaves_no_folder_behind(tmp_path, monkeypatch):
    def explode(staging, params):
        (staging / "image").mkdir()
        (staging / "image" / "half.png").write_bytes(b"\x89PNG")
        raise RuntimeError("source broke")

    monkeypatch.setattr(prepare_module, "load_rows", explode)
    params = tiny_params()
    with pytest.raises(RuntimeError, match="source broke"):
        prepare(params, tmp_path)
    parent = raw_dir(params, tmp_path).parent
    assert list(parent.iterdir()) == []
