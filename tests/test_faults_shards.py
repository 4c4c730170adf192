"""Fault suite, shards: a shard that does not match index.json (cut at a member boundary, a byte changed, a sample
count that disagrees, a missing file, a broken index) is never read silently. Every reader names the shard, what the
index expected and what it found: both dataset classes, training, evaluation, the registry's fingerprint and champion
re-evaluation (the same evaluation code), and search."""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from multigeometry.data.shard_index import INDEX, ShardIntegrityError, read_index, read_shard, verify_split
from multigeometry.paths import eval_dir, models_dir, shards_dir

pytestmark = pytest.mark.slow


@pytest.fixture()
def project(tiny_trained, tmp_path):
    """A copy of the tiny trained project's shards and model, safe to damage: (params, root)."""
    params, source = tiny_trained
    shutil.copytree(shards_dir(params, source), shards_dir(params, tmp_path))
    (models_dir(params, tmp_path)).mkdir(parents=True)
    shutil.copy2(models_dir(params, source) / "model.pt", models_dir(params, tmp_path) / "model.pt")
    return params, tmp_path


def _first_shard(params, root, split="test") -> Path:
    return shards_dir(params, root) / split / read_index(shards_dir(params, root))["splits"][split]["shards"][0]["name"]


def cut_at_member_boundary(shard: Path) -> int:
    """Cut the shard where its second half of samples begins (a tar header boundary); returns the new size."""
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    keys = list(dict.fromkeys(m.name.split(".", 1)[0] for m in members))
    cut_key = keys[len(keys) // 2]
    offset = next(m.offset for m in members if m.name.startswith(cut_key + "."))
    data = shard.read_bytes()[:offset]
    shard.chmod(0o644)
    shard.write_bytes(data)
    return offset


def flip_a_text_byte(shard: Path) -> None:
    """Same size, one byte of a caption changed: still a readable tar with the same samples."""
    with tarfile.open(shard) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".text.txt"))
    data = bytearray(shard.read_bytes())
    data[member.offset_data] = ord("Z") if data[member.offset_data] != ord("Z") else ord("Y")
    shard.chmod(0o644)
    shard.write_bytes(bytes(data))


def edit_index(params, root, change) -> None:
    path = shards_dir(params, root) / INDEX
    index = json.loads(path.read_text())
    change(index)
    path.write_text(json.dumps(index))


def test_evaluate_refuses_a_shard_cut_at_a_member_boundary(project):
    from multigeometry.stages.evaluate import evaluate

    params, root = project
    shard = _first_shard(params, root)
    expected = shard.stat().st_size
    found = cut_at_member_boundary(shard)
    with pytest.raises(ShardIntegrityError) as e:
        evaluate(params, root)
    assert str(shard) in str(e.value) and f"{found} bytes; the index records {expected}" in str(e.value)
    assert not (eval_dir(params, root) / "metrics.json").exists()


def test_evaluate_and_register_check_the_sha256(project):
    from multigeometry.evaluation import evaluate_trained
    from multigeometry.inference import load_trained
    from multigeometry.registry.register import eval_fingerprint

    params, root = project
    before = eval_fingerprint(params, root)
    shard = _first_shard(params, root)
    flip_a_text_byte(shard)
    trained = load_trained(models_dir(params, root) / "model.pt")
    # the evaluate stage's code, which the register stage also runs to re-evaluate a champion on these shards
    with pytest.raises(ShardIntegrityError, match=r"does not match its index entry: sha256 [0-9a-f]{64} \(expected"):
        evaluate_trained(trained, root, "test", params.eval)
    with pytest.raises(ShardIntegrityError, match=str(shard)):
        eval_fingerprint(params, root)
    # the fingerprint is made of the bytes: the same change, recorded in the index, gives another fingerprint
    data = shard.read_bytes()

    def record(index):
        entry = index["splits"]["test"]["shards"][0]
        entry["sha256"] = hashlib.sha256(data).hexdigest()

    edit_index(params, root, record)
    after = eval_fingerprint(params, root)
    assert after["eval_data_hash"] != before["eval_data_hash"]


