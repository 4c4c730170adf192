"""Pooling a clip's frames over time, (B, T, D) -> (B, D), as CLIP4Clip's similarity heads do:

- `MeanPool` (meanP): the mean of the frames. A bag of frames: the same for any order of them, so it cannot tell a
  clip from the clip played backwards.
- `SeqTransf` (seqTransf): learned frame positions and a small transformer encoder over the frames, whose output is
  added to the frames (CLIP4Clip's residual) before the mean. Here the transformer runs in a narrower width
  (`temporal_width`): the frames are projected down, and its output projected back up by a map that starts at zero, so
  a fresh seqTransf is exactly meanP and learns only what order adds.

  With `deltas` (`model.video.temporal_deltas`, our addition to CLIP4Clip) the transformer's tokens hold what changes:
  each frame less the clip's mean frame (the residual carries the mean already) plus its difference from the
  previous frame. Pooled image features hardly change as an object moves, and a frame's appearance dominates its
  token, so the plain seqTransf barely tells a clip from its reversal (BENCHMARKS.md, "meanP against seqTransf"); the
  differences' mean over the clip is (last − first) / T through the transformer's residual path, which flips sign
  when the clip is played backwards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:  # models read the collated batch; they do not depend on data/ at run time
    from multigeometry.data.batch import Batch

MAX_FRAMES = 64  # learned frame positions (video.num_frames is at most this)


class MeanPool(nn.Module):
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return frames.mean(dim=1)


class SeqTransf(nn.Module):
    def __init__(self, dim: int, width: int = 128, layers: int = 1, heads: int = 4, dropout: float = 0.0,
                 deltas: bool = False) -> None:
        super().__init__()
        self.down = nn.Linear(dim, width)
        self.down_delta = nn.Linear(dim, width, bias=False) if deltas else None
        self.positions = nn.Parameter(torch.zeros(MAX_FRAMES, width))
        nn.init.normal_(self.positions, std=0.02)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        t = frames.shape[1]
        if t > MAX_FRAMES:
            raise ValueError(f"seqTransf: {t} frames, more than the {MAX_FRAMES} positions it has (video.num_frames)")
        if self.down_delta is None:
            x = self.down(frames) + self.positions[:t]
        else:  # what changes: the frames less their mean (which the residual carries), and their differences
            x = self.down(frames - frames.mean(dim=1, keepdim=True)) + self.positions[:t]
            x = x + self.down_delta(torch.diff(frames, dim=1, prepend=frames[:, :1]))
        x = self.norm(self.encoder(x))
        return (frames + self.up(x)).mean(dim=1)


def make_temporal(kind: str, dim: int, width: int = 128, layers: int = 1, heads: int = 4,
                  dropout: float = 0.0, deltas: bool = False) -> nn.Module:
    """`meanP` or `seqTransf` over frames of `dim` features."""
    if kind == "meanP":
        return MeanPool()
    if kind == "seqTransf":
        return SeqTransf(dim, width, layers, heads, dropout, deltas)
    raise ValueError(f"model.video.temporal: unknown {kind!r}; allowed: 'meanP', 'seqTransf'")


def shuffled_order(t: int) -> torch.Tensor | None:
    """A fixed order of `t` frames that is neither the clip's nor its reverse (None for fewer than 3 frames)."""
    if t < 3:
        return None
    gen = torch.Generator().manual_seed(0)
    identity, reverse = torch.arange(t), torch.arange(t).flip(0)
    while True:
        order = torch.randperm(t, generator=gen)
        if not (torch.equal(order, identity) or torch.equal(order, reverse)):
            return order


def time_variants(frames: torch.Tensor) -> list[torch.Tensor]:
    """A batch of clips' frames (B, T, D): as they are, played backwards, and (T >= 3) in a fixed shuffled order."""
    order = shuffled_order(frames.shape[1])
    variants = [frames, frames.flip(1)]
    if order is not None:
        variants.append(frames[:, order.to(frames.device)])
    return variants


def encoded_time_variants(model: Any, inputs: dict[str, torch.Tensor]) -> list[Any]:
    """The model's video distributions of a batch's clips as they are, played backwards and shuffled
    (`time_variants` of what its video encoder reads: the frame features, or the decoded frames of a raw backbone)."""
    key = model.encoders["video"].input_key
    return [model.encode({key: x}, "video") for x in time_variants(inputs[key])]


def checked_rows(batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The rows of a collated batch that the temporal terms check: a clip, a caption and at least one temporal
    contrast. Returns (rows, the contrast entries of those rows, each entry's position among the rows), or None."""
    owner = batch.temporal_contrasts.owner
    if not len(owner) or not {"video.emb", "video"} & set(batch.inputs) or not {"video", "text"} <= set(batch.present):
        return None
    owner = owner.cpu()
    has_contrast = torch.zeros(len(batch), dtype=torch.bool)
    has_contrast[owner] = True
    keep = torch.nonzero(has_contrast & batch.present["video"].cpu() & batch.present["text"].cpu()).squeeze(1)
    if not keep.numel():
        return None
    slot = torch.full((len(has_contrast),), -1, dtype=torch.long)
    slot[keep] = torch.arange(keep.numel())
    entries = torch.nonzero(slot[owner] >= 0).squeeze(1)
    return keep, entries, slot[owner][entries]
