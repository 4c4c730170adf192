"""The temporal check (`eval.temporal`): can the model tell a clip's time order, beyond the frames it holds?

For every row with a clip, a caption and temporal contrasts (captions of the clip played backwards: "moving right"
for "moving left"), the distractors are made from the row itself:
- `text_to_video/temporal_R@1`: the caption against its clip, the clip played backwards and the clip's frames in a
  fixed shuffled order; a hit when its own clip scores highest;
- `video_to_text/temporal_R@1`: the clip against its caption and its contrasts; a hit when its own caption scores
  highest.
`video/temporal_R@1` is their mean. A hit tied with k other candidates counts 1/(k+1), the R@1 of a random choice
among them: the frames are the same in every clip candidate, so a bag-of-frames encoder (meanP) scores them alike and
sits at chance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from multigeometry.data.batch import Batch
from multigeometry.geometry.distribution import Distribution, concat, select_rows
from multigeometry.geometry.similarity import SimilarityFn
from multigeometry.models.temporal import checked_rows, encoded_time_variants


@dataclass
class TemporalSet:
    """Per checked row: its caption and its clip forward, backwards and shuffled; and every contrast caption with its
    row (`contrast_owner`, an index into the rows)."""

    captions: Distribution
    forward: Distribution
    backward: Distribution
    shuffled: Distribution | None
    contrasts: Distribution
    contrast_owner: Tensor


class TemporalCollector:
    def __init__(self) -> None:
        self.parts: dict[str, list[Distribution]] = {k: [] for k in ("captions", "forward", "backward", "shuffled",
                                                                     "contrasts")}
        self.owners: list[Tensor] = []
        self.rows = 0

    def add(self, model: Any, batch: Batch, on_device: Batch) -> None:
        """The batch's checked rows (`models.temporal.checked_rows`)."""
        checked = checked_rows(batch)
        contrasts = model.encode_texts(on_device.temporal_contrasts) if checked is not None else None
        if checked is None or contrasts is None:
            return
        keep, entries, owner = checked
        device = on_device.group_ids.device
        clips = encoded_time_variants(model, on_device.inputs)
        for name, clip in zip(("forward", "backward", "shuffled"), clips, strict=False):
            self.parts[name].append(select_rows(clip, keep.to(device)))
        self.parts["captions"].append(select_rows(model.encode(on_device.inputs, "text"), keep.to(device)))
        self.parts["contrasts"].append(select_rows(contrasts, entries.to(device)))
        self.owners.append(owner + self.rows)
        self.rows += keep.numel()

    def result(self) -> TemporalSet | None:
        if not self.rows:
            return None
        p = self.parts
        return TemporalSet(
            captions=concat(p["captions"]),
            forward=concat(p["forward"]),
            backward=concat(p["backward"]),
            shuffled=concat(p["shuffled"]) if p["shuffled"] else None,
            contrasts=concat(p["contrasts"]),
            contrast_owner=torch.cat(self.owners),
        )


def _hits(own: Tensor, best: Tensor, ties: Tensor) -> Tensor:
    """1/(1 + ties) where the own candidate scores at least the best distractor (within float rounding), else 0."""
    level = torch.isclose(own, best, rtol=1e-6, atol=1e-7)
    return torch.where(level, 1.0 / (1.0 + ties), torch.where(own > best, 1.0, 0.0))


def temporal_metrics(t: TemporalSet, similarity: SimilarityFn) -> dict[str, float]:
    """`text_to_video/temporal_R@1`, `video_to_text/temporal_R@1` and their mean `video/temporal_R@1`."""
    own = similarity(t.captions, t.forward).diagonal()
    clips = [similarity(t.captions, t.backward).diagonal()]
    if t.shuffled is not None:
        clips.append(similarity(t.captions, t.shuffled).diagonal())
    others = torch.stack(clips)
    best = others.amax(0)
    ties = torch.isclose(others, own[None], rtol=1e-6, atol=1e-7).sum(0).to(own.dtype)
    text_to_video = _hits(own, best, ties).mean()
    owner = t.contrast_owner.to(own.device)
    contrast = similarity(t.contrasts, t.forward).gather(1, owner[:, None]).squeeze(1)
    best = torch.full_like(own, -torch.inf).scatter_reduce(0, owner, contrast, reduce="amax")
    tied = torch.isclose(contrast, own[owner], rtol=1e-6, atol=1e-7).to(own.dtype)
    ties = torch.zeros_like(own).scatter_add(0, owner, tied)
    video_to_text = _hits(own, best, ties).mean()
    out = {"text_to_video/temporal_R@1": float(text_to_video), "video_to_text/temporal_R@1": float(video_to_text)}
    out["video/temporal_R@1"] = (out["text_to_video/temporal_R@1"] + out["video_to_text/temporal_R@1"]) / 2
    return out
