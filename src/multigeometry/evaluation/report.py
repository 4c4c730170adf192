"""What the evaluate stage writes: flat `metrics.json` (every metric) and a PNG grid of the top retrievals per direction
under `data/eval/<run>/`; `headline.json` (the few that `dvc metrics show` lists) and plot data for `dvc plots`
(recall@K, R@1 of the most certain queries, long format with a `direction` column, drawn one line a direction) under
`metrics/runs/<run>/`, which git keeps."""

from __future__ import annotations

import io
import json
import textwrap
from collections.abc import Iterable
from pathlib import Path

from multigeometry.data.images import to_rgb
from multigeometry.evaluation.suite import EvalResult, TopK
from multigeometry.io import atomic_path, write_json_atomic
from multigeometry.paths import CERTAIN_PLOT, DECILE_PLOT, GRID_DIR, HEADLINE_FILE, METRICS_FILE, RECALL_PLOT

__all__ = ["CERTAIN_PLOT", "DECILE_PLOT", "GRID_DIR", "HEADLINE_FILE", "METRICS_FILE", "RECALL_PLOT", "write_report"]
CELL = 128


def write_csv(path: Path, header: list[str], rows: Iterable[Iterable[object]]) -> None:
    with atomic_path(path) as tmp:
        lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
        tmp.write_text("\n".join(lines) + "\n")


def headline(metrics: dict[str, float]) -> dict[str, float]:
    """The summary `dvc metrics show` lists: the means (keys without "/"), each direction's R@1, and the hierarchy and
    composition summaries (`hierarchy/containment_AUC`, `composition/R@1`, ...)."""
    def keep(key: str) -> bool:
        parts = key.split("/")
        return len(parts) == 1 or (len(parts) == 2 and (parts[1] == "R@1" or parts[0] in ("hierarchy", "composition")))

    return {k: v for k, v in sorted(metrics.items()) if keep(k)}


def write_report(result: EvalResult, out: Path, reports: Path, shards_root: Path) -> dict[str, float]:
    """Every metric and the top-k grids under `out` (data/eval/<run>), the headline and plot data under `reports`
    (metrics/runs/<run>); returns the metrics."""
    out, reports = Path(out), Path(reports)
    write_json_atomic(out / METRICS_FILE, dict(sorted(result.metrics.items())))
    write_json_atomic(reports / HEADLINE_FILE, headline(result.metrics))
    write_csv(
        reports / RECALL_PLOT,
        ["direction", "k", "recall"],
        ((d, k, f"{r:.6g}") for d, curve in result.recall_curves.items() for k, r in enumerate(curve, start=1)),
    )
    write_csv(
        reports / CERTAIN_PLOT,
        ["direction", "most_certain_percent", "R_at_1"],
        ((d, q, f"{r:.6g}") for d, curve in result.certain_curves.items() for q, r in sorted(curve.items())),
    )
    write_csv(
        reports / DECILE_PLOT,
        ["direction", "uncertainty_decile", "R_at_1"],
        ((d, i, f"{r:.6g}") for d, curve in result.decile_curves.items() for i, r in enumerate(curve, start=1)),
    )
    if result.top_k and result.embeddings is not None:
        emb = result.embeddings
        images = _split_images(shards_root, emb.split, _needed_rows(result.top_k.values()), emb.sample_ids)
        for name, top in result.top_k.items():
            grid = render_grid(top, emb.sample_ids, emb.texts, images)
            with atomic_path(out / GRID_DIR / f"{name}.png") as tmp:
                grid.save(tmp, format="PNG")
    return result.metrics


def _needed_rows(tops: Iterable[TopK]) -> set[int]:
    rows: set[int] = set()
    for top in tops:
        for q, items in zip(top.query_rows, top.item_rows, strict=True):
            if top.query_modality == "image":
                rows.add(q)
            if top.item_modality == "image":
                rows.update(items)
    return rows


def _split_images(shards_root: Path, split: str, rows: set[int], sample_ids: list[str]) -> dict[int, bytes]:
    """The image bytes of the wanted rows, read from the split's shards (those the index lists, checked as every
    reader checks them)."""
    from multigeometry.data.shard_index import read_shard, split_shards
    from multigeometry.data.shards import sample_key

    wanted = {sample_key(sample_ids[r]): r for r in rows}
    found: dict[int, bytes] = {}
    for path, entry in split_shards(shards_root, split):
        if len(found) == len(wanted):
            break
        for sample in read_shard(path, entry):
            image = sample.get("image.png", sample.get("image.jpg"))
            if sample["__key__"] in wanted and image is not None:
                found[wanted[sample["__key__"]]] = image
    return found


def render_grid(top: TopK, sample_ids: list[str], texts: dict[str, list[str]], images: dict[int, bytes]):  # noqa: ANN201
    """One row a query: the query, then its top items, each framed green (same group) or red."""
    from PIL import Image, ImageDraw

    cols = 1 + max((len(r) for r in top.item_rows), default=0)
    grid = Image.new("RGB", (cols * CELL, len(top.query_rows) * CELL), "white")
    for r, (q, items, correct) in enumerate(zip(top.query_rows, top.item_rows, top.correct, strict=True)):
        cells = [(top.query_modality, q, None)] + [
            (top.item_modality, i, ok) for i, ok in zip(items, correct, strict=True)
        ]
        for c, (modality, row, ok) in enumerate(cells):
            cell = _cell(modality, row, sample_ids, texts, images)
            grid.paste(cell, (c * CELL, r * CELL))
            if ok is not None:
                ImageDraw.Draw(grid).rectangle(
                    (c * CELL, r * CELL, (c + 1) * CELL - 1, (r + 1) * CELL - 1),
                    outline=(0, 160, 0) if ok else (200, 0, 0),
                    width=4,
                )
    return grid


def _cell(modality: str, row: int, sample_ids: list[str], texts: dict[str, list[str]], images: dict[int, bytes]):  # noqa: ANN202
    from PIL import Image, ImageDraw

    if modality == "image" and row in images:
        image = to_rgb(Image.open(io.BytesIO(images[row])))
        return image.resize((CELL, CELL))
    cell = Image.new("RGB", (CELL, CELL), (245, 245, 245))
    text = texts.get(modality, [""] * (row + 1))[row] if modality in texts else ""
    label = f"[{modality}] {sample_ids[row]}\n" + "\n".join(textwrap.wrap(text, 20)[:8])
    ImageDraw.Draw(cell).multiline_text((4, 4), label, fill=(0, 0, 0))
    return cell


def read_metrics(out: Path) -> dict[str, float]:
    return json.loads((Path(out) / METRICS_FILE).read_text())
