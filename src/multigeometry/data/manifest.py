"""The raw manifest: one row a sample, the same columns for every source (see DESIGN.md, "Data contracts").

Columns:
- `sample_id` (unique), `group_id` (samples describing the same thing share it), `split` (train/val/test);
- `image`, `audio`, `code`, `video`: paths relative to the dataset folder, or None; `text`: the caption itself, or
  None. `audio` may name a video file: its audio track is the row's audio (read with PyAV);
- `hierarchy`: the row's more general descriptions, most general first (may be empty);
- `concepts`: the concept set of the row's own description; `hierarchy_concepts`: one concept set per hierarchy
  level. "A is more general than B" is `concepts(A) ⊆ concepts(B)`, for any source: sources that know no concepts
  get them derived from the hierarchy by `derive_concepts`.
- `parts` and `compound_level`: short phrases whose composition is the row's hierarchy description at
  `compound_level` ("red", "a circle" -> "a red circle"), for training and measuring the compositional layer; empty
  and −1 where the source knows no composition.
- `ambiguity`: JSON, per modality the severity in [0, 1] of the ambiguity injected into the sample and the levels
  applied (the world's `data.world.ambiguity`), the ground truth of the uncertainty metrics; "" where the source
  records none.
- `temporal_contrasts`: captions of what the row's clip shows when played backwards (the same objects with the
  opposite motion: "... moving right" for "... moving left"), the distractors of the temporal check; empty where the
  order of the frames says nothing the caption names.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from multigeometry.config import MODALITIES, SPLITS, SplitFractions
from multigeometry.paths import MANIFEST  # noqa: F401  (re-exported: the manifest's file name, for its readers)

if TYPE_CHECKING:  # pandas is imported where frames are made: the world's worker processes need only the rows
    import pandas as pd

COLUMNS = (
    "sample_id", "group_id", "split", *MODALITIES, "hierarchy", "concepts", "hierarchy_concepts", "parts",
    "compound_level", "ambiguity", "temporal_contrasts",
)
LIST_COLUMNS = ("hierarchy", "concepts", "hierarchy_concepts", "parts", "temporal_contrasts")


@dataclass
class ManifestRow:
    sample_id: str
    group_id: str
    split: str | None = None
    image: str | None = None
    text: str | None = None
    audio: str | None = None
    code: str | None = None
    video: str | None = None
    hierarchy: list[str] = field(default_factory=list)
    concepts: list[str] = field(default_factory=list)
    hierarchy_concepts: list[list[str]] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    compound_level: int = -1
    ambiguity: str = ""
    temporal_contrasts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.parts and not 0 <= self.compound_level < len(self.hierarchy):
            raise ValueError(
                f"sample {self.sample_id!r}: compound_level {self.compound_level} names no level of its hierarchy "
                f"({len(self.hierarchy)} levels) although it has parts {self.parts}"
            )


def derive_concepts(row: ManifestRow) -> None:
    """Give a row without explicit concepts the concept sets implied by its hierarchy (prefix inclusion)."""
    if row.concepts:
        return
    levels = [f"L{i}:{h}" for i, h in enumerate(row.hierarchy)]
    row.hierarchy_concepts = [levels[: i + 1] for i in range(len(levels))]
    row.concepts = [*levels, f"text:{row.text if row.text is not None else row.sample_id}"]


def split_of(group_id: str, seed: int, fractions: SplitFractions) -> str:
    """A deterministic split for a group: every sample of one group lands in the same split."""
    digest = hashlib.sha256(f"{seed}:{group_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < fractions.train:
        return "train"
    if u < fractions.train + fractions.val:
        return "val"
    return "test"


def carve_val_split(frame: pd.DataFrame, fraction: float) -> tuple[pd.DataFrame, int]:
    """A manifest with no val rows gets one: `fraction` of the train split's groups (chosen by a hash of the group
    id, the same on every run) become val. Returns the manifest and the number of rows moved."""
    if fraction <= 0 or (frame["split"] == "val").any():
        return frame, 0

    def to_val(group_id: str) -> bool:
        digest = hashlib.sha256(f"val_from_train:{group_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < fraction

    moved = (frame["split"] == "train") & frame["group_id"].map(to_val).astype(bool)
    frame = frame.copy()
    frame.loc[moved, "split"] = "val"
    return frame, int(moved.sum())


def to_frame(rows: Iterable[ManifestRow], seed: int, fractions: SplitFractions) -> pd.DataFrame:
    """The manifest of `rows`: splits assigned where the source gave none, concepts derived, columns in order."""
    import pandas as pd

    records = []
    for row in rows:
        derive_concepts(row)
        if row.split is None:
            row.split = split_of(row.group_id, seed, fractions)
        if row.split not in SPLITS:
            raise ValueError(f"sample {row.sample_id!r}: split {row.split!r} is not one of {', '.join(SPLITS)}")
        records.append({c: getattr(row, c) for c in COLUMNS})
    frame = pd.DataFrame.from_records(records, columns=list(COLUMNS))
    for column in ("sample_id", "group_id", "split", *MODALITIES):
        frame[column] = frame[column].astype(object)
    return frame


def read_manifest(path: Path) -> pd.DataFrame:
    import pandas as pd

    frame = pd.read_parquet(path)
    if "ambiguity" not in frame.columns:  # manifests written before sources could record injected ambiguity
        frame["ambiguity"] = ""
    if "video" not in frame.columns:  # manifests written before video
        frame["video"] = None
        frame["temporal_contrasts"] = [[] for _ in range(len(frame))]
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: manifest lacks columns {missing}; expected {list(COLUMNS)}")
    for column in LIST_COLUMNS:
        frame[column] = frame[column].map(_as_list)
    return frame


def _as_list(value: object) -> list:
    if value is None:
        return []
    return [_as_list(v) if hasattr(v, "__len__") and not isinstance(v, str) else v for v in value]


def present_modalities(frame: pd.DataFrame) -> list[str]:
    return [m for m in MODALITIES if frame[m].notna().any()]


def modality_columns(frame: pd.DataFrame, modalities: Sequence[str]) -> pd.DataFrame:
    return frame[[m for m in modalities if m in frame.columns]]


def ambiguity_problem(cell: object) -> str | None:
    """Why a manifest `ambiguity` cell is invalid (None when it is fine): JSON of modality -> {"severity": [0, 1],
    levels...}, or empty."""
    import json

    if cell is None or (isinstance(cell, str) and not cell):
        return None
    if not isinstance(cell, str):
        return f"expected a JSON string, got {type(cell).__name__}"
    try:
        value = json.loads(cell)
    except json.JSONDecodeError as e:
        return f"not JSON ({e})"
    if not isinstance(value, dict):
        return "expected a JSON object of modality -> levels"
    for modality, levels in value.items():
        if modality not in MODALITIES:
            return f"unknown modality {modality!r}"
        severity = levels.get("severity") if isinstance(levels, dict) else None
        if not isinstance(severity, (int, float)) or isinstance(severity, bool) or not 0.0 <= severity <= 1.0:
            return f"{modality}: severity {severity!r} is not a number in [0, 1]"
    return None
