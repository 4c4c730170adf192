"""Fault suite, serving: a damaged search index (cut tensors, cut sample ids, a deleted file, a JSON list) is rebuilt
atomically with a warning; `embed --code` of a file that is not UTF-8 names the file and the encoding problem. (The
pyfunc model refusing inputs without an accepted column is in test_registry.py, beside the registered model.)"""

from __future__ import annotations

import json
import logging

import pytest

from multigeometry.paths import models_dir, shards_dir
from multigeometry.search import INDEX_JSON, TENSORS, SearchIndexError, load_or_build, read_index_dir

pytestmark = pytest.mark.slow


def _cut_tensors(folder):
    data = (folder / TENSORS).read_bytes()
    (folder / TENSORS).write_bytes(data[: len(data) // 2])


def _cut_sample_ids(folder):
    meta = json.loads((folder / INDEX_JSON).read_text())
    meta["sample_ids"] = meta["sample_ids"][:-2]
    meta["texts"] = {k: v[:-2] for k, v in meta["texts"].items()}
    (folder / INDEX_JSON).write_text(json.dumps(meta))


DAMAGES = {
    "truncated embeddings.pt": _cut_tensors,
    "cut sample_ids": _cut_sample_ids,
    "deleted embeddings.pt": lambda folder: (folder / TENSORS).unlink(),
    "deleted search_index.json": lambda folder: (folder / INDEX_JSON).unlink(),
    "a JSON list": lambda folder: (folder / INDEX_JSON).write_text("[1, 2, 3]"),
    "not JSON": lambda folder: (folder / INDEX_JSON).write_bytes(b"\xff\xfe garbage"),
}


def test_a_damaged_search_index_is_rebuilt_with_a_warning(tiny_trained, tmp_path, caplog):
    from multigeometry.inference import load_trained

    params, root = tiny_trained
    trained = load_trained(models_dir(params, root) / "model.pt")
    folder = tmp_path / "index"
    good, built = load_or_build(trained, "b" * 64, shards_dir(params, root), "test", folder, batch_size=8)
    assert built
    for name, damage in DAMAGES.items():
        damage(folder)
        with pytest.raises((SearchIndexError, FileNotFoundError)):
            read_index_dir(folder)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="multigeometry.search"):
            index, built = load_or_build(trained, "b" * 64, shards_dir(params, root), "test", folder, batch_size=8)
        assert built, name
        assert f"{folder}: damaged search index" in caplog.text and "rebuilding it" in caplog.text, name
        assert index.sample_ids == good.sample_ids and read_index_dir(folder).sample_ids == good.sample_ids, name
        assert not list(tmp_path.glob(".index.*.tmp")), name  # written whole, then renamed
    again, built = load_or_build(trained, "b" * 64, shards_dir(params, root), "test", folder, batch_size=8)
    assert not built  # a sound index is reused


def test_embed_code_that_is_not_utf8_names_the_file(tmp_path, capsys, monkeypatch):
    from multigeometry.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("{}\n")
    latin = tmp_path / "latin.py"
    latin.write_bytes("name = 'Jos\u00e9'\n".encode("latin-1"))
    assert main(["embed", "--model", "models:/none@champion", "--code", str(latin)]) == 1
    err = capsys.readouterr().err.strip()
    assert str(latin) in err and "not UTF-8 text: byte 0xe9 at column 12" in err and "Traceback" not in err
