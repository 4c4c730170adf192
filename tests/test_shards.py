from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from multigeometry.config import params_from_dict
from multigeometry.data.decode import UnsafeMemberError
from multigeometry.data.manifest import MANIFEST
from multigeometry.data.shards import sample_key, write_tar
from multigeometry.paths import shards_dir, validated_dir
from multigeometry.stages.shard import INDEX, shard
from multigeometry.stages.validate import validate
from tests.conftest import still

NO_FEATURES = {m: {"model": ""} for m in ("image", "text", "audio", "code")}


def shard_params(**shard_cfg):
    return params_from_dict(still(
        {
            "data": {"world": {"n_items": 12, "workers": 1, "image_size": 64}},
            "features": NO_FEATURES,
            "shard": {"max_samples": 2, "workers": 2, **shard_cfg},
        }
    ))


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def validated_world(prepared_world):
    params, root = prepared_world
    validate(params, root)
    return root


@pytest.fixture(scope="module")
def sharded(validated_world):
    params = shard_params()
    out = shard(params, validated_world)
    return params, validated_world, out


def members_of(tar_path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(tar_path) as tar:
        return tar.getmembers()


def test_index_counts_every_validated_sample_once(sharded):
    params, root, out = sharded
    index = json.loads((out / INDEX).read_text())
    validated = pd.read_parquet(validated_dir(params, root) / MANIFEST)
    for split, entry in index["splits"].items():
        expected = int((validated["split"] == split).sum())
        assert entry["samples"] == expected == sum(s["samples"] for s in entry["shards"])
        assert all(s["samples"] <= 2 for s in entry["shards"])
        for s in entry["shards"]:
            data = (out / split / s["name"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == s["sha256"] and len(data) == s["bytes"]
    keys = set()
    for tar_path in out.rglob("*.tar"):
        for m in members_of(tar_path):
            keys.add(m.name.split(".", 1)[0])
            assert m.mtime == 0 and m.uname == "multigeometry" and m.gname == "multigeometry"
    assert len(keys) == len(validated)


def test_members_follow_the_contract(sharded):
    params, root, out = sharded
    tar_path = sorted((out / "train").glob("*.tar"))[0]
    with tarfile.open(tar_path) as tar:
        names = [m.name for m in tar.getmembers()]
        first_key = names[0].split(".", 1)[0]
        mine = sorted(n.split(".", 1)[1] for n in names if n.startswith(first_key + "."))
        assert mine == ["audio.feat.npy", "audio.flac", "code.py", "image.png", "meta.json", "text.txt"]
        feat = np.load(io.BytesIO(tar.extractfile(f"{first_key}.audio.feat.npy").read()), allow_pickle=False)
        meta = json.loads(tar.extractfile(f"{first_key}.meta.json").read())
    assert feat.dtype == np.float32 and feat.shape[0] == params.audio.n_mels
    assert meta["split"] == "train" and len(meta["hierarchy"]) == 3 and meta["concepts"]


def test_normalisation_statistics_come_from_train_only(sharded):
    _params, _root, out = sharded
    index = json.loads((out / INDEX).read_text())
    frames = []
    for tar_path in sorted((out / "train").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".audio.feat.npy"):
                    frames.append(np.load(io.BytesIO(tar.extractfile(m).read())))
    stacked = np.concatenate(frames, axis=1)
    stats = index["normalization"]["audio.feat"]
    np.testing.assert_allclose(stats["mean"], stacked.mean(axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats["std"], stacked.std(axis=1), rtol=1e-4, atol=1e-5)
    assert stats["count"] == stacked.shape[1]
    assert index["features"]["audio.feat"]["n_mels"] == 80


def test_same_inputs_give_byte_identical_shards(sharded, tmp_path):
    params, root, out = sharded
    first = digests(out)
    again = shard(shard_params(workers=1), root)  # another worker count, same bytes
    assert digests(again) == first


def test_killed_run_then_rerun_gives_the_clean_result(sharded, tmp_path):
    params, root, out = sharded
    clean = digests(out)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.to_dict()))
    code = (
        "import sys\nfrom pathlib import Path\nfrom multigeometry.config import load_params\n"
        "from multigeometry.stages.shard import shard\n"
        "shard(load_params(sys.argv[1]), Path(sys.argv[2]))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(params_file), str(root)], start_new_session=True)
    parent = out.parent
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once a shard exists in the staging folder
        if any(parent.glob(f".{out.name}.*.tmp/*/shard-*.tar")):
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert digests(out) == clean  # the complete output was never touched
    shard(params, root)
    assert digests(out) == clean
    assert not list(parent.glob(".*.tmp")), "stale staging folders were left behind"


def test_sample_keys_have_no_dots_and_stay_unique():
    assert sample_key("w000001") == "w000001"
    a, b = sample_key("json.decoder.JSONDecoder"), sample_key("json_decoder.JSONDecoder")
    assert "." not in a and "." not in b and a != b


def test_pickle_members_are_refused(tmp_path, sharded):
    params, _root, out = sharded
    from multigeometry.data.datasets import IterableStylePairDataset

    bad_root = tmp_path / "bad"
    (bad_root / "train").mkdir(parents=True)
    tar = bad_root / "train" / "shard-000000.tar"
    write_tar(tar, [{"__key__": "x", "meta.json": b'{"sample_id": "x", "group_id": "x"}',
                     "evil.pyd": b"cos\nsystem\n"}])
    data = tar.read_bytes()
    (bad_root / INDEX).write_text(json.dumps({"splits": {"train": {"samples": 1, "shards": [
        {"name": "shard-000000.tar", "samples": 1, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}]}}}))
    dataset = IterableStylePairDataset(bad_root, "train", params)
    with pytest.raises(UnsafeMemberError, match=r"shard-000000.tar: sample 'x': member 'evil.pyd' needs pickle"):
        next(iter(dataset))


def test_missing_validated_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no validated manifest; run `multigeometry validate` first"):
        shard(shard_params(), tmp_path)


def test_shards_dir_layout(sharded):
    params, root, out = sharded
    assert out == shards_dir(params, root)
    assert {p.name for p in out.iterdir()} >= {"train", INDEX}


def test_pretrained_features_are_stored_and_reproducible(validated_world):
    features = {
        "image": {"model": "efficientnet-lite0", "batch_size": 4},
        "text": {"model": "all-minilm-l6-v2"},
        "audio": {"model": "whisper-tiny.en"},
        "code": {"model": ""},
    }

    def run(workers):
        params = params_from_dict(still(
            {
                "data": {"world": {"n_items": 12, "workers": 1, "image_size": 64}},
                "features": features,
                "shard": {"max_samples": 6, "workers": workers},
            }
        ))
        return params, shard(params, validated_world)

    params, out = run(2)
    first = digests(out)
    index = json.loads((out / INDEX).read_text())
    assert index["features"]["image.emb"]["dim"] == 1280
    assert index["features"]["text.emb"]["dim"] == index["features"]["audio.emb"]["dim"] == 384
    # the hierarchy's descriptions are embedded by the text model too, one (levels, 384) array per sample
    assert set(index["normalization"]) == {
        "audio.feat", "image.emb", "text.emb", "audio.emb", "hierarchy.emb", "parts.emb"}
    with tarfile.open(sorted((out / "train").glob("*.tar"))[0]) as tar:
        names = {m.name.split(".", 1)[1] for m in tar.getmembers()}
    assert {"image.emb.npy", "text.emb.npy", "audio.emb.npy", "hierarchy.emb.npy"} <= names
    assert "code.emb.npy" not in names
    _params, again = run(1)
    assert digests(again) == first
