"""Stage `register`: the trained model, as an MLflow pyfunc that embeds raw inputs, becomes a new version of
`registry.model_name` with the alias `registry.alias` when the gate passes (see `multigeometry.registry.register`).
The outcome, registered or refused and why, is `data/registry/<run>/registration.json`."""

from __future__ import annotations

from pathlib import Path

from multigeometry.config import Params


def register(params: Params, root: Path = Path(".")) -> Path:
    from multigeometry.io import write_json_atomic
    from multigeometry.paths import METRICS_FILE, MODEL_FILE, REGISTRATION, eval_dir, models_dir, registry_dir
    from multigeometry.registry.register import register_model

    outcome = register_model(
        params, root, models_dir(params, root) / MODEL_FILE, eval_dir(params, root) / METRICS_FILE
    )
    out = registry_dir(params, root) / REGISTRATION
    write_json_atomic(out, outcome)
    return out
