"""`index.json` of a shards folder, and reading a shard against it.

The shard stage records, per shard, its sample count, byte size and sha256. Readers trust a shard only as far as it
matches that record: `read_shard` checks the size before the first sample, counts the samples as they stream, and
(with `verify="sha256"`) hashes the bytes in the same pass; a mismatch is a `ShardIntegrityError` naming the shard,
what the index expected and what was found. The hash is checked when the shard's last byte has been read, so a caller
that must not act on a bad shard (evaluation, registration, a search index) keeps its results until the whole split
has been read.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

INDEX = "index.json"
Verify = Literal["size", "sha256"]
_SHARD_NAME = re.compile(r"shard-\d{6,}\.tar")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20


class ShardIntegrityError(ValueError):
    """A shard or shard index that does not match what the shard stage wrote."""


@dataclass(frozen=True)
class ShardFacts:
    """What a shard's bytes turned out to be."""

    name: str
    samples: int
    bytes: int
    sha256: str

    def entry(self) -> dict[str, Any]:
        return {"name": self.name, "samples": self.samples, "bytes": self.bytes, "sha256": self.sha256}


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_split(path: Path, split: str, entry: Any) -> None:
    where = f"{path}: splits.{split}"
    if not isinstance(entry, dict) or not isinstance(entry.get("shards"), list) or not _count(entry.get("samples")):
        raise ShardIntegrityError(f"{where}: expected {{samples: int, shards: [...]}}, found {entry!r:.200}")
    for i, shard in enumerate(entry["shards"]):
        ok = (isinstance(shard, dict) and isinstance(shard.get("name"), str) and _SHARD_NAME.fullmatch(shard["name"])
              and _count(shard.get("samples")) and _count(shard.get("bytes"))
              and isinstance(shard.get("sha256"), str) and _SHA256.fullmatch(shard["sha256"]))
        if not ok:
            raise ShardIntegrityError(f"{where}.shards[{i}]: expected {{name: shard-NNNNNN.tar, samples: int, "
                                      f"bytes: int, sha256: 64 hex digits}}, found {shard!r:.200}")
    total = sum(s["samples"] for s in entry["shards"])
    if total != entry["samples"]:
        raise ShardIntegrityError(f"{where}: samples is {entry['samples']}, its shards add up to {total}")


def read_index(shards_root: Path) -> dict[str, Any]:
    """The shards' `index.json`, checked for the fields readers rely on."""
    path = Path(shards_root) / INDEX
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no shard index; run `multigeometry shard` first")
    try:
        index = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ShardIntegrityError(f"{path}: not a valid JSON shard index ({e}); run `multigeometry shard` again") \
            from e
    if not isinstance(index, dict) or not isinstance(index.get("splits"), dict):
        raise ShardIntegrityError(f"{path}: expected a JSON object with 'splits'; run `multigeometry shard` again")
    for split, entry in index["splits"].items():
        _check_split(path, split, entry)
    return index


def split_shards(shards_root: Path, split: str, index: dict[str, Any] | None = None) -> list[tuple[Path, dict]]:
    """(path, index entry) of every shard of `split`, in index order."""
    shards_root = Path(shards_root)
    index = read_index(shards_root) if index is None else index
    if split not in index["splits"]:
        raise ValueError(f"{shards_root / INDEX}: no split {split!r}; has {sorted(index['splits'])}")
    return [(shards_root / split / s["name"], s) for s in index["splits"][split]["shards"]]


def check_size(path: Path, entry: dict[str, Any]) -> None:
    """The shard exists and has the byte size its index entry records (a cut or padded shard does not)."""
    if not path.is_file():
        raise ShardIntegrityError(f"{path}: missing; the index records {entry['samples']} samples in "
                                  f"{entry['bytes']} bytes")
    found = path.stat().st_size
    if found != entry["bytes"]:
        raise ShardIntegrityError(f"{path}: {found} bytes; the index records {entry['bytes']} (the shard was cut, "
                                  "padded or replaced)")


class _CountingReader:
    """A read-only stream that counts (and optionally hashes) every byte read through it."""

    def __init__(self, stream: BinaryIO, sha256: bool) -> None:
        self.stream = stream
        self.bytes = 0
        self.digest = hashlib.sha256() if sha256 else None

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.bytes += len(data)
        if self.digest is not None:
            self.digest.update(data)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


def _mismatches(path: Path, entry: dict[str, Any], reader: _CountingReader, samples: int | None) -> str:
    found = []
    if reader.bytes != entry["bytes"]:
        found.append(f"{reader.bytes} bytes (expected {entry['bytes']})")
    if reader.digest is not None and reader.digest.hexdigest() != entry["sha256"]:
        found.append(f"sha256 {reader.digest.hexdigest()} (expected {entry['sha256']})")
    if samples is not None and samples != entry["samples"]:
        found.append(f"{samples} samples (expected {entry['samples']})")
    return f"{path}: does not match its index entry: " + ", ".join(found) if found else ""


def read_shard(path: Path, entry: dict[str, Any], verify: Verify = "size") -> Generator[dict[str, Any], None,
                                                                                        ShardFacts]:
    """The samples of one shard (members by name, plus `__key__` and `__url__`), checked against `entry`: size
    before the first sample, sample count (and with `verify="sha256"` the sha256) once the shard is read; returns
    what the shard was found to be (its sha256 "" unless verified). An error while reading a shard that turns out not
    to match is reported as the mismatch."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    path = Path(path)
    check_size(path, entry)
    with path.open("rb") as stream:
        reader = _CountingReader(stream, sha256=verify == "sha256")
        samples = 0
        try:
            for sample in group_by_keys(tar_file_expander([{"url": str(path), "stream": reader}])):
                samples += 1
                yield sample
        except Exception as e:
            reader.drain()
            if problem := _mismatches(path, entry, reader, None):
                raise ShardIntegrityError(problem) from e
            raise
        reader.drain()
        if problem := _mismatches(path, entry, reader, samples):
            raise ShardIntegrityError(problem)
    return ShardFacts(path.name, samples, reader.bytes, reader.digest.hexdigest() if reader.digest else "")


def verify_split(shards_root: Path, split: str, verify: Verify = "sha256") -> list[ShardFacts]:
    """Check every shard of `split` against the index (`size`: sizes only, no reading; `sha256`: the whole bytes and
    the sample counts) and return what each shard is."""
    facts = []
    for path, entry in split_shards(shards_root, split):
        if verify == "sha256":
            facts.append(_consume(read_shard(path, entry, "sha256")))
        else:
            check_size(path, entry)
            facts.append(ShardFacts(entry["name"], entry["samples"], path.stat().st_size, ""))
    return facts


def _consume(shard: Generator[dict[str, Any], None, ShardFacts]) -> ShardFacts:
    while True:
        try:
            next(shard)
        except StopIteration as done:
            return done.value
