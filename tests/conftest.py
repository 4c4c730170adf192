from __future__ import annotations

import os
from pathlib import Path

import pytest

from multigeometry.config import Params, params_from_dict

REPO = Path(__file__).resolve().parents[1]

# No test reaches the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("DO_NOT_TRACK", "1")


# small MLP trunks of a chosen width (the tests' tiny models), instead of the defaults' linear heads with the text
# side locked to its 384-dim features
MLP_RECIPE = {"trunk": "mlp", "text": {"lock": False}, "code": {"init": "random"}}


# the world without clips (presets/overlays/world-still.yaml): the default world's video (clips, frame features, two
# more pairs) is for the tests about video; the others leave it out and keep the suite's time
STILL_WORLD = {
    "data": {"world": {"video": False}},
    "validate": {"modalities": ["image", "text", "audio", "code"]},
    "features": {"video": {"model": ""}},
    "pairs": {"pairs": [{"a": "image", "b": "text"}, {"a": "audio", "b": "text"}, {"a": "code", "b": "text"}]},
}


def merged(base: dict, over: dict) -> dict:
    """`base` with `over` on top, nested dicts merged key by key (lists and values replaced)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def still(raw: dict) -> dict:
    """Raw params of the still world: `raw` over STILL_WORLD."""
    return merged(STILL_WORLD, raw)


def tiny_params(**sections: dict) -> Params:
    """Params for a still world small enough for a unit test; sections are merged over it key by key."""
    return params_from_dict(still(merged({"data": {"world": {"n_items": 12, "workers": 1, "image_size": 64}}},
                                         sections)))


@pytest.fixture(scope="session")
def prepared_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Params, Path]:
    """A small world prepared once for the session: (params, project root)."""
    from multigeometry.stages.prepare import prepare

    root = tmp_path_factory.mktemp("world")
    params = tiny_params()
    prepare(params, root)
    return params, root


def tiny_trained_raw(root: Path, geometry: str = "mixture", run_name: str = "tiny", **train: object) -> dict:
    """Raw params of the `tiny_trained` world: image+text and audio+text pairs over real pretrained features
    (`input: emb`), a small model trained for a few steps on CPU. Vary `geometry` and `run_name` to train other
    models on the same shards."""
    features = {"image": {"model": "efficientnet-lite0"}, "text": {"model": "all-minilm-l6-v2"},
                "audio": {"model": "whisper-tiny.en"}}
    encoder = {"input": "emb", "hidden_dim": 64, "layers": 1}
    return still({
        "seed": 0,
        "data": {"world": {"n_items": 48, "workers": 1, "image_size": 64},
                 "splits": {"train": 0.5, "val": 0.25, "test": 0.25}},
        "validate": {"modalities": ["image", "text", "audio"], "data_docs": False},
        "features": features,
        "shard": {"max_samples": 16, "workers": 1},
        "pairs": {"pairs": [{"a": "image", "b": "text"}, {"a": "audio", "b": "text"}]},
        "loader": {"batch_size": 16, "workers": 0, "shuffle_buffer": 16, "tokenizer": ""},
        "model": {"geometry": geometry, "embed_dim": 32, "n_components": 1 if geometry == "point" else 2,
                  **MLP_RECIPE, "image": encoder, "text": {**encoder, "lock": False}, "audio": encoder},
        "loss": {"similarity": "point" if geometry == "point" else "csd"},
        "train": {"run_name": run_name, "device": "cpu", "epochs": 8, "lr": 3e-3, "warmup_steps": 2,
                  "val_every": 8, "checkpoint_every": 8, "log_every": 4, "select": "last", "patience": 0,
                  "tracking_uri": f"sqlite:///{Path(root).resolve() / 'mlflow.db'}", **train},
        "eval": {"device": "cpu", "batch_size": 8, "block_size": 5, "grid_queries": 2, "curve_max_k": 10},
    })


def shards_without_val(params: Params, root: Path, copy: Path) -> None:
    """The shards of `params` under `root` copied to `copy` with their val split removed (index and folder)."""
    import json
    import shutil

    from multigeometry.paths import shards_dir

    shutil.copytree(shards_dir(params, root), shards_dir(params, copy))
    index_path = shards_dir(params, copy) / "index.json"
    index = json.loads(index_path.read_text())
    del index["splits"]["val"]
    index_path.write_text(json.dumps(index))
    shutil.rmtree(shards_dir(params, copy) / "val")


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Params, Path]:
    """A tiny world prepared, validated, sharded and trained for a few steps, once for the session:
    (params, project root); the model is at `paths.models_dir(params, root) / "model.pt"`."""
    from multigeometry.stages.prepare import prepare
    from multigeometry.stages.shard import shard
    from multigeometry.stages.train import train
    from multigeometry.stages.validate import validate

    root = tmp_path_factory.mktemp("tiny_trained")
    params = params_from_dict(tiny_trained_raw(root))
    for stage in (prepare, validate, shard, train):
        stage(params, root)
    return params, root


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory):
    """Prefect's test harness (a temporary API server and database) for the session, with task results cached in a
    temporary folder."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(), temporary_settings({PREFECT_LOCAL_STORAGE_PATH: tmp_path_factory.mktemp("results")}):
        yield
