"""Pooling a clip's frames over time, (B, T, D) -> (B, D), as CLIP4Clip's similarity heads do:

- `MeanPool` (meanP): the mean of the frames. A bag of frames: the same for any order of them, so it cannot tell a
  clip from the clip played backwards.
- `SeqTransf` (seqTransf): learned frame positions and a small transformer encoder over the frames, whose output is
  added to the frames (CLIP4Clip's residual) before the mean. Here the transformer runs in a narrower width
  (`temporal_width`): the frames are projected down, and its output projected back up by a map that starts at zero, so
  a fresh seqTransf is exactly meanP and learns only what order adds.
"""

from __future__ import annotations

import torch
from torch import nn

MAX_FRAMES = 64  # learned frame positions (video.num_frames is at most this)


class MeanPool(nn.Module):
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return frames.mean(dim=1)


class SeqTransf(nn.Module):
    def __init__(self, dim: int, width: int = 128, layers: int = 1, heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.down = nn.Linear(dim, width)
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
        x = self.down(frames) + self.positions[:t]
        x = self.norm(self.encoder(x))
        return (frames + self.up(x)).mean(dim=1)


def make_temporal(kind: str, dim: int, width: int = 128, layers: int = 1, heads: int = 4,
                  dropout: float = 0.0) -> nn.Module:
    """`meanP` or `seqTransf` over frames of `dim` features."""
    if kind == "meanP":
        return MeanPool()
    if kind == "seqTransf":
        return SeqTransf(dim, width, layers, heads, dropout)
    raise ValueError(f"model.video.temporal: unknown {kind!r}; allowed: 'meanP', 'seqTransf'")
