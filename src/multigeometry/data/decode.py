"""Safe decoding of a sample's WebDataset members into the sample dict that both dataset classes yield.

Only known extensions are decoded; members that would need pickle (`.pyd`, `.pickle`, `.pth`, ...) are refused, and
`.npy` is loaded with `allow_pickle=False`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from multigeometry.data.images import to_rgb

if TYPE_CHECKING:
    from multigeometry.data.frame_sampling import VideoSampler

KNOWN = {"jpg", "png", "txt", "py", "flac", "npy", "json", "mp4", "webm"}
VIDEO_MEMBERS = ("video.mp4", "video.webm")
DECODE_MAX_FRAMES = 100_000  # the shards' clips passed validation's limits; this only bounds a damaged one
REFUSED = {"pyd", "pickle", "pkl", "pth", "pt", "ckpt"}


class UnsafeMemberError(ValueError):
    """A shard member of a type that can execute code when loaded."""


def decode_members(
    members: dict[str, Any], source: str, keep_audio_bytes: bool = False, skip: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Members (`image.png`, `text.txt`, `audio.feat.npy`, `video.mp4`, `meta.json`, ...) -> decoded values by field
    name; the fields in `skip` (`image`, `audio.feat`, `video`: see `data.reads.unread_fields`) are not decoded. A
    clip decodes to all its frames, (N, H, W, 3) uint8."""
    from PIL import Image

    key = members.get("__key__", "?")
    out: dict[str, Any] = {"__key__": key}
    for member, data in members.items():
        if member.startswith("__"):
            continue
        ext = member.rsplit(".", 1)[-1].lower()
        if ext in REFUSED:
            raise UnsafeMemberError(f"{source}: sample {key!r}: member {member!r} needs pickle to load; refused")
        if ext not in KNOWN:
            continue
        if ext in ("jpg", "png"):
            if "image" in skip:
                continue
            with Image.open(io.BytesIO(data)) as image:
                out["image"] = to_rgb(image)
        elif member == "text.txt":
            out["text"] = bytes(data).decode("utf-8")
        elif member == "code.py":
            out["code"] = bytes(data).decode("utf-8")
        elif member in VIDEO_MEMBERS:
            if "video" in skip:
                continue
            from multigeometry.data.video import read_frames

            out["video"] = read_frames(bytes(data), max_frames=DECODE_MAX_FRAMES,
                                       name=f"{source}: sample {key!r}: {member}")[0]
        elif member == "audio.flac":
            if keep_audio_bytes:
                out["audio.flac"] = bytes(data)
        elif ext == "npy":
            if member.removesuffix(".npy") in skip:
                continue
            out[member.removesuffix(".npy")] = np.load(io.BytesIO(data), allow_pickle=False)
        elif member == "meta.json":
            out["meta"] = json.loads(data)
    if "meta" not in out:
        raise ValueError(f"{source}: sample {key!r} has no meta.json")
    return out


def to_example(
    decoded: dict[str, Any],
    image_transform: Callable | None,
    normalization: dict[str, dict],
    video: VideoSampler | None = None,
) -> dict[str, Any]:
    """The sample dict: ids, hierarchy, and each modality ready for collation. A clip's frame features (`video.emb`,
    F x D) become the `video.num_frames` frames `video` samples (default: `VideoConfig`'s, no jitter); its decoded
    frames (`video`, decoded only for a raw-frame backbone) become `video.num_frames` frames at `video.frame_side`."""
    import torch

    from multigeometry.config import VideoConfig
    from multigeometry.data.frame_sampling import VideoSampler

    meta = decoded["meta"]
    example: dict[str, Any] = {
        "sample_id": meta["sample_id"],
        "group_id": meta["group_id"],
        "hierarchy": meta.get("hierarchy", []),
        "concepts": meta.get("concepts", []),
        "hierarchy_concepts": meta.get("hierarchy_concepts", []),
        "parts": meta.get("parts", []),
        "compound_level": meta.get("compound_level", -1),
        "ambiguity": meta.get("ambiguity", {}),
        "temporal_contrasts": meta.get("temporal_contrasts", []),
    }
    sampler = video if video is not None else VideoSampler(VideoConfig())
    if "video.emb" in decoded:
        example["video.emb"] = sampler.features(decoded["video.emb"])
    if "video" in decoded:
        example["video"] = sampler.frames(decoded["video"])
    if "image" in decoded:
        image = decoded["image"]
        example["image"] = image_transform(image) if image_transform is not None else image
    for name in ("text", "code"):
        if name in decoded:
            example[name] = decoded[name]
    for name, value in decoded.items():
        if isinstance(value, np.ndarray) and name not in ("video", "video.emb"):
            stats = normalization.get(name)
            tensor = torch.from_numpy(np.array(value, dtype=np.float32))
            if name == "audio.feat" and stats is not None:
                mean = torch.tensor(stats["mean"], dtype=torch.float32)[:, None]
                std = torch.tensor(stats["std"], dtype=torch.float32)[:, None]
                tensor = (tensor - mean) / std
            example["audio" if name == "audio.feat" else name] = tensor
    if "audio.flac" in decoded:
        example["audio.flac"] = decoded["audio.flac"]
    return example
