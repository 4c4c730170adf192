"""The two dataset classes that training and evaluation read; both yield the same sample dict (`decode.to_example`).

- `PairDataset`: map-style over the validated manifest and raw media, random access; each item is encoded with the
  same code the shard stage uses, then decoded as a shard member would be — for small data and evaluation.
- `IterableStylePairDataset`: streams the WebDataset shards. Per epoch the shard list is shuffled deterministically
  (the same order on every rank), split by node (rank) and by worker, and samples pass a seeded shuffle buffer.
  Exact mode reads every sample once per epoch and needs at least as many shards as ranks × workers; resampled mode
  draws shards with replacement and gives every rank and worker the same number of samples, so DDP ranks never wait
  on each other. Every shard is checked against `index.json` (`data.shard_index`): all sizes when the dataset is
  made, each shard's sample count (and with `verify="sha256"` its hash) as it is read.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from multigeometry.config import Params
from multigeometry.data.decode import decode_members, to_example
from multigeometry.data.frame_sampling import VideoSampler
from multigeometry.data.reads import ALL_RAW_FIELDS, needs_tokens, unread_fields
from multigeometry.data.shard_index import (
    INDEX,
    ShardIntegrityError,
    Verify,
    check_size,
    read_index,
    read_shard,
    split_shards,
)
from multigeometry.data.transforms import image_transform

log = logging.getLogger(__name__)

__all__ = ["INDEX", "IterableStylePairDataset", "PairDataset", "make_loader", "read_index"]


class PairDataset(Dataset):
    """With `shards_root`, the split's normalisation statistics come from its `index.json`, and the validated rows of
    the split must be as many as the shards hold (the manifest and the shards were made together)."""

    def __init__(self, params: Params, split: str, *, train: bool = False, root: Path = Path("."),
                 normalization: dict[str, dict] | None = None, shards_root: Path | None = None) -> None:
        from multigeometry.data.manifest import MANIFEST, read_manifest
        from multigeometry.data.shards import FeatureModels
        from multigeometry.paths import raw_dir, validated_dir

        manifest = validated_dir(params, root) / MANIFEST
        frame = read_manifest(manifest)
        self.rows = frame[frame["split"] == split].to_dict("records")
        if not self.rows:
            raise ValueError(f"split {split!r} of dataset {params.data.dataset!r} has no validated rows")
        if shards_root is not None:
            index = read_index(shards_root)
            shards = split_shards(shards_root, split, index)
            expected = sum(entry["samples"] for _path, entry in shards)
            if expected != len(self.rows):
                raise ShardIntegrityError(
                    f"{manifest}: {len(self.rows)} validated rows of split {split!r}, but "
                    f"{Path(shards_root) / INDEX} records {expected} samples; run `multigeometry shard` again")
            normalization = index.get("normalization", {}) if normalization is None else normalization
        self.params = params
        self.raw_root = raw_dir(params, root)
        self.models = FeatureModels(params)
        self.transform = image_transform(params.loader.augment, train)
        self.video = VideoSampler(params.video, train)
        self.normalization = normalization or {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from multigeometry.data.shards import encode_rows

        row = self.rows[index]
        (members,) = encode_rows([row], self.raw_root, self.params, self.models)
        decoded = decode_members(members, f"{self.raw_root}:{row['sample_id']}", skip=unread_fields(self.params))
        return to_example(decoded, self.transform, self.normalization, self.video)


class IterableStylePairDataset(IterableDataset):
    def __init__(
        self,
        shards_root: Path,
        split: str,
        params: Params,
        *,
        train: bool = False,
        rank: int = 0,
        world_size: int = 1,
        seed: int | None = None,
        resampled: bool | None = None,
        verify: Verify = "size",
    ) -> None:
        self.shards_root = Path(shards_root)
        index = read_index(self.shards_root)
        shards = split_shards(self.shards_root, split, index)
        self.entries = {str(path): entry for path, entry in shards}
        self.urls = list(self.entries)
        self.num_samples = int(index["splits"][split]["samples"])
        self.verify = verify
        for path, entry in shards:  # every shard present and whole before anything is built on them
            check_size(path, entry)
        self.normalization = index.get("normalization", {})
        self.split = split
        self.params = params
        self.train = train
        self.rank, self.world_size = rank, world_size
        self.seed = params.seed if seed is None else seed
        self.resampled = params.loader.resampled if resampled is None else resampled
        self.shuffle_buffer = params.loader.shuffle_buffer if train else 0
        self.skip = unread_fields(params)
        self._cache: dict[str, list[dict[str, Any]]] = {}
        self._cache_budget = params.loader.cache_mb * 2**20
        self.epoch = 0
        self._transform = None
        self.video = VideoSampler(params.video, train)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def samples_per_worker(self, workers: int) -> int:
        """Resampled mode: every rank and worker yields this many samples, so ranks see equal epoch lengths."""
        return math.ceil(self.num_samples / (self.world_size * max(1, workers)))

    def _shards_for_worker(self, worker: int, workers: int, rng: random.Random) -> Iterator[str]:
        if self.resampled:
            while True:
                yield rng.choice(self.urls)
        total = self.world_size * workers
        if len(self.urls) < total:
            raise ValueError(
                f"{self.shards_root / self.split}: {len(self.urls)} shards for {self.world_size} rank(s) x {workers} "
                f"worker(s); exact mode needs at least {total}: lower shard.max_samples, use fewer workers, or set "
                "loader.resampled: true"
            )
        order = list(self.urls)
        random.Random(f"{self.seed}:{self.epoch}").shuffle(order)  # the same order on every rank
        yield from order[self.rank :: self.world_size][worker::workers]  # split by node, then by worker

    def _samples(self, urls: Iterator[str]) -> Iterator[dict[str, Any]]:
        for url in urls:
            cached = self._cache.get(url)
            if cached is not None:
                yield from cached
                continue
            shard = read_shard(Path(url), self.entries[url], self.verify)
            decoded = [decode_members(members, url, skip=self.skip) for members in shard]
            self._remember(url, decoded)
            yield from decoded

    def _remember(self, url: str, decoded: list[dict[str, Any]]) -> None:
        """Keep a shard's decoded samples for the next epochs when the model reads features only (no raw images,
        log-mels or frames: the samples are small; frames are sampled from a clip's features after the cache) and the
        cache stays under `loader.cache_mb`; a worker process keeps its own."""
        if self.skip != ALL_RAW_FIELDS or self._cache_budget <= 0:
            return
        size = sum(v.nbytes for d in decoded for v in d.values() if isinstance(v, np.ndarray)) + 512 * len(decoded)
        if size > self._cache_budget:
            self._cache_budget = 0  # does not fit: stop caching, keep what is cached
            return
        self._cache_budget -= size
        self._cache[url] = decoded

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rng = random.Random(f"{self.seed}:{self.epoch}:{self.rank}:{worker}")
        if self._transform is None:
            self._transform = image_transform(self.params.loader.augment, self.train)
        stream = self._samples(self._shards_for_worker(worker, workers, rng))
        if self.shuffle_buffer > 1:
            stream = _shuffle(stream, self.shuffle_buffer, rng)
        limit = self.samples_per_worker(workers) if self.resampled else None
        for count, decoded in enumerate(stream):
            if limit is not None and count >= limit:
                return
            yield to_example(decoded, self._transform, self.normalization, self.video)


def _shuffle(stream: Iterator[dict], size: int, rng: random.Random) -> Iterator[dict]:
    buffer: list[dict] = []
    for item in stream:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = rng.randrange(size)
        yield buffer[i]
        buffer[i] = item
    rng.shuffle(buffer)
    yield from buffer


def make_loader(dataset: Dataset | IterableDataset, params: Params, *, workers: int | None = None,
                batch_size: int | None = None, tokenizer: Any | None = None,
                seed: int | None = None) -> torch.utils.data.DataLoader:
    """A `webdataset.WebLoader` with the shared collator; worker processes start with forkserver (fork can deadlock
    with audio decoding and torch threads)."""
    import webdataset as wds

    from multigeometry.data.collate import Collator

    workers = params.loader.workers if workers is None else workers
    tokenize = needs_tokens(params)
    collate = Collator(params.pairs, params.loader, tokenizer, tokenize=tokenize)
    if tokenize and tokenizer is None:
        collate.tokenizer  # noqa: B018 - load once here, not in every worker
    generator = torch.Generator().manual_seed(params.seed if seed is None else seed)
    return wds.WebLoader(
        dataset,
        batch_size=batch_size or params.loader.batch_size,
        num_workers=workers,
        collate_fn=collate,
        multiprocessing_context="forkserver" if workers > 0 else None,
        generator=generator,
        shuffle=False,
    )
