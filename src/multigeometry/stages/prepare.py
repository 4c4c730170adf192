"""Stage `prepare`: raw pairs from the configured source into `data/raw/<dataset>/` (manifest + media)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

from multigeometry.config import Params
from multigeometry.data.manifest import MANIFEST, to_frame
from multigeometry.data.sources import load_rows
from multigeometry.data.sources.fingerprint import source_fingerprint
from multigeometry.io import atomic_dir, write_json_atomic
from multigeometry.paths import PREPARE_STAMP, raw_dir

log = logging.getLogger(__name__)

STAMP = PREPARE_STAMP
PARAM_KEYS = ("seed", "data")


def is_complete(folder: Path, params_hash: str) -> bool:
    """A raw folder counts as prepared only with its stamp, written last, for the same params."""
    stamp = folder / STAMP
    if not (stamp.is_file() and (folder / MANIFEST).is_file()):
        return False
    try:
        return json.loads(stamp.read_text()).get("params_hash") == params_hash
    except (json.JSONDecodeError, OSError):
        return False


def inputs_hash(params: Params) -> str:
    """The params of the stage and the content behind `data.source` (a folder's pairs file, ...): a prepared folder
    is up to date only for the same of both."""
    content = json.dumps(source_fingerprint(params), sort_keys=True)
    return f"{params.section_hash(*PARAM_KEYS)}-{hashlib.sha256(content.encode()).hexdigest()[:16]}"


def prepare(params: Params, root: Path = Path(".")) -> Path:
    out = raw_dir(params, root)
    params_hash = inputs_hash(params)
    if is_complete(out, params_hash):
        log.info("prepare: %s is up to date (params and source %s); nothing to do", out, params_hash)
        return out
    started = time.perf_counter()  # the time goes to the log only: the stamp is hashed by DVC, so no wall time
    with atomic_dir(out) as staging:
        rows = load_rows(staging, params)
        if not rows:
            raise ValueError(f"data.source {params.data.source!r} produced no rows")
        frame = to_frame(rows, params.seed, params.data.splits)
        frame.to_parquet(staging / MANIFEST, index=False)
        write_json_atomic(
            staging / STAMP,
            {
                "source": params.data.source,
                "params_hash": params_hash,
                "rows": len(frame),
                "groups": int(frame["group_id"].nunique()),
                "splits": {k: int(v) for k, v in frame["split"].value_counts().sort_index().items()},
            },
        )
    log.info(
        "prepare: %d rows from %s into %s in %.1f s", len(frame), params.data.source, out, time.perf_counter() - started
    )
    return out
