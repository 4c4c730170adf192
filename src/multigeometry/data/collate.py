"""Collation shared by both dataset classes: one typed `Batch` for a `DatasetPairConfig`."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from multigeometry.config import DatasetPairConfig, LoaderConfig
from multigeometry.data.batch import Batch, Texts


def group_key(group_id: str) -> int:
    """A 63-bit id for a group, the same on every rank, so gathered batches still know who is whose positive."""
    return int.from_bytes(hashlib.blake2b(group_id.encode(), digest_size=8).digest(), "big") >> 1


def load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    from multigeometry.models.catalogue import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(name, "loader.tokenizer"))


class Collator:
    """Stacks a list of sample dicts into a `Batch` (data/batch.py).

    The encoders' inputs: images (B,3,S,S), audio log-mels padded to the longest (B,M,T) with `audio_lengths`, clips'
    decoded frames (B,T,3,S,S; for a raw-frame video backbone), text and code tokens (`input_ids`,
    `attention_mask`), pretrained features `<modality>.emb` (B,D; a clip's sampled frames (B,T,D)); beside them the
    raw strings, a `present` mask per modality, the hierarchy's, parts' and temporal contrasts' texts, `group_ids`
    (B,) and the `pairs` to score with their weights — a pair is kept when at least two samples carry both its
    modalities. Text (and the flattened texts) is tokenised only with `tokenize` (default: whenever
    `loader.tokenizer` names one; the loaders pass `data.reads.needs_tokens`, true only where a text or code encoder
    reads tokens).
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

    def _texts(self, examples: Sequence[dict[str, Any]], column: str) -> tuple[Texts, list[int]]:
        """Every row's texts of `column` ("hierarchy", "parts", "temporal_contrasts"), flattened, with their shard
        features (`<column>.emb`) when every entry has them and their tokens when tokenising; and each row's first
        entry."""
        import torch

        owners, texts, features, starts = [], [], [], []
        for i, e in enumerate(examples):
            starts.append(len(owners))
            owners.extend([i] * len(e.get(column, ())))
            texts.extend(e.get(column, ()))
            if f"{column}.emb" in e:
                features.append(e[f"{column}.emb"])
        out = Texts(
            owner=torch.tensor(owners, dtype=torch.long),
            raw=texts,
            key=torch.tensor([group_key(t) for t in texts], dtype=torch.long),  # same text, same key
            features=torch.cat(features) if features and sum(f.shape[0] for f in features) == len(texts) else None,
            tokens=self._tokenize(texts) if texts and self.tokenize else None,
        )
        return out, starts

    def _compounds(self, examples: Sequence[dict[str, Any]], starts: list[int]) -> tuple[Any, Any]:
        """`compound_index[i]`, the hierarchy entry that row i's parts compose (−1: none), and `compound_group[i]`, a
        key of its concept set, equal for rows whose compounds mean the same."""
        import torch

        compound, groups = [], []
        for e, start in zip(examples, starts, strict=True):
            level = int(e.get("compound_level", -1))
            ok = bool(e.get("parts")) and 0 <= level < len(e["hierarchy"])
            compound.append(start + level if ok else -1)
            concepts = e.get("hierarchy_concepts", [])
            meaning = sorted(concepts[level]) if ok and level < len(concepts) else [e["hierarchy"][level] if ok else ""]
            groups.append(group_key("\x1f".join(meaning)))
        return torch.tensor(compound, dtype=torch.long), torch.tensor(groups, dtype=torch.long)

    def _inputs(self, examples: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], dict[str, list]]:
        """The encoders' inputs, the `present` masks and the raw strings of the batch's modalities."""
        import torch

        n = len(examples)
        inputs: dict[str, Any] = {}
        present: dict[str, Any] = {}
        raw: dict[str, list[str]] = {}
        for modality in self.modalities:
            # a sample carries a modality when it has the raw input or its features (raw ones may not be decoded)
            present[modality] = torch.tensor([modality in e or f"{modality}.emb" in e for e in examples],
                                             dtype=torch.bool)
            have = [e for e in examples if modality in e]
            if modality == "image" and have:
                shape = have[0]["image"].shape
                inputs["image"] = torch.stack([e["image"] if "image" in e else torch.zeros(shape) for e in examples])
            elif modality == "audio" and have:
                mels = have[0]["audio"].shape[0]
                lengths = [e["audio"].shape[1] if "audio" in e else 0 for e in examples]
                padded = torch.zeros(n, mels, max(lengths))
                for i, e in enumerate(examples):
                    if "audio" in e:
                        padded[i, :, : lengths[i]] = e["audio"]
                inputs["audio"] = padded
                inputs["audio_lengths"] = torch.tensor(lengths, dtype=torch.long)
            elif modality == "video" and have:  # decoded frames, for a raw-frame backbone
                shape = have[0]["video"].shape
                inputs["video"] = torch.stack([e["video"] if "video" in e else torch.zeros(shape) for e in examples])
            elif modality in ("text", "code") and have:
                raw[modality] = [e.get(modality, "") for e in examples]
                if self.tokenize:
                    inputs[modality] = self._tokenize(raw[modality])
            emb = f"{modality}.emb"
            if any(emb in e for e in examples):
                shape = next(e[emb].shape for e in examples if emb in e)
                inputs[emb] = torch.stack([e[emb] if emb in e else torch.zeros(shape) for e in examples])
        return inputs, present, raw

    def __call__(self, examples: Sequence[dict[str, Any]]) -> Batch:
        import torch

        inputs, present, raw = self._inputs(examples)
        general, starts = self._texts(examples, "hierarchy")
        parent = torch.tensor(
            [start + j - 1 if j > 0 else -1 for e, start in zip(examples, starts, strict=True)
             for j in range(len(e["hierarchy"]))],
            dtype=torch.long,
        )
        parts, _ = self._texts(examples, "parts")
        compound_index, compound_group = self._compounds(examples, starts)
        contrasts, _ = self._texts(examples, "temporal_contrasts")
        return Batch(
            sample_id=[e["sample_id"] for e in examples],
            group_id=[e["group_id"] for e in examples],
            group_ids=torch.tensor([group_key(e["group_id"]) for e in examples], dtype=torch.long),
            hierarchy=[e["hierarchy"] for e in examples],
            concepts=[e["concepts"] for e in examples],
            present=present,
            pairs=[(p.a, p.b, p.weight) for p in self.pairs.pairs
                   if int((present[p.a] & present[p.b]).sum()) >= 2],
            inputs=inputs,
            raw=raw,
            general=general,
            hierarchy_parent=parent,
            parts=parts,
            compound_index=compound_index,
            compound_group=compound_group,
            temporal_contrasts=contrasts,
        )
