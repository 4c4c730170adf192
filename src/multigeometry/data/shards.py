"""Writing WebDataset shards: sample members, a deterministic shard plan, and one shard written atomically.

The plan fixes every shard's samples before anything is encoded, from sizes known up front (media file sizes, audio
durations, feature dimensions), so shards can be written in any order by any number of workers — a process pool here,
Dask in the Prefect flow — and still come out byte for byte the same. Each shard is a `webdataset.TarWriter` stream
with fixed member order, mtimes and owners, written to a temporary name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from multigeometry.config import MODALITIES, AudioConfig, Params, ShardConfig
from multigeometry.data.images import to_rgb

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {"png": "png", "jpg": "jpg", "jpeg": "jpg"}
TAR_OWNER = "multigeometry"
TAR_MTIME = 0.0
_NPY_HEADER = 128  # numpy's .npy header is padded to a multiple of 64 bytes; 128 bounds it for small shapes


def sample_key(sample_id: str) -> str:
    """A WebDataset key for a sample id: no dots (they separate key and extension) or path characters."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", sample_id)
    if safe != sample_id:
        safe = f"{safe}_{hashlib.sha1(sample_id.encode()).hexdigest()[:8]}"
    return safe


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def frames_for(seconds: float, cfg: AudioConfig) -> int:
    hop = round(cfg.sample_rate * cfg.hop_ms / 1000)
    samples = round(min(seconds, cfg.max_seconds) * cfg.sample_rate)
    if cfg.pad == "zeros":
        samples = round(cfg.max_seconds * cfg.sample_rate)
    return samples // hop + 1


# ---------------------------------------------------------------------------------------------------------------------
# the plan
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardPlan:
    split: str
    index: int
    rows: tuple[dict, ...] = field(repr=False)
    estimated_bytes: int = 0

    @property
    def name(self) -> str:
        return f"shard-{self.index:06d}.tar"


def estimate_bytes(row: dict, raw_root: Path, params: Params, feature_dims: dict[str, int]) -> int:
    """An upper bound of the sample's payload in its shard (re-encoding images only shrinks them; a clip is counted
    at its file's size, which re-encoding a larger clip at shard.max_video_side shrinks in practice)."""
    from multigeometry.data.audio import audio_seconds

    total = 512  # meta.json
    for modality in ("image", "code", "video"):
        if isinstance(row.get(modality), str):
            total += (raw_root / row[modality]).stat().st_size
    if isinstance(row.get("text"), str):
        total += len(row["text"].encode())
    if isinstance(row.get("audio"), str):
        duration = audio_seconds(raw_root / row["audio"])
        seconds = min(duration, params.audio.max_seconds)
        total += int(seconds * params.audio.sample_rate * 2) + 1024  # FLAC of 16-bit PCM: at most the raw size
        total += params.audio.n_mels * frames_for(duration, params.audio) * 4 + _NPY_HEADER
    for modality, dim in feature_dims.items():
        if isinstance(row.get(modality), str):
            total += dim * 4 * (params.video.feature_frames if modality == "video" else 1) + _NPY_HEADER
    return total


def plan_shards(
    rows_by_split: dict[str, list[dict]], sizes: dict[str, list[int]], cfg: ShardConfig
) -> list[ShardPlan]:
    """Cut each split, in manifest order, into shards of at most `max_samples` samples and `max_bytes` bytes."""
    plans: list[ShardPlan] = []
    for split, rows in rows_by_split.items():
        current: list[dict] = []
        current_bytes = 0
        index = 0
        for row, size in zip(rows, sizes[split], strict=True):
            if current and (len(current) >= cfg.max_samples or current_bytes + size > cfg.max_bytes):
                plans.append(ShardPlan(split, index, tuple(current), current_bytes))
                index += 1
                current, current_bytes = [], 0
            current.append(row)
            current_bytes += size
        if current:
            plans.append(ShardPlan(split, index, tuple(current), current_bytes))
    return plans


# ---------------------------------------------------------------------------------------------------------------------
# members of a sample
# ---------------------------------------------------------------------------------------------------------------------


