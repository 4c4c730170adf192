"""The training objective over a batch of several pairings: each configured pair (a, b, weight) scored by
MainCriterion on the rows that carry both modalities, plus the cone entailment term where text has a hierarchy and
the composition term where rows carry the parts of a compound description.

`TrainModule` bundles the model and the criterion (the learnable temperature) so that DDP wraps, syncs and averages
both; its forward computes the whole loss, so every used parameter is reached through DDP's forward.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor, nn

from multigeometry.data.batch import Batch
from multigeometry.geometry.distribution import Distribution, concat, select_rows
from multigeometry.losses import Hierarchy, MainCriterion
from multigeometry.models.pair_model import PairModel


def hierarchy_for_rows(batch: Batch, general: Distribution, keep: Tensor, side: str) -> Hierarchy | None:
    """The batch's hierarchy restricted to the rows `keep` (a bool mask), re-indexed to the selected rows."""
    owner, parent = batch.general.owner.to(keep.device), batch.hierarchy_parent.to(keep.device)
    if parent.numel() not in (0, owner.numel()):
        raise ValueError(f"the batch's hierarchy_parent has {parent.numel()} entries for {owner.numel()} general "
                         "descriptions (none, or one each)")
    kept_entries = keep[owner]
    if not bool(kept_entries.any()):
        return None
    new_row = torch.cumsum(keep.long(), 0) - 1
    new_entry = torch.cumsum(kept_entries.long(), 0) - 1
    idx = torch.nonzero(kept_entries).squeeze(1)
    remapped = None  # no parents given: every description is its row's most general
    if parent.numel():
        old_parent = parent[idx]
        remapped = torch.where(old_parent >= 0, new_entry[old_parent.clamp_min(0)], old_parent)
    return Hierarchy(
        general=select_rows(general, idx),
        owner=new_row[owner[idx]],
        parent=remapped,
        caption_side=side,  # type: ignore[arg-type]
        key=batch.general.key.to(keep.device)[idx],
    )


def mix_features(batch: Batch, modalities: list[str], share: float,
                 generator: torch.Generator | None = None) -> tuple[Batch, tuple[Tensor, Tensor]] | None:
    """PCME++'s mixed-sample augmentation on shard features (`loss.mixup`): `share` of the rows get, for every
    non-text modality of the pairs, λ of their own features and 1 − λ of a partner row's (λ ~ U(0.5, 1)). Returns
    the batch with mixed features and (λ, partner) for every row (λ = 1 where unmixed); None where some row lacks a
    modality or its features, or the batch is too small."""
    mixed_modalities = [m for m in modalities if m not in ("text", "code") and f"{m}.emb" in batch.inputs]
    n = len(batch)
    if n < 2 or not mixed_modalities or not all(bool(batch.present[m].all()) for m in modalities):
        return None
    device = batch.group_ids.device
    pick = torch.rand(n, generator=generator) < share
    lam = torch.where(pick, 0.5 + 0.5 * torch.rand(n, generator=generator), torch.ones(n))
    partner = torch.randperm(n, generator=generator)
    inputs = dict(batch.inputs)
    for m in mixed_modalities:
        x = inputs[f"{m}.emb"]
        w = lam.to(x.device, x.dtype).view(-1, *([1] * (x.dim() - 1)))  # (B, D) features, or a clip's (B, T, D)
        inputs[f"{m}.emb"] = w * x + (1 - w) * x[partner.to(x.device)]
    return dataclasses.replace(batch, inputs=inputs), (lam.to(device), partner.to(device))


