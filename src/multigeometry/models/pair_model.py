"""PairModel: one encoder and one head per modality; encodes whatever modalities a batch carries, and holds the
similarity its distributions are compared by (`geometry.similarity`), so that whatever scores them (the loss,
evaluation, search) asks the model rather than the loss."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from multigeometry.config import FEATURE_TRUNKS, ModelConfig, Params, ParamsError
from multigeometry.geometry.distribution import Distribution
from multigeometry.geometry.similarity import Similarity
from multigeometry.models.composition import Composer
from multigeometry.models.encoders import build_encoder
from multigeometry.models.heads import make_head

if TYPE_CHECKING:  # models read the collated batch; they do not depend on data/ at run time
    from multigeometry.data.batch import Batch, Texts


class PairModel(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        modalities: Iterable[str],
        *,
        feature_dims: dict[str, int] | None = None,
        feature_stats: dict[str, dict] | None = None,
        vocab_size: int | None = None,
        n_mels: int = 80,
        audio_normalization: dict | None = None,
        similarity: Similarity | None = None,
        train_samples: int = 0,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        # the geometry's own similarity under `loss.similarity: auto` unless given (`from_index` reads params.loss)
        self.similarity = similarity or Similarity.for_model(cfg.geometry, "auto", cfg.n_components)
        self.modalities = sorted(set(modalities))
        feature_dims = feature_dims or {}
        feature_stats = feature_stats or {}
        anchors = 0
        if cfg.uses_kernel(self.modalities):
            if not train_samples:
                raise ParamsError("model.trunk: kernel takes its anchors from the train split, and there is none")
            anchors = min(cfg.kernel.anchors, train_samples)
        self.encoders = nn.ModuleDict(
            {
                m: build_encoder(
                    m,
                    getattr(cfg, m),
                    trunk=cfg.trunk_of(m),
                    feature_norm=cfg.feature_norm_of(m),
                    feature_stats=feature_stats.get(f"{m}.emb"),
                    feature_dim=feature_dims.get(m),
                    vocab_size=vocab_size,
                    n_mels=n_mels,
                    audio_normalization=audio_normalization,
                    kernel=cfg.kernel,
                    anchors=anchors,
                )
                for m in self.modalities
            }
        )
        self.heads = nn.ModuleDict({m: self._head(m, feature_dims.get(m)) for m in self.modalities})
        # parts are phrases, embedded by the text encoder: composition needs text
        self.composer = Composer(cfg) if cfg.composer.enabled and "text" in self.modalities else None

    def _head(self, modality: str, feature_dim: int | None) -> nn.Module:
        enc = getattr(self.cfg, modality)
        where = f"model.{modality}"
        trunk = self.cfg.trunk_of(modality)
        if enc.init != "random" or enc.lock:
            what = f"{where}.lock" if enc.lock else f"{where}.init: {enc.init}"
            if trunk not in FEATURE_TRUNKS or enc.input != "emb":
                raise ParamsError(f"{what} maps the frozen features themselves: it needs model.trunk (or "
                                  f"{where}.trunk) linear or kernel and {where}.input: emb (got trunk {trunk}, "
                                  f"{where}.input: {enc.input})")
            if feature_dim != self.cfg.embed_dim:
                raise ParamsError(f"{what}: the {modality} features have {feature_dim} dims (features.{modality}."
                                  f"model); model.embed_dim must be the same, got {self.cfg.embed_dim}")
        if trunk in FEATURE_TRUNKS and enc.feature_noise and enc.input != "emb":
            raise ParamsError(f"{where}.feature_noise applies to shard features (input: emb)")
        rest_dim = feature_dim if self._rest_reads_features(modality) else None
        return make_head(self.encoders[modality].out_dim, self.cfg, init=enc.init, lock=enc.lock, rest_dim=rest_dim)

    def _rest_reads_features(self, modality: str) -> bool:
        if self.cfg.uncertainty_input != "features":
            return False
        if not self.encoders[modality].reads_features:
            raise ParamsError(f"model.uncertainty_input: features reads the shards' {modality} features, but "
                              f"model.{modality}.input is raw; use input: emb, or model.uncertainty_input: trunk")
        return True

    @classmethod
    def from_index(cls, params: Params, index: dict[str, Any], vocab_size: int | None = None) -> PairModel:
        """The model for the shards described by `index` (their feature dims, mels and normalisation)."""
        modalities = {m for p in params.pairs.pairs for m in (p.a, p.b)}
        features = index.get("features", {})
        dims = {name.removesuffix(".emb"): int(spec["dim"]) for name, spec in features.items() if name.endswith(".emb")}
        return cls(
            params.model,
            modalities,
            feature_dims=dims,
            feature_stats=index.get("normalization", {}),
            vocab_size=vocab_size,
            n_mels=int(features.get("audio.feat", {}).get("n_mels", params.audio.n_mels)),
            audio_normalization=index.get("normalization", {}).get("audio.feat"),
            similarity=Similarity.from_config(params.model, params.loss),
            train_samples=int(index.get("splits", {}).get("train", {}).get("samples", 0)),
        )

    def encode(self, inputs: Mapping[str, Any], modality: str) -> Distribution:
        """The distributions of `modality` from the encoders' inputs (`Batch.inputs`, or a mapping of them)."""
        encoder = self.encoders[modality]
        if self.cfg.uncertainty_input == "features":
            return self.heads[modality](encoder(inputs), encoder.stored_features(inputs))
        return self.heads[modality](encoder(inputs))

    def forward(self, batch: Batch, modalities: Iterable[str] | None = None) -> dict[str, Distribution]:
        wanted = self.modalities if modalities is None else modalities
        return {m: self.encode(batch.inputs, m) for m in wanted}

    def encode_texts(self, texts: Texts, entries: Tensor | None = None) -> Distribution | None:
        """The distributions of a batch's flattened texts (`Batch.general`: the more general descriptions,
        `Batch.parts`: the compounds' parts, `Batch.temporal_contrasts`), or of the `entries` among them, through the
        text encoder, from their shard features or their tokens."""
        if "text" not in self.encoders or not len(texts):
            return None
        inputs = texts.text_inputs(entries)
        return None if inputs is None else self.encode(inputs, "text")

    def encode_hierarchy(self, batch: Batch) -> Distribution | None:
        return self.encode_texts(batch.general)

    def compound_parts(self, batch: Batch, max_rows: int = 0) -> tuple[Distribution, Tensor, Tensor] | None:
        """The parts of every row whose parts compose a description of its hierarchy (of at most `max_rows` of them,
        drawn at random, when `max_rows` > 0): their distributions, each part's compound (an index into `rows`) and
        those rows (indices into the batch). None where there are none. Only the kept rows' parts are encoded."""
        rows = torch.nonzero(batch.compound_index >= 0).squeeze(1)
        if rows.numel() == 0 or not len(batch.parts):
            return None
        if 0 < max_rows < rows.numel():
            rows = rows[torch.randperm(rows.numel(), device=rows.device)[:max_rows]].sort().values
        device = batch.compound_index.device
        slot = torch.full((len(batch.compound_index),), -1, dtype=torch.long, device=device)
        slot[rows] = torch.arange(rows.numel(), device=device)
        owner = slot[batch.parts.owner.to(device)]
        keep = torch.nonzero(owner >= 0).squeeze(1)
        parts = self.encode_texts(batch.parts, keep)
        if parts is None:
            return None
        return parts, owner[keep], rows

    def compose(self, batch: Batch, max_rows: int = 0) -> tuple[Distribution, Tensor] | None:
        """compose(parts) through the compositional layer for the rows of `compound_parts`: (distributions, rows)."""
        found = self.compound_parts(batch, max_rows) if self.composer is not None else None
        if found is None:
            return None
        parts, owner, rows = found
        return self.composer(parts, owner, rows.numel()), rows
