"""PairModel: one encoder and one head per modality; encodes whatever modalities a batch carries."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from multigeometry.config import ModelConfig, Params
from multigeometry.geometry.cone import ConeParams
from multigeometry.geometry.mixture import MixtureParams
from multigeometry.models.encoders import build_encoder
from multigeometry.models.heads import make_head

Distribution = MixtureParams | ConeParams


class PairModel(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        modalities: Iterable[str],
        *,
        feature_dims: dict[str, int] | None = None,
        vocab_size: int | None = None,
        n_mels: int = 80,
        audio_normalization: dict | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.modalities = sorted(set(modalities))
        feature_dims = feature_dims or {}
        self.encoders = nn.ModuleDict(
            {
                m: build_encoder(
                    m,
                    getattr(cfg, m),
                    feature_dim=feature_dims.get(m),
                    vocab_size=vocab_size,
                    n_mels=n_mels,
                    audio_normalization=audio_normalization,
                )
                for m in self.modalities
            }
        )
        self.heads = nn.ModuleDict({m: make_head(self.encoders[m].out_dim, cfg) for m in self.modalities})

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
            vocab_size=vocab_size,
            n_mels=int(features.get("audio.feat", {}).get("n_mels", params.audio.n_mels)),
            audio_normalization=index.get("normalization", {}).get("audio.feat"),
        )

    def encode(self, batch: dict[str, Any], modality: str) -> Distribution:
        return self.heads[modality](self.encoders[modality](batch))

    def forward(self, batch: dict[str, Any], modalities: Iterable[str] | None = None) -> dict[str, Distribution]:
        wanted = self.modalities if modalities is None else modalities
        return {m: self.encode(batch, m) for m in wanted}

    def encode_hierarchy(self, batch: dict[str, Any]) -> Distribution | None:
        """The distributions of the batch's more general descriptions, through the text encoder."""
        if "text" not in self.encoders or not len(batch.get("hierarchy_owner", ())):
            return None
        if "hierarchy.emb" in batch:
            sub = {"text.emb": batch["hierarchy.emb"]}
        elif "hierarchy_text" in batch:
            sub = {"text": batch["hierarchy_text"]}
        else:
            return None
        return self.encode(sub, "text")
