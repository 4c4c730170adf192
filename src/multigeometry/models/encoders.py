"""Modality encoders: a batch's inputs of one modality -> (B, hidden_dim) features for the embedding heads.

Every encoder is a `Trunk` (see `multigeometry.models.backbones`) followed by a Linear + LayerNorm adapter to
``hidden_dim``. `build_encoder` picks the trunk from ``model.<modality>``:

- ``input: emb``: a `FeatureMLP` over the shards' pretrained features ``<modality>.emb`` (normalised as
  ``model.feature_norm`` says), or with ``model.trunk: linear`` the features themselves: the encoder adds nothing and
  the head is one linear map from the frozen features (a linear probe); or with ``model.trunk: kernel`` their RBF
  similarities to the train split's (`KernelFeatures`), for the modalities whose mean map starts random (but video,
  whose pooled frames change as its temporal encoder trains);
- ``input: raw``, ``backbone: ""``: the modality's small from-scratch network;
- ``input: raw``, ``backbone: <name>``: a pretrained backbone, frozen (``freeze``) but for its last
  ``unfreeze_last_n`` layers; a frozen backbone stays in eval mode (no dropout, fixed BatchNorm statistics) while the
  encoder trains.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch
from torch import nn

from multigeometry.config import (
    FEATURE_TRUNKS,
    MODALITIES,
    EncoderConfig,
    KernelConfig,
    ParamsError,
    VideoEncoderConfig,
)
from multigeometry.models.backbones import (
    FeatureInput,
    FeatureMLP,
    FeatureNorm,
    KernelFeatures,
    ScratchAudioConv,
    ScratchCNN,
    ScratchTokenTransformer,
    Trunk,
    load_backbone,
)
from multigeometry.models.temporal import make_temporal


class ModalityEncoder(nn.Module, abc.ABC):
    """A trunk and its adapter; ``forward(batch)`` reads this modality's keys from the batch dict."""

    modality: ClassVar[str]

    def __init__(self, trunk: Trunk, cfg: EncoderConfig, norm: FeatureNorm | None = None) -> None:
        super().__init__()
        self.trunk = trunk
        self.norm = norm if norm is not None else nn.Identity()
        if isinstance(trunk, FeatureInput | KernelFeatures):  # model.trunk: linear or kernel
            self.adapter: nn.Module = nn.Identity()
            self.out_dim = trunk.width
        else:
            self.adapter = nn.Sequential(nn.Linear(trunk.width, cfg.hidden_dim), nn.LayerNorm(cfg.hidden_dim))
            self.out_dim = cfg.hidden_dim
        self.reads_features = cfg.input == "emb"
        self.frozen = trunk.pretrained and cfg.freeze
        self.unfreeze_last_n = cfg.unfreeze_last_n
        self._check(cfg)
        if self.frozen:
            trunk.requires_grad_(False)
            for block in self._unfrozen_blocks():
                block.requires_grad_(True)
        if cfg.grad_checkpointing:
            trunk.enable_checkpointing()
        self.train()

    @property
    def where(self) -> str:
        return f"model.{self.modality}"

    def _check(self, cfg: EncoderConfig) -> None:
        if cfg.unfreeze_last_n:
            if not self.trunk.pretrained:
                raise ParamsError(
                    f"{self.where}.unfreeze_last_n={cfg.unfreeze_last_n} only applies to a pretrained backbone "
                    f"({self.where}.input: raw with {self.where}.backbone set); set it to 0"
                )
            if not cfg.freeze:
                raise ParamsError(
                    f"{self.where}.unfreeze_last_n={cfg.unfreeze_last_n} needs {self.where}.freeze: true "
                    "(with freeze: false the whole backbone trains already)"
                )
            n_blocks = len(self.trunk.blocks())
            if cfg.unfreeze_last_n > n_blocks:
                raise ParamsError(
                    f"{self.where}.unfreeze_last_n={cfg.unfreeze_last_n}: the backbone has only {n_blocks} layers; "
                    f"allowed: 0..{n_blocks}"
                )
        if cfg.grad_checkpointing and not self.trunk.supports_checkpointing:
            raise ParamsError(
                f"{self.where}.grad_checkpointing: not supported for {cfg.backbone!r} (BatchNorm statistics would be "
                "updated twice); supported for transformers backbones and the from-scratch encoders"
            )

    def _unfrozen_blocks(self) -> list[nn.Module]:
        return self.trunk.blocks()[-self.unfreeze_last_n :] if self.unfreeze_last_n else []

    def train(self, mode: bool = True) -> ModalityEncoder:
        super().train(mode)
        if self.frozen:
            self.trunk.eval()
            for block in self._unfrozen_blocks():
                block.train(mode)
        return self

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        if self.reads_features:
            inputs: tuple[torch.Tensor, ...] = (self.norm(self._get(batch, f"{self.modality}.emb")),)
        else:
            inputs = self.raw_inputs(batch)
        return self.adapter(self.trunk(*inputs))

    @abc.abstractmethod
    def raw_inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """The trunk's arguments for ``input: raw``, read from the batch."""

    def stored_features(self, batch: dict[str, Any]) -> torch.Tensor:
        """The shards' features of this modality as they are stored, before ``model.feature_norm`` and the trunk
        (``model.uncertainty_input: features``); (B, dim)."""
        return self._get(batch, f"{self.modality}.emb")

    def _get(self, batch: dict[str, Any], key: str) -> Any:
        if key not in batch:
            raise KeyError(
                f"{type(self).__name__} ({self.where}.input: {'emb' if self.reads_features else 'raw'}) needs "
                f"batch[{key!r}]; the batch holds {sorted(batch)}"
            )
        return batch[key]


