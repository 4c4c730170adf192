"""The collated batch, typed: what the collator builds and training, evaluation and the registry read.

The encoders' inputs stay a mapping keyed as the encoders read them (`image`, `audio` with `audio_lengths`, `text`
and `code` tokens, `<modality>.emb` shard features): that is the encoders' own interface, and a batch carries only
the ones its samples have. Everything else is a field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


def to_device(value: Any, device: Any) -> Any:
    """`value` with every tensor in it (in dicts, lists, tuples and dataclasses) moved to `device`."""
    if isinstance(value, Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_device(v, device) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: to_device(getattr(value, f.name), device)
                                             for f in dataclasses.fields(value) if f.init})
    return value


def _no_entries() -> Tensor:
    return torch.zeros(0, dtype=torch.long)


@dataclass
class Texts:
    """Every row's texts of one column (the hierarchy's descriptions, the compounds' parts, the temporal contrasts),
    flattened: `owner[m]` is the row of entry m, `raw` the texts, `key` a key of each text (equal texts, equal keys),
    `features` their shard features (M, D) when every entry has them, `tokens` their tokens when the loader
    tokenises."""

    owner: Tensor
    raw: list[str]
    key: Tensor
    features: Tensor | None = None
    tokens: dict[str, Tensor] | None = None

    def __len__(self) -> int:
        return len(self.owner)

    def text_inputs(self, entries: Tensor | None = None) -> dict[str, Any] | None:
        """What the text encoder reads for these texts (all of them, or `entries`): their shard features when they
        have them, else their tokens; None when they have neither."""
        def pick(t: Tensor) -> Tensor:
            return t if entries is None else t[entries.to(t.device)]

        if self.features is not None:
            return {"text.emb": pick(self.features)}
        if self.tokens is not None:
            return {"text": {k: pick(v) for k, v in self.tokens.items()}}
        return None

    @classmethod
    def empty(cls) -> Texts:
        return cls(_no_entries(), [], _no_entries())


@dataclass
class Batch:
    """B samples collated for the configured pairs.

    `present[m]` (B,) says which rows carry modality m (its raw input or its features); `pairs` are the pairs to
    score, (a, b, weight), those at least two rows carry both sides of; `group_ids` (B,) keys each row's group (the
    same on every rank). `general` holds the more general descriptions of the rows (the hierarchy, flattened), with
    `hierarchy_parent[m]` the entry of the next more general description of the same row (−1 for the most general);
    `parts` the compounds' parts, with `compound_index[i]` the `general` entry that row i's parts compose (−1: none)
    and `compound_group[i]` a key of its concept set (equal for compounds that mean the same); both (B,) as the
    collator builds them, empty where a batch has no compounds.
    """

    group_ids: Tensor
    present: dict[str, Tensor]
    pairs: list[tuple[str, str, float]]
    inputs: dict[str, Any]  # what the encoders read, keyed as they read it
    # the rest defaults to none of it (a batch without ids, raw strings, hierarchy, parts or contrasts)
    sample_id: list[str] = field(default_factory=list)
    group_id: list[str] = field(default_factory=list)
    hierarchy: list[list[str]] = field(default_factory=list)  # each row's descriptions, most general first
    concepts: list[Any] = field(default_factory=list)
    raw: dict[str, list[str]] = field(default_factory=dict)  # the text and code strings
    general: Texts = field(default_factory=Texts.empty)
    hierarchy_parent: Tensor = field(default_factory=_no_entries)
    parts: Texts = field(default_factory=Texts.empty)
    compound_index: Tensor = field(default_factory=_no_entries)
    compound_group: Tensor = field(default_factory=_no_entries)
    temporal_contrasts: Texts = field(default_factory=Texts.empty)
    # evaluation's additions: each row's concept sets per hierarchy level, and its ambiguity record
    hierarchy_concepts: list[Any] = field(default_factory=list)
    ambiguity: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.group_ids)

    @property
    def modalities(self) -> list[str]:
        """The modalities of the pairs to score."""
        return sorted({m for a, b, _w in self.pairs for m in (a, b)})

    def to(self, device: Any) -> Batch:
        return to_device(self, device)
