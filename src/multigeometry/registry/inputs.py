"""Raw inputs -> the model's distributions, through the same code the shard stage and the loaders use.

A record is a dict with any of `text` (str), `image`, `audio` and `video` (bytes, or a path), `code` (source text). Each
record becomes the row the shard stage would have read (`data.shards.encode_rows`: image re-encoding, audio decoding
and log-mels, pretrained features), is decoded as a shard member (`data.decode`), normalised with the training
shards' statistics, and collated (`data.collate.Collator`), so that an input embeds exactly as the same sample in
the shards does.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from multigeometry.config import MODALITIES
from multigeometry.geometry.distribution import Distribution
from multigeometry.inference import TrainedModel

log = logging.getLogger(__name__)

MEDIA = ("image", "audio", "video")  # bytes or a path


class InputError(ValueError):
    """A record the model cannot embed: names the row and the column."""


def is_missing(value: Any) -> bool:
    """None, NaN and pandas' NA (what a DataFrame holds where a row lacks a column)."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    try:
        import pandas as pd

        return value is pd.NA or value is pd.NaT
    except ImportError:  # pragma: no cover - pandas is a dependency
        return False


@dataclass
class Embedded:
    """The distributions of the records that carry each modality: `rows[m]` their record indices, `dists[m]` theirs."""

    rows: dict[str, list[int]]
    dists: dict[str, Distribution]


class RawEmbedder:
    """Embeds raw records with a trained model; the feature models load once, on first use."""

    def __init__(self, trained: TrainedModel) -> None:
        from multigeometry.data.collate import Collator
        from multigeometry.data.frame_sampling import VideoSampler
        from multigeometry.data.reads import needs_tokens, unread_fields
        from multigeometry.data.shards import FeatureModels
        from multigeometry.data.transforms import image_transform

        self.trained = trained
        params = trained.params
        self.features = FeatureModels(params)
        self.transform = image_transform(params.loader.augment, train=False)
        self.video = VideoSampler(params.video, train=False)
        self.skip = unread_fields(params)
        self.collator = Collator(params.pairs, params.loader, trained.tokenizer, tokenize=needs_tokens(params))
        self.normalization = trained.index.get("normalization", {})

    @property
    def modalities(self) -> list[str]:
        return self.trained.modalities

    def check(self, records: Sequence[dict[str, Any]]) -> None:
        """Clear errors for records that name a modality the model lacks, carry none, or hold the wrong type."""
        for i, record in enumerate(records):
            present = [m for m in MODALITIES if not is_missing(record.get(m))]
            unknown = sorted(set(record) - set(MODALITIES))
            if unknown:
                raise InputError(f"row {i}: unknown column(s) {unknown}; allowed: {', '.join(MODALITIES)}")
            if not present:
                raise InputError(f"row {i}: no input; give one of {', '.join(self.modalities)}")
            for m in present:
                if m not in self.modalities:
                    raise InputError(
                        f"row {i}, column {m!r}: this model embeds only {', '.join(self.modalities)}"
                    )
                value = record[m]
                if m in MEDIA:
                    if not isinstance(value, (bytes, bytearray, str, Path)):
                        raise InputError(f"row {i}, column {m!r}: expected bytes or a path, got {type(value).__name__}")
                    if isinstance(value, (str, Path)) and not Path(value).expanduser().is_file():
                        raise InputError(f"row {i}, column {m!r}: no such file {str(value)!r}")
                elif not isinstance(value, str):
                    raise InputError(f"row {i}, column {m!r}: expected a string, got {type(value).__name__}")
                elif not value.isascii():
                    try:
                        value.encode("utf-8")
                    except UnicodeEncodeError as e:
                        raise InputError(f"row {i}, column {m!r}: {value[e.start]!r} at position {e.start} is a lone "
                                         "surrogate, not text") from e

    def _rows(self, records: Sequence[dict[str, Any]], tmp: Path) -> list[dict[str, Any]]:
        """The manifest rows `encode_rows` reads: media as files (bytes are written under `tmp`), code as a file."""
        from multigeometry.data.video import video_extension

        rows = []
        for i, record in enumerate(records):
            row: dict[str, Any] = {"sample_id": f"input-{i}", "group_id": f"input-{i}", "split": "input"}
            for m in MODALITIES:
                value = record.get(m)
                if is_missing(value):
                    continue
                if m == "text":
                    row[m] = value
                elif m == "code":
                    path = tmp / f"{i}.code.py"
                    path.write_text(value, encoding="utf-8")
                    row[m] = str(path)
                elif isinstance(value, (bytes, bytearray)):
                    # a clip (or a soundtrack in one) keeps its container's extension: PyAV reads it, and an MP4 or
                    # WebM is embedded as the shards store it, not re-encoded
                    ext = video_extension(bytes(value)) if m in ("video", "audio") else None
                    path = tmp / (f"{i}.{m}.{ext}" if ext else f"{i}.{m}")
                    path.write_bytes(bytes(value))
                    row[m] = str(path)
                else:
                    row[m] = str(Path(value).expanduser().resolve())
            rows.append(row)
        return rows

    def examples(self, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """The sample dicts the loaders would yield for these records."""
        from multigeometry.data.decode import decode_members, to_example
        from multigeometry.data.shards import encode_rows

        self.check(records)
        out = []
        with tempfile.TemporaryDirectory(prefix="multigeometry-inputs-") as tmp:
            rows = self._rows(records, Path(tmp))
            try:
                encoded = encode_rows(rows, Path(tmp), self.trained.params, self.features)
            except Exception:  # an input that does not decode: find it, one row at a time, and name it
                encoded = []
                for i, row in enumerate(rows):
                    try:
                        encoded.extend(encode_rows([row], Path(tmp), self.trained.params, self.features))
                    except Exception as e:
                        media = [m for m in MODALITIES if m in row]
                        raise InputError(f"row {i} ({', '.join(media)}): cannot read the input: {e}") from e
                raise
            for i, members in enumerate(encoded):
                out.append(to_example(decode_members(members, f"input row {i}", skip=self.skip), self.transform,
                                      self.normalization, self.video))
        return out

    @torch.no_grad()
    def embed(self, records: Sequence[dict[str, Any]], batch_size: int = 64) -> Embedded:
        """The distribution of every record in every modality it carries."""
        from multigeometry.geometry.distribution import concat, select_rows

        device = next(self.trained.model.parameters()).device
        rows: dict[str, list[int]] = {m: [] for m in self.modalities}
        parts: dict[str, list[Distribution]] = {m: [] for m in self.modalities}
        for start in range(0, len(records), batch_size):
            chunk = records[start : start + batch_size]
            batch = self.collator(self.examples(chunk))
            on_device = batch.to(device)
            for m in self.modalities:
                present = batch.present[m]
                if not bool(present.any()):
                    continue
                keep = torch.nonzero(present).squeeze(1)
                parts[m].append(select_rows(self.trained.model.encode(on_device.inputs, m), keep.to(device)))
                rows[m].extend(int(k) + start for k in keep)
        return Embedded(
            rows={m: r for m, r in rows.items() if r},
            dists={m: concat(p) for m, p in parts.items() if p},
        )
