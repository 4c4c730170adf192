"""Embed one split of the shards with a trained model: every sample's distribution in each modality it carries, its
group, its hierarchy, and the distinct general descriptions of the split (each embedded once, with its levels)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from multigeometry.data.batch import Batch
from multigeometry.data.collate import Collator
from multigeometry.data.reads import needs_tokens
from multigeometry.data.shard_index import Verify
from multigeometry.evaluation.temporal import TemporalCollector, TemporalSet
from multigeometry.geometry.distribution import Distribution, concat, device_of, family_of, select_rows
from multigeometry.inference import TrainedModel

log = logging.getLogger(__name__)


@dataclass
class Descriptions:
    """The split's distinct general descriptions: text, the levels at which they occur (0 = most general), their
    atoms (concepts, or the text itself) and their distributions through the text encoder."""

    texts: list[str]
    levels: list[set[int]]
    atoms: list[list[str]]
    dists: Distribution

    def at_level(self, level: int) -> Tensor:
        return torch.tensor([i for i, lv in enumerate(self.levels) if level in lv], dtype=torch.long)

    @property
    def n_levels(self) -> int:
        return 1 + max((max(lv) for lv in self.levels if lv), default=-1)


@dataclass
class Compositions:
    """The split's compounds: for each row whose parts compose one of its descriptions, compose(parts) through the
    model's composer, the distribution of the compound's own caption, the caption and the compound's atoms (its
    concept set, or the caption itself where the split has no concepts); for cones also the closed-form composition
    of the parts' cones (`compose_cones`: the largest cap around their mean direction inside all)."""

    composed: Distribution
    captions: Distribution
    texts: list[str]
    atoms: list[list[str]]
    closed_form: Distribution | None = None


@dataclass
class SplitEmbeddings:
    """Rows are the split's samples in reading order. `rows[m]` lists the rows that carry modality m, and `dists[m]`
    holds their distributions in that order."""

    split: str
    sample_ids: list[str]
    group_ids: Tensor  # (N,) 63-bit group keys
    hierarchy: list[list[str]]
    atoms: list[list[str]]  # each row's atoms: its concepts, or else its hierarchy's descriptions
    ambiguity: list[dict] = field(default_factory=list)  # each row's injected ambiguity ({} where none is recorded)
    rows: dict[str, Tensor] = field(default_factory=dict)
    dists: dict[str, Distribution] = field(default_factory=dict)
    texts: dict[str, list[str]] = field(default_factory=dict)  # raw text and code of every row ("" where absent)
    descriptions: Descriptions | None = None
    compositions: Compositions | None = None
    temporal: TemporalSet | None = None  # the temporal check's rows (clips, captions, contrasts)

    def groups(self, modality: str) -> Tensor:
        return self.group_ids[self.rows[modality]]


class _EvalCollate:
    """The shared collator, plus the per-row concept sets of the hierarchy, which the batch does not carry."""

    def __init__(self, collator: Collator) -> None:
        self.collator = collator

    def __call__(self, examples: Sequence[dict[str, Any]]) -> Batch:
        batch = self.collator(examples)
        batch.hierarchy_concepts = [e.get("hierarchy_concepts", []) for e in examples]
        batch.ambiguity = [e.get("ambiguity", {}) for e in examples]
        return batch


def eval_loader(trained: TrainedModel, shards_root: Path, split: str, batch_size: int,
                verify: Verify = "sha256") -> Any:
    """Every sample of `split` once, in shard order, untransformed by augmentation, each shard checked against the
    index (`verify`)."""
    import webdataset as wds

    from multigeometry.data.datasets import IterableStylePairDataset

    params = trained.params
    dataset = IterableStylePairDataset(shards_root, split, params, train=False, resampled=False, verify=verify)
    workers = min(params.loader.workers, len(dataset.urls))
    collate = _EvalCollate(Collator(params.pairs, params.loader, trained.tokenizer, tokenize=needs_tokens(params)))
    loader = wds.WebLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
        multiprocessing_context="forkserver" if workers > 0 else None,
        shuffle=False,
    )
    return loader, dataset.num_samples


