"""Collation shared by both dataset classes: one batch dict for a `DatasetPairConfig`."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from multigeometry.config import DatasetPairConfig, LoaderConfig


def group_key(group_id: str) -> int:
    """A 63-bit id for a group, the same on every rank, so gathered batches still know who is whose positive."""
    return int.from_bytes(hashlib.blake2b(group_id.encode(), digest_size=8).digest(), "big") >> 1


def load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    from multigeometry.models.catalogue import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(name, "loader.tokenizer"))


class Collator:
    """Stacks a list of sample dicts into a batch.

    The batch holds every modality the pairs name: images (B,3,S,S), audio log-mels padded to the longest (B,M,T)
    with `audio_lengths`, text and code tokenised (`input_ids`, `attention_mask`) with their raw strings, pretrained
    features `<modality>.emb` (B,D; a clip's sampled frames (B,T,D)), a `present` mask per modality, the rows'
    temporal contrasts (`temporal_contrasts_*`, as the hierarchy's texts), `group_ids` (B,) and the `pairs` to score
    with their
    weights — a pair is kept when at least two samples carry both its modalities. Text is tokenised only with
    `tokenize` (default: whenever `loader.tokenizer` names one; the loaders pass `data.reads.needs_tokens`).
    """

    def __init__(self, pairs: DatasetPairConfig, loader: LoaderConfig, tokenizer: Any | None = None,
                 tokenize: bool | None = None) -> None:
        self.pairs = pairs
        self.loader = loader
        self._tokenizer = tokenizer
        self.tokenize = bool(loader.tokenizer) if tokenize is None else tokenize and bool(loader.tokenizer)
        self.modalities = sorted({m for p in pairs.pairs for m in (p.a, p.b)})

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None and self.loader.tokenizer:
            self._tokenizer = load_tokenizer(self.loader.tokenizer)
        return self._tokenizer

    def _tokenize(self, texts: list[str]) -> dict[str, Any]:
        tokens = self.tokenizer(
            texts,
            padding="max_length" if self.loader.padding == "max_length" else "longest",
            truncation=True,
            max_length=self.loader.max_tokens,
            return_tensors="pt",
        )
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

    def _text_lists(self, examples: Sequence[dict[str, Any]], batch: dict[str, Any], column: str) -> list[int]:
        """Every row's texts of `column` ("hierarchy" or "parts"), flattened: `<column>_owner[m]` is the row of entry
        m, `<column>_raw` the texts, `<column>.emb` their shard features and `<column>_text` their tokens. Returns
        each row's first entry."""
        import torch

        owners, texts, features, starts = [], [], [], []
        for i, e in enumerate(examples):
            starts.append(len(owners))
            owners.extend([i] * len(e.get(column, ())))
            texts.extend(e.get(column, ()))
            if f"{column}.emb" in e:
                features.append(e[f"{column}.emb"])
        batch[f"{column}_owner"] = torch.tensor(owners, dtype=torch.long)
        batch[f"{column}_raw"] = texts
        batch[f"{column}_key"] = torch.tensor([group_key(t) for t in texts], dtype=torch.long)  # same text, same key
        if features and sum(f.shape[0] for f in features) == len(texts):
            batch[f"{column}.emb"] = torch.cat(features)
        if texts and self.tokenize:
            batch[f"{column}_text"] = self._tokenize(texts)
        return starts

    def _hierarchy(self, examples: Sequence[dict[str, Any]], batch: dict[str, Any]) -> None:
        """The more general descriptions (`hierarchy_*`), with `hierarchy_parent[m]` the index of the next more
        general description of the same row (−1 for the most general); the compounds' parts (`parts_*`), with
        `compound_index[i]` the hierarchy entry that row i's parts compose (−1: none) and `compound_group[i]` a key
        of its concept set, equal for rows whose compounds mean the same."""
        import torch

        starts = self._text_lists(examples, batch, "hierarchy")
        batch["hierarchy_parent"] = torch.tensor(
            [start + j - 1 if j > 0 else -1 for e, start in zip(examples, starts, strict=True)
             for j in range(len(e["hierarchy"]))],
            dtype=torch.long,
        )
        self._text_lists(examples, batch, "parts")
        compound, groups = [], []
        for e, start in zip(examples, starts, strict=True):
            level = int(e.get("compound_level", -1))
            ok = bool(e.get("parts")) and 0 <= level < len(e["hierarchy"])
            compound.append(start + level if ok else -1)
            concepts = e.get("hierarchy_concepts", [])
            meaning = sorted(concepts[level]) if ok and level < len(concepts) else [e["hierarchy"][level] if ok else ""]
            groups.append(group_key("\x1f".join(meaning)))
        batch["compound_index"] = torch.tensor(compound, dtype=torch.long)
        batch["compound_group"] = torch.tensor(groups, dtype=torch.long)

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        n = len(examples)
        batch: dict[str, Any] = {
            "sample_id": [e["sample_id"] for e in examples],
            "group_id": [e["group_id"] for e in examples],
            "group_ids": torch.tensor([group_key(e["group_id"]) for e in examples], dtype=torch.long),
            "hierarchy": [e["hierarchy"] for e in examples],
            "concepts": [e["concepts"] for e in examples],
            "present": {},
        }
        for modality in self.modalities:
            # a sample carries a modality when it has the raw input or its features (raw ones may not be decoded)
            present = torch.tensor([modality in e or f"{modality}.emb" in e for e in examples], dtype=torch.bool)
            batch["present"][modality] = present
            have = [e for e in examples if modality in e]
            if modality == "image" and have:
                shape = have[0]["image"].shape
                batch["image"] = torch.stack([e["image"] if "image" in e else torch.zeros(shape) for e in examples])
            elif modality == "audio" and have:
                mels = have[0]["audio"].shape[0]
                lengths = [e["audio"].shape[1] if "audio" in e else 0 for e in examples]
                padded = torch.zeros(n, mels, max(lengths))
                for i, e in enumerate(examples):
                    if "audio" in e:
                        padded[i, :, : lengths[i]] = e["audio"]
                batch["audio"] = padded
                batch["audio_lengths"] = torch.tensor(lengths, dtype=torch.long)
            elif modality in ("text", "code") and have:
                raw = [e.get(modality, "") for e in examples]
                batch[f"{modality}_raw"] = raw
                if self.tokenize:
                    batch[modality] = self._tokenize(raw)
            emb = f"{modality}.emb"
            if any(emb in e for e in examples):
                shape = next(e[emb].shape for e in examples if emb in e)
                batch[emb] = torch.stack([e[emb] if emb in e else torch.zeros(shape) for e in examples])
        self._hierarchy(examples, batch)
        self._text_lists(examples, batch, "temporal_contrasts")
        batch["pairs"] = [
            (p.a, p.b, p.weight)
            for p in self.pairs.pairs
            if int((batch["present"][p.a] & batch["present"][p.b]).sum()) >= 2
        ]
        return batch


def to_device(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    """The batch with every tensor (nested dicts included) moved to `device`; other values as they are."""
    from torch import Tensor

    def move(value: Any) -> Any:
        if isinstance(value, Tensor):
            return value.to(device, non_blocking=True)
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        return value

    return move(batch)