class ImageEncoder(ModalityEncoder):
    modality = "image"

    def raw_inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        return (self._get(batch, "image"),)


class TextEncoder(ModalityEncoder):
    modality = "text"

    def raw_inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        tokens = self._get(batch, self.modality)
        return tokens["input_ids"], tokens["attention_mask"]


class CodeEncoder(TextEncoder):
    modality = "code"


class AudioEncoder(ModalityEncoder):
    modality = "audio"

    def raw_inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        return self._get(batch, "audio"), self._get(batch, "audio_lengths")


class VideoEncoder(ModalityEncoder):
    """A clip's frame features (B, T, D), normalised, pooled over time (`model.video.temporal`: meanP or seqTransf),
    then the trunk and adapter as for a single feature vector; or (`input: raw`) its decoded frames (B, T, 3, S, S)
    through a torchvision video model, which models time itself."""

    modality = "video"

    def __init__(self, trunk: Trunk, cfg: VideoEncoderConfig, norm: FeatureNorm | None,
                 feature_dim: int | None) -> None:
        super().__init__(trunk, cfg, norm)
        self.temporal = None
        if self.reads_features:
            assert feature_dim  # build_trunk refused input: emb without the shards' video.emb
            self.temporal = make_temporal(cfg.temporal, feature_dim, cfg.temporal_width, cfg.temporal_layers,
                                          cfg.temporal_heads, cfg.dropout, cfg.temporal_deltas)

    @property
    def input_key(self) -> str:
        """The batch input it reads: the frame features, or the decoded frames of a raw-frame backbone."""
        return "video.emb" if self.reads_features else "video"

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        if self.temporal is None:  # input: raw, through the base class's backbone path
            return super().forward(batch)
        frames = self._get(batch, "video.emb")
        if frames.dim() != 3:
            raise ValueError(f"{self.where}: batch['video.emb'] must be frame features (batch, frames, dim), got shape "
                             f"{tuple(frames.shape)}")
        return self.adapter(self.trunk(self.temporal(self.norm(frames))))

    def raw_inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        return (self._get(batch, "video"),)

    def stored_features(self, batch: dict[str, Any]) -> torch.Tensor:
        """The clip's frame features averaged over its frames."""
        return self._get(batch, "video.emb").mean(dim=1)


ENCODERS: dict[str, type[ModalityEncoder]] = {
    cls.modality: cls for cls in (ImageEncoder, TextEncoder, AudioEncoder, CodeEncoder)
}


def _scratch_trunk(modality: str, cfg: EncoderConfig, vocab_size: int | None, n_mels: int) -> Trunk:
    where = f"model.{modality}"
    if modality == "image":
        return ScratchCNN(cfg.layers, cfg.dropout)
    if modality == "audio":
        return ScratchAudioConv(n_mels, cfg.hidden_dim, cfg.layers, cfg.dropout)
    if not vocab_size:
        raise ParamsError(
            f"{where}.input: raw with no {where}.backbone builds a token transformer from scratch, which needs the "
            "vocabulary size of loader.tokenizer; none was given"
        )
    return ScratchTokenTransformer(vocab_size, cfg.hidden_dim, cfg.layers, cfg.dropout)


