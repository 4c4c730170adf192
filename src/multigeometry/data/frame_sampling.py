"""Which of a clip's frames an encoder sees: `video.num_frames` of them, one per equal segment (TSN-style segment
sampling, `data.video.segment_indices`): each segment's centre frame, or in training (`video.jitter`) a random frame
inside it. The sampler picks among the shards' frame features (`video.emb`, F x D: the F = `video.feature_frames`
frames the shard stage embedded), or, for a raw-frame backbone, among a clip's decoded frames, resized to
`video.frame_side`.

Training draws come from torch's global generator, as the image augmentation's do, so a resumed run replays them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from multigeometry.config import VideoConfig
from multigeometry.data.video import segment_indices


@dataclass(frozen=True)
class VideoSampler:
    cfg: VideoConfig
    train: bool = False

    def indices(self, n: int) -> list[int]:
        """`num_frames` indices among `n` frames: segment centres, or random frames inside the segments."""
        t = self.cfg.num_frames
        if self.train and self.cfg.jitter:
            return segment_indices(n, t, torch.rand(t).tolist())
        return segment_indices(n, t)

    def features(self, emb: np.ndarray) -> torch.Tensor:
        """(F, D) frame features -> (num_frames, D)."""
        if emb.ndim != 2:
            raise ValueError(f"video.emb: expected frame features (frames, dim), got shape {emb.shape}")
        return torch.from_numpy(np.array(emb[self.indices(emb.shape[0])], dtype=np.float32))

    def frames(self, decoded: np.ndarray) -> torch.Tensor:
        """A clip's decoded frames (N, H, W, 3) uint8 -> (num_frames, 3, frame_side, frame_side) float in [0, 1]: the
        short side resized to `frame_side`, then the centre square (as torchvision's Kinetics models were trained)."""
        if decoded.ndim != 4 or decoded.shape[-1] != 3 or not len(decoded):
            raise ValueError(f"video: expected decoded frames (frames, height, width, 3), got shape {decoded.shape}")
        picked = torch.from_numpy(np.ascontiguousarray(decoded[self.indices(decoded.shape[0])]))
        x = picked.permute(0, 3, 1, 2).float() / 255.0
        side = self.cfg.frame_side
        h, w = x.shape[-2:]
        if min(h, w) != side:
            size = (side, max(side, round(w * side / h))) if h <= w else (max(side, round(h * side / w)), side)
            x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True,
                                                align_corners=False).clamp_(0.0, 1.0)
        top, left = (x.shape[-2] - side) // 2, (x.shape[-1] - side) // 2
        return x[..., top : top + side, left : left + side].contiguous()
