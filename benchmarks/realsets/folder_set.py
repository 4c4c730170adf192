"""Writing one real set as a `folder:` dataset: `pairs.jsonl`, the media files, and `SOURCE.json` (where the pairs
came from and what was left out, with reasons and counts). Written into a temporary folder, renamed when complete."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPLIT_FRACTIONS = (("train", 0.6), ("val", 0.1), ("test", 0.3))


def group_key(text: str) -> str:
    """Texts that differ only in case, punctuation and spacing describe the same thing: one group."""
    return re.sub(r"[^0-9a-z]+", " ", text.lower()).strip()


def split_for(group_id: str, salt: str) -> str:
    """A fixed split per group (train 0.6, val 0.1, test 0.3), independent of any training seed."""
    u = int.from_bytes(hashlib.sha256(f"{salt}\x1f{group_id}".encode()).digest()[:8], "big") / 2**64
    edge = 0.0
    for name, fraction in SPLIT_FRACTIONS:
        edge += fraction
        if u < edge:
            return name
    return SPLIT_FRACTIONS[-1][0]


@dataclass
class SetBuilder:
    """Collects a set's rows and media, then writes them."""

    name: str
    sources: list[dict[str, str]]
    rows: list[dict[str, Any]] = field(default_factory=list)
    media: dict[str, Path] = field(default_factory=dict)  # relative path in the set -> file to copy
    skipped: Counter = field(default_factory=Counter)

    def add(self, sample_id: str, text: str, *, group: str | None = None, hierarchy: list[str] | None = None,
            **media: tuple[str, Path]) -> None:
        """A row: `media` maps a modality to (relative path in the set, source file)."""
        group_id = group or group_key(text)
        row: dict[str, Any] = {"sample_id": sample_id, "group_id": group_id, "split": split_for(group_id, self.name),
                               "text": text}
        for modality, (relative, source) in sorted(media.items()):
            if relative in self.media and self.media[relative] != source:
                raise ValueError(f"{self.name}: two files want the name {relative}: {self.media[relative]}, {source}")
            self.media[relative] = source
            row[modality] = relative
        if hierarchy:
            row["hierarchy"] = hierarchy
        self.rows.append(row)

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1

    def write(self, out: Path) -> Path:
        if not self.rows:
            raise ValueError(f"{self.name}: no rows")
        ids = Counter(r["sample_id"] for r in self.rows)
        duplicated = sorted(k for k, n in ids.items() if n > 1)
        if duplicated:
            raise ValueError(f"{self.name}: duplicate sample ids {duplicated[:5]}")
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
        try:
            for relative, source in sorted(self.media.items()):
                target = staging / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
            rows = sorted(self.rows, key=lambda r: r["sample_id"])
            (staging / "pairs.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            splits = Counter(r["split"] for r in rows)
            summary = {
                "name": self.name,
                "sources": self.sources,
                "rows": len(rows),
                "groups": len({r["group_id"] for r in rows}),
                "splits": dict(sorted(splits.items())),
                "with_hierarchy": sum(1 for r in rows if r.get("hierarchy")),
                "skipped": dict(sorted(self.skipped.items())),
            }
            (staging / "SOURCE.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
            if out.exists():
                shutil.rmtree(out)
            staging.rename(out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return out