@torch.no_grad()
def embed_split(trained: TrainedModel, shards_root: Path, split: str, batch_size: int = 256,
                verify: Verify = "sha256") -> SplitEmbeddings:
    """Embed every sample of `split` in every modality of the model, and the split's distinct descriptions. Every
    shard is checked against the index as it is read (`verify`: size and sample count, and by default sha256)."""
    device = next(trained.model.parameters()).device
    loader, total = eval_loader(trained, shards_root, split, batch_size, verify)
    modalities = trained.modalities
    sample_ids: list[str] = []
    groups: list[Tensor] = []
    hierarchy: list[list[str]] = []
    ambiguity: list[dict] = []
    atoms: list[list[str]] = []
    parts: dict[str, list[Distribution]] = {m: [] for m in modalities}
    rows: dict[str, list[Tensor]] = {m: [] for m in modalities}
    texts: dict[str, list[str]] = {m: [] for m in modalities if m in ("text", "code")}
    desc_index: dict[str, int] = {}
    desc_levels: list[set[int]] = []
    desc_atoms: list[list[str]] = []
    desc_parts: list[Distribution] = []
    compounds = _CompoundCollector()
    temporal = TemporalCollector() if {"video", "text"} <= set(modalities) else None
    use_concepts = True
    progress = tqdm(total=total, desc=f"embed {split}", unit="sample", disable=None)
    for batch in loader:
        offset = len(sample_ids)
        n = len(batch)
        sample_ids.extend(batch.sample_id)
        groups.append(batch.group_ids)
        hierarchy.extend(batch.hierarchy)
        ambiguity.extend(batch.ambiguity)
        use_concepts = use_concepts and all(
            c and len(hc) == len(h) for c, hc, h in zip(batch.concepts, batch.hierarchy_concepts, batch.hierarchy,
                                                        strict=True)
        )
        atoms.extend(c if c else list(h) for c, h in zip(batch.concepts, batch.hierarchy, strict=True))
        for m in texts:
            texts[m].extend(batch.raw.get(m, [""] * n))
        on_device = batch.to(device)
        for m in modalities:
            present = batch.present[m]
            if not bool(present.any()):
                continue
            keep = torch.nonzero(present).squeeze(1)
            dist = trained.model.encode(on_device.inputs, m)
            parts[m].append(select_rows(dist, keep.to(device)))
            rows[m].append(keep + offset)
        general = trained.model.encode_hierarchy(on_device)
        if general is not None:
            _collect_descriptions(batch, general, desc_index, desc_levels, desc_atoms, desc_parts)
            compounds.add(trained, batch, on_device, general)
        if temporal is not None:
            temporal.add(trained.model, batch, on_device)
        progress.update(n)
    progress.close()
    if not sample_ids:
        raise ValueError(f"{shards_root}: split {split!r} has no samples")
    out = SplitEmbeddings(
        split=split,
        sample_ids=sample_ids,
        group_ids=torch.cat(groups),
        hierarchy=hierarchy,
        atoms=atoms if use_concepts else [list(h) for h in hierarchy],
        ambiguity=ambiguity,
        texts=texts,
    )
    for m in modalities:
        if parts[m]:
            out.dists[m] = concat(parts[m])
            out.rows[m] = torch.cat(rows[m])
    if desc_parts:
        texts_in_order = list(desc_index)
        out.descriptions = Descriptions(
            texts=texts_in_order,
            levels=desc_levels,
            atoms=desc_atoms if use_concepts else [[t] for t in texts_in_order],
            dists=concat(desc_parts),
        )
    out.compositions = compounds.result(use_concepts)
    out.temporal = temporal.result() if temporal is not None else None
    log.info(
        "embedded %d samples of %s (%s), %d distinct descriptions",
        len(sample_ids), split, ", ".join(f"{m}: {len(r)}" for m, r in out.rows.items()),
        len(out.descriptions.texts) if out.descriptions else 0,
    )
    return out


def _collect_descriptions(
    batch: Batch,
    general: Distribution,
    index: dict[str, int],
    levels: list[set[int]],
    atoms: list[list[str]],
    parts: list[Distribution],
) -> None:
    """Add the batch's descriptions not seen before (their first embedding), and the level of every occurrence."""
    owner = batch.general.owner.tolist()
    new: list[int] = []
    for m, text in enumerate(batch.general.raw):
        row = owner[m]
        level = batch.hierarchy[row].index(text)
        if text not in index:
            index[text] = len(index)
            levels.append(set())
            concepts = batch.hierarchy_concepts[row]
            atoms.append(list(concepts[level]) if level < len(concepts) else [text])
            new.append(m)
        levels[index[text]].add(level)
    if new:
        parts.append(select_rows(general, torch.tensor(new, device=device_of(general))))


class _CompoundCollector:
    def __init__(self) -> None:
        self.composed: list[Distribution] = []
        self.captions: list[Distribution] = []
        self.closed_form: list[Distribution] = []
        self.texts: list[str] = []
        self.concepts: list[list[str]] = []

    def add(
        self, trained: TrainedModel, batch: Batch, on_device: Batch, general: Distribution
    ) -> None:
        model = trained.model
        found = model.compound_parts(on_device) if model.composer is not None else None
        if found is None:
            return
        parts, owner, rows = found  # encoded once, for the learned composition and the closed form alike
        index = on_device.compound_index[rows]
        self.composed.append(model.composer(parts, owner, rows.numel()))
        self.captions.append(select_rows(general, index))
        closed_form = family_of(parts).closed_form_compose
        if closed_form is not None:
            self.closed_form.append(closed_form(parts, owner, rows.numel()))
        for row, entry in zip(rows.tolist(), index.tolist(), strict=True):
            text = batch.general.raw[entry]
            level = batch.hierarchy[row].index(text)
            concepts = batch.hierarchy_concepts[row]
            self.texts.append(text)
            self.concepts.append(list(concepts[level]) if level < len(concepts) else [])

    def result(self, use_concepts: bool) -> Compositions | None:
        if not self.composed:
            return None
        by_concepts = use_concepts and all(self.concepts)
        return Compositions(
            composed=concat(self.composed),
            captions=concat(self.captions),
            texts=self.texts,
            atoms=self.concepts if by_concepts else [[t] for t in self.texts],
            closed_form=concat(self.closed_form) if self.closed_form else None,
        )