def test_a_sample_count_that_disagrees_is_found_while_reading(project):
    from multigeometry.data.datasets import IterableStylePairDataset

    params, root = project

    def one_more(index):
        index["splits"]["test"]["samples"] += 1
        index["splits"]["test"]["shards"][0]["samples"] += 1

    edit_index(params, root, one_more)
    shard = _first_shard(params, root)
    with pytest.raises(ShardIntegrityError, match=r"samples \(expected \d+\)") as e:
        list(IterableStylePairDataset(shards_dir(params, root), "test", params))
    assert str(shard) in str(e.value)


def test_training_refuses_cut_or_missing_shards_before_it_starts(project):
    from multigeometry.training.loop import Trainer

    params, root = project
    train_shard = _first_shard(params, root, "train")
    cut_at_member_boundary(train_shard)
    with pytest.raises(ShardIntegrityError, match=f"{train_shard}: .* bytes; the index records"):
        Trainer(params, root)
    train_shard.unlink()
    with pytest.raises(ShardIntegrityError, match=f"{train_shard}: missing"):
        Trainer(params, root)


def test_the_map_style_dataset_checks_its_rows_against_the_index(tiny_trained, tmp_path):
    from multigeometry.data.datasets import PairDataset

    params, source = tiny_trained
    shards = tmp_path / "shards"
    shutil.copytree(shards_dir(params, source), shards)
    dataset = PairDataset(params, "val", root=source, shards_root=shards)
    assert dataset.normalization == read_index(shards)["normalization"]

    def drop_one(index):
        index["splits"]["val"]["samples"] -= 1
        index["splits"]["val"]["shards"][-1]["samples"] -= 1

    path = shards / INDEX
    index = json.loads(path.read_text())
    drop_one(index)
    path.write_text(json.dumps(index))
    with pytest.raises(ShardIntegrityError, match=r"validated rows of split 'val', but .*index.json records"):
        PairDataset(params, "val", root=source, shards_root=shards)


def test_search_refuses_a_cut_shard_when_building_and_when_reusing(project, tmp_path):
    from multigeometry.inference import load_trained
    from multigeometry.search import load_or_build

    params, root = project
    trained = load_trained(models_dir(params, root) / "model.pt")
    folder = tmp_path / "index"
    _index, built = load_or_build(trained, "a" * 64, shards_dir(params, root), "test", folder, batch_size=8)
    assert built
    shard = _first_shard(params, root)
    cut_at_member_boundary(shard)
    with pytest.raises(ShardIntegrityError, match=str(shard)):
        load_or_build(trained, "a" * 64, shards_dir(params, root), "test", folder, batch_size=8)
    with pytest.raises(ShardIntegrityError, match=str(shard)):
        load_or_build(trained, "a" * 64, shards_dir(params, root), "test", tmp_path / "fresh", batch_size=8)
    assert not (tmp_path / "fresh").exists()


@pytest.mark.parametrize(("content", "message"), [
    (b"{not json", "not a valid JSON shard index"),
    (b"[1, 2]", "expected a JSON object with 'splits'"),
    (b'{"splits": {"test": {"samples": 1, "shards": [{"name": "../../x.tar", "samples": 1, "bytes": 1, '
     b'"sha256": "0"}]}}}', r"splits.test.shards\[0\]: expected"),
    (b'{"splits": {"test": {"samples": 3, "shards": []}}}', "samples is 3, its shards add up to 0"),
])
def test_a_broken_index_names_itself(tmp_path, content, message):
    (tmp_path / INDEX).write_bytes(content)
    with pytest.raises(ShardIntegrityError, match=message) as e:
        read_index(tmp_path)
    assert str(tmp_path / INDEX) in str(e.value)


def test_a_good_shard_reads_whole_and_reports_what_it_is(tiny_trained):
    params, root = tiny_trained
    facts = verify_split(shards_dir(params, root), "test", "sha256")
    index = read_index(shards_dir(params, root))
    assert [f.entry() for f in facts] == index["splits"]["test"]["shards"]
    path = _first_shard(params, root)
    samples = list(read_shard(path, index["splits"]["test"]["shards"][0], "sha256"))
    assert len(samples) == index["splits"]["test"]["shards"][0]["samples"]