def build_trunk(
    modality: str,
    cfg: EncoderConfig,
    *,
    trunk: str = "mlp",
    feature_dim: int | None = None,
    vocab_size: int | None = None,
    n_mels: int = 80,
    audio_normalization: dict | None = None,
    kernel: KernelConfig | None = None,
    anchors: int = 0,
) -> Trunk:
    """The trunk that ``model.<modality>`` asks for, or a `ParamsError` naming the key that does not fit."""
    where = f"model.{modality}"
    if cfg.input == "emb":
        if cfg.backbone:
            raise ParamsError(
                f"{where}.backbone={cfg.backbone!r} is only used with {where}.input: raw; with input: emb the encoder "
                f"reads the shards' {modality}.emb features (set {where}.backbone: '' or {where}.input: raw)"
            )
        if not feature_dim:
            raise ParamsError(
                f"{where}.input: emb needs pretrained {modality} features, but the shards have no '{modality}.emb': "
                f"set features.{modality}.model (and re-run the shard stage), or use {where}.input: raw"
            )
        # video keeps its pooled frames as they are: they move as its temporal encoder trains, so no fixed anchors
        if trunk == "kernel" and cfg.init == "random" and not cfg.lock and modality != "video":
            assert kernel is not None and anchors  # PairModel gives both under model.trunk: kernel
            return KernelFeatures(feature_dim, anchors, kernel.gamma)
        if trunk in FEATURE_TRUNKS:
            return FeatureInput(feature_dim, cfg.dropout, cfg.feature_noise)
        return FeatureMLP(feature_dim, cfg.hidden_dim, cfg.layers, cfg.dropout)
    if trunk in FEATURE_TRUNKS:
        raise ParamsError(
            f"trunk {trunk} (model.trunk or {where}.trunk) maps the shards' pretrained features straight to the "
            f"embedding, but {where}.input is raw; use {where}.input: emb, or trunk mlp"
        )
    if not cfg.backbone:
        return _scratch_trunk(modality, cfg, vocab_size, n_mels)
    return load_backbone(
        modality,
        cfg.backbone,
        where=where,
        vocab_size=vocab_size,
        n_mels=n_mels,
        audio_normalization=audio_normalization,
    )


def build_encoder(
    modality: str,
    cfg: EncoderConfig,
    *,
    trunk: str = "mlp",
    feature_norm: str = "none",
    feature_stats: dict | None = None,
    feature_dim: int | None = None,
    vocab_size: int | None = None,
    n_mels: int = 80,
    audio_normalization: dict | None = None,
    kernel: KernelConfig | None = None,
    anchors: int = 0,
) -> ModalityEncoder:
    """The encoder for ``modality`` as ``cfg`` (``model.<modality>``) says.

    ``feature_dim``: the shards' ``<modality>.emb`` dimension (``index["features"][...]["dim"]``), needed for
    ``input: emb``; ``vocab_size``: the tokenizer's, needed for text and code from scratch; ``n_mels`` and
    ``audio_normalization`` (``index["normalization"]["audio.feat"]``): the shards' log-mels, for raw audio;
    ``kernel`` and ``anchors``: ``model.kernel`` and how many anchors (``model.trunk: kernel``);
    ``trunk`` and ``feature_norm``: the modality's (``ModelConfig.trunk_of``, ``feature_norm_of``), with
    ``feature_stats``
    (``index["normalization"]["<modality>.emb"]``) for ``standardize``.
    """
    if modality not in MODALITIES:
        raise ValueError(f"build_encoder: unknown modality {modality!r}; allowed: {', '.join(MODALITIES)}")
    network = build_trunk(
        modality,
        cfg,
        trunk=trunk,
        feature_dim=feature_dim,
        vocab_size=vocab_size,
        n_mels=n_mels,
        audio_normalization=audio_normalization,
        kernel=kernel,
        anchors=anchors,
    )
    norm = FeatureNorm(feature_norm, feature_dim, feature_stats) if cfg.input == "emb" and feature_dim else None
    if modality == "video":
        assert isinstance(cfg, VideoEncoderConfig)
        return VideoEncoder(network, cfg, norm, feature_dim)
    return ENCODERS[modality](network, cfg, norm)