def image_member(path: Path, max_side: int, max_pixels: int) -> tuple[str, bytes]:
    """The image as the source encoded it; re-encoded (same format) only when larger than `max_side`. Decoded by
    `readers.read_image` within `max_pixels`, as the validate stage decodes it."""
    from PIL import Image

    from multigeometry.data.readers import read_image

    ext = IMAGE_EXTENSIONS.get(path.suffix.lower().lstrip("."))
    data = path.read_bytes()
    with read_image(data, max_pixels, path) as image:
        fmt = image.format
        if ext is None:
            ext = "png" if fmt == "PNG" else "jpg"
        if max(image.size) <= max_side and fmt in ("PNG", "JPEG"):
            return f"image.{ext}", data
        scale = max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        resized = to_rgb(image).resize(size, Image.Resampling.BICUBIC) if scale < 1 else to_rgb(image)
        buf = io.BytesIO()
        resized.save(buf, format="PNG" if ext == "png" else "JPEG", quality=95)
        return f"image.{ext}", buf.getvalue()


def flac_bytes(wave: np.ndarray, sample_rate: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, wave, sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def meta_of(row: dict) -> dict[str, Any]:
    return {
        "sample_id": row["sample_id"],
        "group_id": row["group_id"],
        "split": row["split"],
        "hierarchy": list(row.get("hierarchy") or []),
        "concepts": list(row.get("concepts") or []),
        "hierarchy_concepts": [list(c) for c in (row.get("hierarchy_concepts") or [])],
        "parts": list(row.get("parts") or []),
        "compound_level": int(row.get("compound_level", -1)),
        "temporal_contrasts": list(row.get("temporal_contrasts") or []),
        "ambiguity": json.loads(row["ambiguity"]) if isinstance(row.get("ambiguity"), str) and row["ambiguity"] else {},
    }


class FeatureModels:
    """The frozen pretrained feature extractors named in `features.*`, loaded once and kept."""

    def __init__(self, params: Params) -> None:
        self.params = params
        self._extractors: dict[str, Any] = {}

    @property
    def modalities(self) -> list[str]:
        return [m for m in MODALITIES if getattr(self.params.features, m).model]

    def get(self, modality: str) -> Any:
        if modality not in self._extractors:
            from multigeometry.data.features import load_extractor

            self._extractors[modality] = load_extractor(
                modality, getattr(self.params.features, modality), self.params.audio
            )
        return self._extractors[modality]

    def specs(self) -> dict[str, dict]:
        specs = {f"{m}.emb": self.get(m).spec for m in self.modalities}
        if "video.emb" in specs:  # which frames: the centres of feature_frames equal segments of each clip
            specs["video.emb"] = {**specs["video.emb"], "frames": self.params.video.feature_frames,
                                  "sampling": "segment centres"}
        return specs

    def dims(self) -> dict[str, int]:
        return {m: int(self.get(m).spec["dim"]) for m in self.modalities}


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Pretrained features are computed on one thread: a matmul's float rounding depends on how many threads split
    it, and shards must come out byte for byte the same whatever the number of workers or cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def encode_rows(rows: Sequence[dict], raw_root: Path, params: Params, models: FeatureModels) -> list[dict[str, Any]]:
    """The WebDataset members of each row: raw media, log-mel features, pretrained features and meta.json."""
    samples: list[dict[str, Any]] = [{"__key__": sample_key(r["sample_id"])} for r in rows]
    inputs: dict[str, list[Any]] = {m: [] for m in models.modalities}
    for sample, row in zip(samples, rows, strict=True):
        try:
            _raw_members(sample, row, raw_root, params, inputs)
        except Exception as e:  # validation decodes with the same functions; this is a file changed since
            raise ValueError(f"{raw_root}: sample {row['sample_id']!r}: {type(e).__name__}: {e}") from e

    for modality in models.modalities:
        owners = [i for i, row in enumerate(rows) if isinstance(row.get(modality), str)]
        if not owners:
            continue
        with one_torch_thread():
            features = models.get(modality).encode(inputs[modality])
        for i, vector in zip(owners, features, strict=True):
            samples[i][f"{modality}.emb.npy"] = npy_bytes(np.asarray(vector, dtype=np.float32))

    # the hierarchy's descriptions, the compound's parts and the temporal contrasts are text too: with text features,
    # each row also stores theirs ((L, D), (P, D), (C, D)), so that the entailment and composition terms and their
    # metrics, and the temporal check, can embed them without the text model
    if "text" in models.modalities:
        for column in TEXT_LIST_COLUMNS:
            _text_list_features(samples, rows, column, models)
    return samples


TEXT_LIST_COLUMNS = ("hierarchy", "parts", "temporal_contrasts")


def _raw_members(sample: dict[str, Any], row: dict, raw_root: Path, params: Params, inputs: dict[str, list]) -> None:
    """The row's media members into `sample`, and each modality's decoded input for the feature models."""
    from PIL import Image

    from multigeometry.data.audio import load_audio, log_mel
    from multigeometry.data.readers import read_code
    from multigeometry.data.video import read_frames, video_member

    if isinstance(row.get("image"), str):
        name, data = image_member(raw_root / row["image"], params.shard.max_image_side,
                                  params.validate.image_max_pixels)
        sample[name] = data
        if "image" in inputs:
            inputs["image"].append(to_rgb(Image.open(io.BytesIO(data))))
    if isinstance(row.get("text"), str):
        sample["text.txt"] = row["text"].encode()
        if "text" in inputs:
            inputs["text"].append(row["text"])
    if isinstance(row.get("code"), str):
        source = read_code(raw_root / row["code"], params.validate.code_max_bytes)
        sample["code.py"] = source.encode()
        if "code" in inputs:
            inputs["code"].append(source)
    if isinstance(row.get("video"), str):
        path = raw_root / row["video"]
        limits = {"max_frames": params.validate.video_max_frames, "max_pixels": params.validate.video_max_pixels}
        name, data = video_member(path, params.shard.max_video_side, limits, params.video.threads)
        sample[name] = data
        if "video" in inputs:  # the frames of the clip as stored, so that an input embeds as its shard sample
            frames, _info = read_frames(data, params.video.feature_frames, threads=params.video.threads, name=path,
                                        **limits)
            inputs["video"].append(frames)
    if isinstance(row.get("audio"), str):
        wave = load_audio(raw_root / row["audio"], params.audio)
        sample["audio.flac"] = flac_bytes(wave, params.audio.sample_rate)
        sample["audio.feat.npy"] = npy_bytes(log_mel(wave, params.audio).astype(np.float32))
        if "audio" in inputs:
            inputs["audio"].append(wave)
    sample["meta.json"] = json.dumps(meta_of(row), sort_keys=True).encode()


def _text_list_features(
    samples: list[dict[str, Any]], rows: Sequence[dict], column: str, models: FeatureModels
) -> None:
    lists = [list(row.get(column) or []) for row in rows]
    if not any(lists):
        return
    with one_torch_thread():
        flat = models.get("text").encode([t for ts in lists for t in ts])
    start = 0
    for sample, ts in zip(samples, lists, strict=True):
        if ts:
            sample[f"{column}.emb.npy"] = npy_bytes(np.asarray(flat[start : start + len(ts)], dtype=np.float32))
        start += len(ts)


# ---------------------------------------------------------------------------------------------------------------------
# writing one shard
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class FeatureMoments:
    """Running sums for the normalisation statistics of one feature (per channel)."""

    count: int = 0
    total: np.ndarray | None = None
    squares: np.ndarray | None = None

    def add(self, feature: np.ndarray, channel_axis: int = 0) -> None:
        channels = feature.shape[channel_axis]
        values = np.moveaxis(np.asarray(feature, dtype=np.float64), channel_axis, 0).reshape(channels, -1)
        if self.total is None:
            self.total = np.zeros(values.shape[0])
            self.squares = np.zeros(values.shape[0])
        self.total += values.sum(axis=1)
        self.squares += np.square(values).sum(axis=1)
        self.count += values.shape[1]

    def merge(self, other: FeatureMoments) -> None:
        if other.total is None:
            return
        if self.total is None:
            self.total, self.squares = other.total.copy(), other.squares.copy()
        else:
            self.total += other.total
            self.squares += other.squares
        self.count += other.count

    def stats(self) -> dict[str, list[float]]:
        mean = self.total / self.count
        std = np.sqrt(np.maximum(self.squares / self.count - mean**2, 1e-12))
        return {"mean": [float(x) for x in mean], "std": [float(x) for x in std], "count": self.count}


@dataclass
class ShardResult:
    split: str
    name: str
    samples: int
    bytes: int
    sha256: str
    moments: dict[str, FeatureMoments]


def _moments(samples: list[dict[str, Any]]) -> dict[str, FeatureMoments]:
    moments: dict[str, FeatureMoments] = {}
    for sample in samples:
        for member, data in sample.items():
            if member.endswith(".npy"):
                array = np.load(io.BytesIO(data), allow_pickle=False)
                name = member.removesuffix(".npy")
                # log-mels are [n_mels, frames]: statistics per mel bin; features are [..., D]: per dimension
                axis = 0 if name == "audio.feat" else -1
                moments.setdefault(name, FeatureMoments()).add(array, channel_axis=axis)
    return moments


def write_tar(path: Path, samples: list[dict[str, Any]]) -> None:
    """Write samples to `path` atomically and reproducibly: fixed mtimes, owners, modes and member order."""
    import webdataset as wds

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as stream:
            writer = wds.TarWriter(stream, user=TAR_OWNER, group=TAR_OWNER, mode=0o444, encoder=False,
                                   mtime=TAR_MTIME)
            for sample in samples:
                writer.write(sample)
            writer.close()
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_shard(plan: ShardPlan, out_dir: Path, raw_root: Path, params: Params, models: FeatureModels) -> ShardResult:
    samples = encode_rows(plan.rows, raw_root, params, models)
    path = out_dir / plan.split / plan.name
    write_tar(path, samples)
    data = path.read_bytes()
    return ShardResult(
        split=plan.split,
        name=plan.name,
        samples=len(samples),
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        moments=_moments(samples),
    )


# ---------------------------------------------------------------------------------------------------------------------
# all shards of a dataset
# ---------------------------------------------------------------------------------------------------------------------

_WORKER_MODELS: FeatureModels | None = None


def _init_worker(params: Params, parent: int | None = None) -> None:
    global _WORKER_MODELS
    if parent is not None:  # a pool worker must not outlive the stage that started it (kill -9 included)
        from multigeometry.processes import exit_with_parent

        exit_with_parent(parent)
    _WORKER_MODELS = FeatureModels(params)


def _write_in_worker(args: tuple[ShardPlan, Path, Path, Params]) -> ShardResult:
    plan, out_dir, raw_root, params = args
    assert _WORKER_MODELS is not None, "worker not initialised"
    return write_shard(plan, out_dir, raw_root, params, _WORKER_MODELS)


def write_shards_with_pool(
    plans: Sequence[ShardPlan], out_dir: Path, raw_root: Path, params: Params
) -> list[ShardResult]:
    """Write every planned shard with `shard.workers` processes; results in plan order. Workers exit when this
    process dies, and are killed at once when it fails or is terminated."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm import tqdm

    from multigeometry.processes import terminate_pool

    workers = min(params.shard.workers, len(plans)) or 1
    jobs = [(plan, out_dir, raw_root, params) for plan in plans]
    results: dict[int, ShardResult] = {}
    with tqdm(total=sum(len(p.rows) for p in plans), desc="shards", unit="sample", disable=None) as progress:
        if workers == 1:
            _init_worker(params)
            for i, job in enumerate(jobs):
                results[i] = _write_in_worker(job)
                progress.update(results[i].samples)
        else:
            context = multiprocessing.get_context("spawn")  # fork after torch threads started can deadlock
            pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                       initargs=(params, os.getpid()))
            try:
                futures = {pool.submit(_write_in_worker, job): i for i, job in enumerate(jobs)}
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    progress.update(results[futures[future]].samples)
            except BaseException:  # an error, Ctrl-C or SIGTERM: nothing keeps running behind the failed stage
                terminate_pool(pool)
                raise
            pool.shutdown()
    return [results[i] for i in range(len(jobs))]


def build_index(results: Sequence[ShardResult], feature_specs: dict[str, dict], params: Params) -> dict[str, Any]:
    """`index.json`: samples per shard and split, feature specifications, and normalisation statistics computed on
    the train split only."""
    splits: dict[str, dict[str, Any]] = {}
    for r in results:
        entry = splits.setdefault(r.split, {"samples": 0, "shards": []})
        entry["samples"] += r.samples
        entry["shards"].append({"name": r.name, "samples": r.samples, "bytes": r.bytes, "sha256": r.sha256})
    moments: dict[str, FeatureMoments] = {}
    for r in results:
        if r.split == "train":
            for name, m in r.moments.items():
                moments.setdefault(name, FeatureMoments()).merge(m)
    audio = params.audio
    features = {
        "audio.feat": {
            "kind": "log_mel", "layout": "[n_mels, frames]", "dtype": "float32", "sample_rate": audio.sample_rate,
            "n_mels": audio.n_mels, "win_ms": audio.win_ms, "hop_ms": audio.hop_ms, "f_min": audio.f_min,
            "f_max": audio.f_max, "max_seconds": audio.max_seconds, "crop": audio.crop, "pad": audio.pad,
        },
        # a spec's resolved local path differs between machines; the index records what, not where
        **{name: {k: v for k, v in spec.items() if k != "path"} for name, spec in feature_specs.items()},
    }
    return {
        "format": 1,
        "dataset": params.data.dataset,
        "splits": splits,
        "features": features,
        "normalization": {name: m.stats() for name, m in sorted(moments.items())},
    }