class TrainModule(nn.Module):
    def __init__(self, model: PairModel, criterion: MainCriterion) -> None:
        super().__init__()
        self.model = model
        self.criterion = criterion

    @torch.no_grad()
    def features(self, batch: Batch) -> dict[str, Distribution]:
        return self.model(batch, batch.modalities)

    def forward(
        self,
        batch: Batch,
        cached: list[dict[str, Distribution]] | None = None,
        cached_batches: list[Batch] | None = None,
        slot: int = 0,
    ) -> dict[str, Tensor]:
        """The weighted loss of the batch. With `cached` (the other micro-batches' features, computed without
        gradients), this batch's fresh features replace slot `slot` and the contrastive terms see the whole
        accumulated batch, as OpenCLIP's accum-freq does."""
        soft_rows = None
        if self.criterion.cfg.mixup > 0 and self.training:
            if cached is not None:
                raise ValueError("loss.mixup mixes within one batch: use train.accum_freq: 1")
            mixed = mix_features(batch, batch.modalities, self.criterion.cfg.mixup)
            if mixed is not None:
                batch, soft_rows = mixed
        dists = self.model(batch, batch.modalities)
        general = self.model.encode_hierarchy(batch) if self.criterion.uses_hierarchy else None
        batches = [batch] if cached is None else cached_batches
        all_dists = [dists] if cached is None else [dists if i == slot else c for i, c in enumerate(cached)]
        terms = self._pair_losses(batch, batches, all_dists, general, slot if cached is not None else 0, soft_rows)
        weight = self.criterion.cfg.composition_weight if self.model.composer is not None else 0.0
        if weight > 0 and (not self.training or self.criterion.step % self.model.cfg.composer.every == 0):
            composition = self._composition(batch, general)
            if composition is not None:
                # local to this micro-batch: each pass adds its share, so the passes sum to the batch mean
                share = 1 if cached is None else len(cached)
                terms["composition"] = composition.detach()
                terms["loss"] = terms["loss"] + weight * composition / share
        if self.criterion.cfg.temporal_weight > 0:
            from multigeometry.training.temporal_term import temporal_term

            temporal = temporal_term(self.model, self.criterion, batch)
            if temporal is not None:  # local to this micro-batch, as the composition term
                share = 1 if cached is None else len(cached)
                terms["temporal"] = temporal.detach()
                terms["loss"] = terms["loss"] + self.criterion.cfg.temporal_weight * temporal / share
        return terms

    def _composition(self, batch: Batch, general: Distribution | None) -> Tensor | None:
        """The composition term: compose(parts) of the rows with parts against their compound descriptions."""
        # a random subset of the compounds a step (`model.composer.max_compounds`): the term's cost is quadratic in them
        composed = self.model.compose(batch, self.model.cfg.composer.max_compounds if self.training else 0)
        if composed is None:
            return None
        dist, rows = composed
        if rows.numel() < 2:
            return None
        entries = batch.compound_index[rows]
        # the compounds' own descriptions: from the hierarchy when the entailment term encoded it, else only them
        if general is None:
            compound = self.model.encode_texts(batch.general, entries)
        else:
            compound = select_rows(general, entries)
        if compound is None:
            return None
        return self.criterion.composition(dist, compound, batch.compound_group[rows])

    def _pair_losses(
        self,
        batch: Batch,
        batches: list[Batch] | None,
        all_dists: list[dict[str, Distribution]],
        general: Distribution | None,
        slot: int,
        soft_rows: tuple[Tensor, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        assert batches is not None
        device = batch.group_ids.device
        terms: dict[str, Tensor] = {}
        total = torch.zeros((), device=device)
        for a, b, weight in batch.pairs:
            masks = [(bt.present[a] & bt.present[b]).to(device) for bt in batches]
            rows = [torch.nonzero(m).squeeze(1) for m in masks]
            side_a = concat([select_rows(d[a], r) for d, r in zip(all_dists, rows, strict=True)])
            side_b = concat([select_rows(d[b], r) for d, r in zip(all_dists, rows, strict=True)])
            groups = torch.cat([bt.group_ids.to(device)[r] for bt, r in zip(batches, rows, strict=True)])
            hierarchy = None
            if general is not None and "text" in (a, b) and len(batch.general):
                own = hierarchy_for_rows(batch, general, masks[slot], "b" if b == "text" else "a")
                if own is not None:  # the hierarchy is local to this micro-batch: offset its owners into the concat
                    offset = sum(int(m.sum()) for m in masks[:slot])
                    local = torch.arange(offset, offset + int(masks[slot].sum()), device=device)
                    hierarchy = Hierarchy(own.general, own.owner + offset, own.parent, own.caption_side, own.key,
                                          local if len(batches) > 1 else None)
            out = self.criterion(side_a, side_b, groups, hierarchy, soft_rows)
            total = total + weight * out["loss"]
            for name, value in out.items():
                if name != "loss":
                    terms[f"{a}-{b}/{name}"] = value.detach()
        terms["loss"] = total
        return terms


def accumulated_backward(
    module: TrainModule,
    batches: list[Batch],
    wrapper: nn.Module | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> dict[str, Tensor]:
    """Backward of the loss over the union of `batches`, one micro-batch's graph at a time (OpenCLIP's accum-freq):
    the features of every micro-batch are computed once without gradients; then each micro-batch is recomputed with
    gradients and the loss is taken over the union with the others' cached features. Each encoder parameter thus
    gets the whole-batch gradient once, summed over micro-batches; the criterion's own parameters (the temperature)
    see the whole loss in every pass, so their gradient is averaged over the passes. `wrapper` is the DDP module,
    whose gradient sync runs on the last pass only."""
    run = wrapper or module
    if len(batches) == 1:
        with autocast():
            terms = run(batches[0])
        terms["loss"].backward()
        return terms
    with autocast():
        cached = [module.features(b) for b in batches]
    for slot, batch in enumerate(batches):
        last = slot == len(batches) - 1
        sync = wrapper.no_sync() if wrapper is not None and not last else contextlib.nullcontext()
        with sync, autocast():
            terms = run(batch, cached, batches, slot)
        terms["loss"].backward()
    for p in module.criterion.parameters():
        if p.grad is not None:
            p.grad /= len(batches)
    return terms
