"""What the `embed` and `search` commands do, given a registered model's URI: load it from the registry (through
`registry.tracking_uri`), embed one raw input, and search an index of a split."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from multigeometry.config import Params, ValidateConfig
from multigeometry.data.readers import read_code

log = logging.getLogger(__name__)


def load_registered(params: Params, uri: str, root: Path = Path(".")) -> Any:
    """The multigeometry model behind `uri` (`models:/<name>@<alias>`, `models:/<name>/<version>`, `runs:/...` or a
    local folder), loaded through the params' tracking URI."""
    import mlflow

    from multigeometry.registry.pyfunc import unwrap
    from multigeometry.registry.register import connect, tracking_uri

    connect(tracking_uri(params, root))
    return unwrap(mlflow.pyfunc.load_model(uri))


def one_record(text: str | None = None, image: str | None = None, audio: str | None = None,
               code: str | None = None, code_max_bytes: int = ValidateConfig().code_max_bytes,
               video: str | None = None) -> dict[str, Any]:
    """A single input from the command line; `code` is a FILE whose source is embedded (UTF-8, at most
    `code_max_bytes`, read as the shard stage reads code); `image`, `audio` and `video` are files."""
    given = {k: v for k, v in {"text": text, "image": image, "audio": audio, "code": code, "video": video}.items()
             if v is not None}
    if len(given) != 1:
        raise ValueError("give exactly one input (--text, --image, --audio, --code or --video); got "
                         f"{sorted(given) or 'none'}")
    (modality, value), = given.items()
    if modality in ("image", "audio", "code", "video"):
        path = Path(value).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--{modality} {value}: no such file")
        value = read_code(path, code_max_bytes) if modality == "code" else str(path.resolve())
    return {modality: value}


def embed_one(model: Any, record: dict[str, Any]) -> dict[str, Any]:
    """The output row of the pyfunc model for one record."""
    import pandas as pd

    frame = model.predict(None, pd.DataFrame([record]))
    return frame.iloc[0].to_dict()


def format_summary(row: dict[str, Any]) -> str:
    """A few readable lines: modality, geometry, uncertainty and the parameters' shapes and leading values."""
    lines = [f"modality:    {row['modality']}", f"geometry:    {row['geometry']}"]
    if row["geometry"] == "cone":
        direction = list(row["direction"])
        head = ", ".join(f"{x:.4f}" for x in direction[:6])
        lines += [f"dimension:   {len(direction)}", f"aperture:    {row['aperture']:.6f} rad",
                  f"direction:   [{head}{', ...' if len(direction) > 6 else ''}]"]
    else:
        weights = list(row["weights"])
        means = [list(m) for m in row["means"]]
        lines += [f"components:  {len(weights)} x {len(means[0])} dims",
                  f"weights:     [{', '.join(f'{w:.4f}' for w in weights)}]",
                  f"total var.:  {row['total_variance']:.6f}",
                  f"weight H:    {row['weight_entropy']:.6f}"]
        for k, mean in enumerate(means):
            head = ", ".join(f"{x:.4f}" for x in mean[:6])
            lines.append(f"mean[{k}]:     [{head}{', ...' if len(mean) > 6 else ''}]")
    u = row["uncertainty"]
    lines.append(f"uncertainty: {'n/a (point embedding)' if isinstance(u, float) and math.isnan(u) else f'{u:.6f}'}")
    return "\n".join(lines)


def open_index(params: Params, model: Any, index_dir: Path, split: str, root: Path = Path(".")) -> tuple[Any, bool]:
    """The search index of `split` for `model` in `index_dir`, built once: (index, built now)."""
    from multigeometry.paths import shards_dir
    from multigeometry.search import load_or_build

    # the data to index: this project's shards (params.data), whatever data the model was trained on
    return load_or_build(model.trained, model.package["model_sha256"], shards_dir(params, root), split, index_dir,
                         params.eval.batch_size)


def query_index(params: Params, model: Any, index: Any, record: dict[str, Any], k: int,
                targets: list[str] | None = None) -> list[dict[str, Any]]:
    """Embed one query with the loaded model (its feature models stay loaded) and search the loaded index."""
    from multigeometry.search import search

    embedded = model.embedder.embed([record])
    (modality,) = embedded.dists
    return search(model.trained, index, embedded.dists[modality], k, targets, params.eval.block_size, modality,
                  params.registry)


def run_search(params: Params, model: Any, index_dir: Path, record: dict[str, Any], k: int, split: str,
               targets: list[str] | None = None, root: Path = Path(".")) -> tuple[list[dict[str, Any]], bool]:
    """Embed the query, load (or build once) the index of `split`, and return its top k items: (rows, built now)."""
    index, built = open_index(params, model, index_dir, split, root)
    return query_index(params, model, index, record, k, targets), built


def format_results(rows: list[dict[str, Any]]) -> str:
    def num(value: float, spec: str) -> str:
        return "n/a" if math.isnan(value) else format(value, spec)

    lines = []
    if rows:
        lines.append(f"query uncertainty {num(rows[0]['query_uncertainty'], '.4f')} (more than "
                     f"{num(rows[0]['query_uncertainty_pct'], '.0f')} % of the index's items of its modality)")
    for modality in dict.fromkeys(r["modality"] for r in rows):
        if any(r["no_match"] for r in rows if r["modality"] == modality):
            lines.append(f"{modality}: no match (the best {modality} item is more likely not a match)")
    lines.append(f"{'modality':<9} {'rank':>4} {'score':>10} {'match_p':>7} {'uncert.':>9}  sample_id  text")
    for r in rows:
        lines.append(f"{r['modality']:<9} {r['rank']:>4} {r['score']:>10.4f} {num(r['match_prob'], '.3f'):>7} "
                     f"{num(r['uncertainty'], '.4f'):>9}  {r['sample_id']}  {r['text']}")
    return "\n".join(lines)
