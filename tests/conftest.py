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


def tiny_params(**sections: dict) -> Params:
    """Params for a world small enough for a unit test; sections override the defaults by key."""
    raw: dict = {"data": {"world": {"n_items": 12, "workers": 1, "image_size": 64}}}
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    return params_from_dict(raw)


@pytest.fixture(scope="session")
def prepared_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Params, Path]:
    """A small world prepared once for the session: (params, project root)."""
    from multigeometry.stages.prepare import prepare

    root = tmp_path_factory.mktemp("world")
    params = tiny_params()
    prepare(params, root)
    return params, root
