"""Stage `fingerprint`: what the files behind `data.source` are now (`data/sources/<dataset>.json`), read on every
run. DVC runs it always (`always_changed`) and the prepare stage depends on its output, so editing a source folder's
pairs file re-runs prepare while an unchanged source re-runs nothing after it; the Prefect flow does the same."""

from __future__ import annotations

import logging
from pathlib import Path

from multigeometry.config import Params

log = logging.getLogger(__name__)


def fingerprint(params: Params, root: Path = Path(".")) -> Path:
    from multigeometry.data.sources.fingerprint import source_fingerprint
    from multigeometry.io import write_json_atomic
    from multigeometry.paths import fingerprint_file

    out = fingerprint_file(params, root)
    found = {"source": params.data.source, **source_fingerprint(params)}
    write_json_atomic(out, found)
    log.info("fingerprint: %s -> %s", params.data.source, out)
    return out
