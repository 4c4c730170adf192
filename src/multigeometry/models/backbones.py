"""Trunks: the networks that turn one modality's inputs into pooled features ``(B, width)``.

Three kinds, all `Trunk`s so that an encoder can freeze, partly unfreeze and checkpoint any of them the same way:

- `FeatureMLP` over the shards' pretrained features;
- small from-scratch defaults: `ScratchCNN` (images), `ScratchTokenTransformer` (token ids), `ScratchAudioConv`
  (log-mels);
- pretrained backbones loaded by `load_backbone`: transformers text models (`TextTransformersTrunk`), ViT / CLIP
  vision towers (`ImageTransformersTrunk`), Whisper encoders (`WhisperTrunk`) and torchvision classifiers
  (`TorchvisionTrunk`, and `TorchvisionVideoTrunk` over a clip's frames).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from multigeometry.config import ParamsError
from multigeometry.models.catalogue import ModelNotAvailableError, catalogue_entry, resolve_model

TORCHVISION_PREFIX = "torchvision:"
MAX_POSITIONS = 512  # learned positions of the scratch token transformer
SCRATCH_IMAGE_BASE = 32  # channels of the scratch CNN's stem; doubled by every block up to SCRATCH_IMAGE_MAX
SCRATCH_IMAGE_MAX = 512
LAYER_LIST_NAMES = ("layer", "layers", "h", "block", "blocks")  # how transformers names its lists of repeated layers


class BackboneError(RuntimeError):
    """A pretrained backbone that cannot be loaded or used as the params ask."""


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (B, T, D) over the positions where ``mask`` (B, T) is nonzero; zeros for empty rows."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def lengths_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """(B, size) bool: position t of row b is valid when t < lengths[b]."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


class Trunk(nn.Module):
    """A network with a known output ``width``, its ordered ``blocks()`` and optional activation checkpointing."""

    width: int
    pretrained = False
    supports_checkpointing = True

    def __init__(self) -> None:
        super().__init__()
        self.checkpointing = False

    def blocks(self) -> list[nn.Module]:
        """The repeated blocks, first to last; `unfreeze_last_n` counts from the end of this list."""
        return []

    def enable_checkpointing(self) -> None:
        self.checkpointing = True

    def run(self, block: nn.Module, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """``block(x, **kwargs)``, recomputed in the backward pass instead of stored when checkpointing is on."""
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False, **kwargs)
        return block(x, **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# over pretrained features and from scratch
# ---------------------------------------------------------------------------------------------------------------------


class FeatureMLP(Trunk):
    """``layers`` blocks of Linear, LayerNorm, GELU, dropout over a (B, in_dim) feature vector."""

    def __init__(self, in_dim: int, width: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.width = width
        dims = [in_dim] + [width] * layers
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(a, b), nn.LayerNorm(b), nn.GELU(), nn.Dropout(dropout))
            for a, b in zip(dims[:-1], dims[1:], strict=True)
        )

    def blocks(self) -> list[nn.Module]:
        return list(self.layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features
        for block in self.layers:
            x = self.run(block, x)
        return x


class FeatureInput(Trunk):
    """The pretrained features themselves (dropout aside), for `model.trunk: linear`: the head is then the only map
    from the frozen features to the embedding, as in a linear probe."""

    def __init__(self, in_dim: int, dropout: float, noise: float = 0.0) -> None:
        super().__init__()
        self.width = in_dim
        self.dropout = nn.Dropout(dropout)
        self.noise = noise

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.training and self.noise > 0:  # feature-space augmentation: noise scaled to each vector's RMS
            rms = features.pow(2).mean(dim=-1, keepdim=True).sqrt()
            features = features + self.noise * rms * torch.randn_like(features)
        return self.dropout(features)


class KernelFeatures(Trunk):
    """`model.trunk: kernel`: a feature vector's RBF similarities to `n_anchors` anchors, exp(-gamma |z - a|^2) with z
    the vector less the train split's mean, at unit length, and the anchors train vectors made the same way. Center and
    anchors are buffers, set by `fit` before training and saved with the model; the head over them is then kernel
    regression (`training.kernel_fit` solves it in closed form)."""

    def __init__(self, in_dim: int, n_anchors: int, gamma: float) -> None:
        super().__init__()
        self.width, self.gamma = n_anchors, gamma
        self.register_buffer("center", torch.zeros(in_dim))
        self.register_buffer("anchors", torch.zeros(n_anchors, in_dim))

    def _unit(self, features: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(features - self.center, dim=-1)

    def fit(self, features: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Center on `features`' mean; anchors: `n_anchors` of its rows (all of them, in order, when that is all)."""
        if len(features) < self.width:
            raise ValueError(f"model.kernel: {self.width} anchors asked of {len(features)} train samples")
        rows = (torch.arange(self.width) if len(features) == self.width
                else torch.randperm(len(features), generator=generator)[: self.width].sort().values)
        with torch.no_grad():
            self.center.copy_(features.mean(dim=0))
            self.anchors.copy_(self._unit(features[rows.to(features.device)]))

    def _rbf(self, z: torch.Tensor) -> torch.Tensor:
        return torch.exp(-self.gamma * (2 - 2 * z @ self.anchors.to(z.dtype).T).clamp_min(0))

    def anchor_gram(self) -> torch.Tensor:
        """The anchors' kernel among themselves (n_anchors × n_anchors)."""
        return self._rbf(self.anchors)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self._rbf(self._unit(features))


class FeatureNorm(nn.Module):
    """A fixed normalisation of pretrained features (`model.feature_norm`): `standardize` with the shards' train-split
    mean and std (index.json), `l2` to unit length, or `none`. Buffers, so a saved model carries its statistics."""

    def __init__(self, mode: str, dim: int, stats: dict | None = None) -> None:
        super().__init__()
        self.mode = mode
        mean, std = torch.zeros(dim), torch.ones(dim)
        if mode == "standardize":
            if not stats:
                raise ValueError("model.feature_norm: standardize needs the shards' feature statistics (index.json "
                                 "'normalization'); re-run the shard stage")
            mean = torch.tensor(stats["mean"], dtype=torch.float32)
            std = torch.tensor(stats["std"], dtype=torch.float32).clamp_min(1e-6)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.mode == "standardize":
            return (features - self.mean) / self.std
        if self.mode == "l2":
            return torch.nn.functional.normalize(features, dim=-1)
        return features


def _groups(channels: int) -> int:
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


def _conv2d_block(c_in: int, c_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1),
        nn.GroupNorm(_groups(c_out), c_out),
        nn.GELU(),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.GroupNorm(_groups(c_out), c_out),
        nn.GELU(),
        nn.Dropout2d(dropout),
    )


class ScratchCNN(Trunk):
    """A stride-2 stem and ``layers`` stride-2 conv blocks (GroupNorm: no item depends on its batch), then global
    average pooling."""

    def __init__(self, layers: int, dropout: float) -> None:
        super().__init__()
        channels = [min(SCRATCH_IMAGE_BASE * 2**i, SCRATCH_IMAGE_MAX) for i in range(layers + 1)]
        stem = channels[0]
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem, 3, stride=2, padding=1), nn.GroupNorm(_groups(stem), stem), nn.GELU()
        )
        self.layers = nn.ModuleList(
            _conv2d_block(a, b, dropout) for a, b in zip(channels[:-1], channels[1:], strict=True)
        )
        self.width = channels[-1]

    def blocks(self) -> list[nn.Module]:
        return [self.stem, *self.layers]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images)
        for block in self.layers:
            x = self.run(block, x)
        return x.mean(dim=(2, 3))


def _heads(width: int) -> int:
    return next((h for h in (8, 4, 2) if width % h == 0 and width // h >= 16), 1)


class ScratchTokenTransformer(Trunk):
    """Token and learned position embeddings, ``layers`` pre-norm Transformer encoder layers that ignore padded keys,
    a final LayerNorm, and the mean over the real tokens."""

    def __init__(self, vocab_size: int, width: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.width = width
        self.tokens = nn.Embedding(vocab_size, width)
        self.positions = nn.Embedding(MAX_POSITIONS, width)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width, _heads(width), 4 * width, dropout, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(width)

    def blocks(self) -> list[nn.Module]:
        return list(self.layers)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        if length > MAX_POSITIONS:
            raise ValueError(
                f"the scratch token transformer has {MAX_POSITIONS} positions; got {length} tokens "
                "(lower loader.max_tokens)"
            )
        x = self.tokens(input_ids) + self.positions(torch.arange(length, device=input_ids.device))[None]
        padded = attention_mask == 0
        padded[:, 0] &= ~padded.all(dim=1)  # a row with no tokens attends to its first slot rather than to nothing
        for block in self.layers:
            x = self.run(block, x, src_key_padding_mask=padded)
        return masked_mean(self.norm(x), attention_mask)


class _ConvBlock1d(nn.Module):
    """Conv1d, then LayerNorm over channels per frame (so padded frames never reach a valid frame's statistics)."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, 3, stride=stride, padding=1)
        self.norm = nn.LayerNorm(c_out)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x).transpose(1, 2))
        return self.drop(self.act(x)).transpose(1, 2)


class ScratchAudioConv(Trunk):
    """A 1-D conv stem over the log-mel (B, n_mels, T) and ``layers`` stride-2 conv blocks, padded frames zeroed
    after every block, then the mean over the valid frames.

    Zeroing the padding between blocks makes it look exactly like the convolutions' own zero padding, so an item's
    output does not depend on how far its batch pads it.
    """

    def __init__(self, n_mels: int, width: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.width = width
        self.stem = _ConvBlock1d(n_mels, width, 1, dropout)
        self.layers = nn.ModuleList(_ConvBlock1d(width, width, 2, dropout) for _ in range(layers))

    def blocks(self) -> list[nn.Module]:
        return [self.stem, *self.layers]

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = lengths_mask(lengths, mel.shape[-1])
        x = self.stem(mel * mask[:, None, :].to(mel.dtype)) * mask[:, None, :].to(mel.dtype)
        for block in self.layers:
            x = self.run(block, x)
            lengths = torch.div(lengths - 1, 2, rounding_mode="floor") + 1  # kernel 3, stride 2, padding 1
            mask = lengths_mask(lengths, x.shape[-1])
            x = x * mask[:, None, :].to(x.dtype)
        return masked_mean(x.transpose(1, 2), mask)


# ---------------------------------------------------------------------------------------------------------------------
# pretrained backbones
# ---------------------------------------------------------------------------------------------------------------------


def _layer_list(model: nn.Module) -> list[nn.Module]:
    """The longest ModuleList of repeated layers (BERT's ``encoder.layer``, CLIP's ``encoder.layers``, ...)."""
    found: list[nn.Module] = []
    for name, module in model.named_modules():
        is_layers = isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in LAYER_LIST_NAMES
        if is_layers and len(module) > len(found):
            found = list(module)
    return found


def _drop_pooler(model: nn.Module) -> None:
    """Remove a pooling head with weights (BERT, ViT): it is not used, and unused parameters break DDP."""
    pooler = getattr(model, "pooler", None)
    if isinstance(pooler, nn.Module) and any(True for _ in pooler.parameters()):
        model.pooler = None


def _enable_hf_checkpointing(model: Any) -> None:
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable({"use_reentrant": False})
    # Only needed for reentrant checkpointing; it would make every frozen layer take part in the backward pass.
    model.disable_input_require_grads()


class _TransformersTrunk(Trunk):
    pretrained = True

    def __init__(self, model: Any) -> None:
        super().__init__()
        _drop_pooler(model)
        self.model = model
        config = model.config
        self.width = int(getattr(config, "hidden_size", None) or config.hidden_sizes[-1])

    def blocks(self) -> list[nn.Module]:
        return _layer_list(self.model)

    def enable_checkpointing(self) -> None:
        super().enable_checkpointing()
        _enable_hf_checkpointing(self.model)


class TextTransformersTrunk(_TransformersTrunk):
    """A transformers text encoder (BERT-like; a CLIP-like model's text tower; a seq2seq model's encoder), mean-pooled
    over the attention mask."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return masked_mean(hidden, attention_mask)


class ImageTransformersTrunk(_TransformersTrunk):
    """A transformers vision model: the pooled output where the model has one without weights of its own (CLIP's
    post-LayerNorm CLS token, a CNN's global pool), else the first token (ViT, as its classifier reads it)."""

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        size = getattr(model.config, "image_size", None)
        self.image_size = tuple(size) if isinstance(size, (list, tuple)) else (size, size) if size else None

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        kwargs = {}
        if self.image_size is not None and tuple(pixel_values.shape[-2:]) != self.image_size:
            kwargs["interpolate_pos_encoding"] = True  # images of another size than the model was trained on
        out = self.model(pixel_values=pixel_values, **kwargs)
        pooled = getattr(out, "pooler_output", None)
        if pooled is not None:
            return pooled.flatten(1)
        hidden = out.last_hidden_state
        return hidden.mean(dim=(2, 3)) if hidden.dim() == 4 else hidden[:, 0]


class WhisperTrunk(Trunk):
    """A Whisper encoder on the batch's log-mels, each item run at its own length and mean-pooled over its frames.

    The standardised log-mel is mapped back to Whisper's own log-mel with the train split's per-bin statistics. Items
    are grouped by exact length and run unpadded (positions sliced to the length, `whisper_encoder_states`), so an
    item's features never depend on its batch-mates — the same contract as the shard-time feature extractor. Clips
    longer than the encoder's 30 s run in windows whose frames are pooled together.
    """

    pretrained = True

    def __init__(self, encoder: Any, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.encoder = encoder
        self.width = int(encoder.config.d_model)
        self.register_buffer("mel_mean", mean.float().clone())
        self.register_buffer("mel_std", std.float().clone())
        stride = encoder.conv1.stride[0] * encoder.conv2.stride[0]
        self.max_frames = int(encoder.embed_positions.weight.shape[0] * stride)

    def blocks(self) -> list[nn.Module]:
        return list(self.encoder.layers)

    def enable_checkpointing(self) -> None:
        super().enable_checkpointing()
        _enable_hf_checkpointing(self.encoder)

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # Imported here: `data.features` imports `models.catalogue`, so a module-level import could become a cycle.
        from multigeometry.models.whisper import whisper_encoder_states

        mel = mel * self.mel_std[:, None] + self.mel_mean[:, None]
        dtype = self.encoder.conv1.weight.dtype
        buckets: dict[int, list[tuple[int, int]]] = {}
        for item, length in enumerate(lengths.tolist()):
            for start in range(0, length, self.max_frames):
                buckets.setdefault(min(length - start, self.max_frames), []).append((item, start))
        sums = mel.new_zeros(mel.shape[0], self.width, dtype=torch.float32)  # float32 whatever autocast computes in
        counts = mel.new_zeros(mel.shape[0], dtype=torch.float32)
        n_layers = len(self.encoder.layers)
        for width, pieces in buckets.items():
            windows = torch.stack([mel[i, :, s : s + width] for i, s in pieces]).to(dtype)
            states = whisper_encoder_states(self.encoder, windows, n_layers)
            index = torch.tensor([i for i, _ in pieces], device=mel.device)
            sums = sums.index_add(0, index, states.float().sum(dim=1))
            counts = counts.index_add(0, index, counts.new_full((len(pieces),), states.shape[1]))
        return sums / counts.clamp(min=1.0)[:, None]


class TorchvisionTrunk(Trunk):
    """A torchvision classifier with its last Linear replaced by the identity: its penultimate features.

    Not checkpointed: recomputing BatchNorm layers in train mode would update their running statistics twice.
    """

    pretrained = True
    supports_checkpointing = False

    def __init__(self, model: nn.Module, width: int) -> None:
        super().__init__()
        self.model = model
        self.width = width

    def blocks(self) -> list[nn.Module]:
        features = getattr(self.model, "features", None)
        parent = features if isinstance(features, nn.Sequential) else self.model
        return [m for m in parent.children() if any(True for _ in m.parameters())]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model(images)
        if isinstance(out, tuple):  # Inception / GoogLeNet return (logits, aux...) in train mode
            out = out[0]
        return out.flatten(1)


class TorchvisionVideoTrunk(TorchvisionTrunk):
    """A torchvision video model (torchvision.models.video) over a clip's frames (B, T, 3, S, S) in [0, 1],
    normalised as its Kinetics-400 weights expect, without its classifier: (B, width)."""

    KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
    KINETICS_STD = (0.22803, 0.22145, 0.216989)

    def __init__(self, model: nn.Module, width: int) -> None:
        super().__init__(model, width)
        self.register_buffer("mean", torch.tensor(self.KINETICS_MEAN)[None, :, None, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(self.KINETICS_STD)[None, :, None, None, None], persistent=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dim() != 5:
            raise ValueError(f"a video backbone reads frames (batch, frames, 3, side, side), got {tuple(frames.shape)}")
        clips = (frames.permute(0, 2, 1, 3, 4) - self.mean) / self.std  # (B, 3, T, S, S)
        return self.model(clips).flatten(1)


# ---------------------------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------------------------


def torchvision_architectures(video: bool = False) -> list[str]:
    """torchvision's image classifiers, or (``video``) its video classifiers (torchvision.models.video)."""
    import torchvision
    import torchvision.models.video

    module = torchvision.models.video if video else torchvision.models
    return list(torchvision.models.list_models(module=module))


def _remove_head(model: nn.Module, where: str, arch: str) -> int:
    """Replace the classifier's last Linear by the identity; return its input width."""
    for attr in ("fc", "classifier", "heads", "head"):
        head = getattr(model, attr, None)
        if isinstance(head, nn.Linear):
            setattr(model, attr, nn.Identity())
            return int(head.in_features)
        if isinstance(head, nn.Sequential):
            linear = [i for i, m in enumerate(head) if isinstance(m, nn.Linear)]
            if linear:
                width = int(head[linear[-1]].in_features)
                head[linear[-1]] = nn.Identity()
                return width
    raise ParamsError(f"{where}.backbone: torchvision:{arch} has no Linear classifier head to remove; pick another")


def _load_state_dict(path_text: str, where: str) -> dict[str, torch.Tensor]:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{where}.backbone: weights file {path} not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # a checkpoint that wraps the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise BackboneError(f"{where}.backbone: {path} does not hold a state dict (got {type(state).__name__})")
    return state


def load_torchvision(spec: str, where: str, video: bool = False) -> TorchvisionTrunk:
    """``<arch>`` (random init) or ``<arch>@<path to a .pth state dict>``: an image classifier, or (``video``) a
    video classifier of torchvision.models.video."""
    import torchvision

    arch, _, weights = spec.partition("@")
    archs = torchvision_architectures(video)
    if arch not in archs:
        close = difflib.get_close_matches(arch, archs, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        kind = "video architecture" if video else "architecture"
        raise ParamsError(
            f"{where}.backbone: unknown torchvision {kind} {arch!r}{hint}; allowed: {', '.join(archs)}"
        )
    model = torchvision.models.get_model(arch, weights=None)
    if weights:
        try:
            model.load_state_dict(_load_state_dict(weights, where))
        except RuntimeError as e:
            raise BackboneError(f"{where}.backbone: {weights} does not fit torchvision:{arch}: {e}") from e
    trunk = TorchvisionVideoTrunk if video else TorchvisionTrunk
    return trunk(model, _remove_head(model, where, arch))


def _load_text_model(path: str) -> Any:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(path)
    if getattr(model, "text_model", None) is not None:  # CLIP-like: the text tower
        model = model.text_model
    elif getattr(model.config, "is_encoder_decoder", False):
        model = model.get_encoder()
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False  # encoding only: no key/value cache, and none under checkpointing
    return model


def _load_image_model(path: str) -> Any:
    from transformers import AutoConfig, AutoModel, CLIPVisionModel

    if AutoConfig.from_pretrained(path).model_type in ("clip", "clip_vision_model"):
        return CLIPVisionModel.from_pretrained(path)  # a full CLIP folder too: only the vision weights are loaded
    model = AutoModel.from_pretrained(path)
    if getattr(model, "vision_model", None) is not None and hasattr(model, "text_model"):
        model = model.vision_model  # another two-tower model: keep the image side
    return model


def _load_whisper_encoder(path: str, name: str, where: str) -> Any:
    from transformers import AutoConfig, AutoModel
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = AutoConfig.from_pretrained(path)
    if config.model_type != "whisper":
        raise ParamsError(
            f"{where}.backbone={name!r} is a {config.model_type!r} model; raw audio (log-mel) input needs a Whisper "
            "encoder. For other audio models use features.audio.model with model.audio.input: emb"
        )
    if "WhisperEncoder" in (getattr(config, "architectures", None) or []):
        return WhisperEncoder.from_pretrained(path)
    return AutoModel.from_pretrained(path).get_encoder()


def _whisper_trunk(encoder: Any, n_mels: int, normalization: dict | None, name: str, where: str) -> WhisperTrunk:
    expected = int(encoder.config.num_mel_bins)
    if expected != n_mels:
        raise ParamsError(
            f"{where}.backbone={name!r} expects {expected} mel bins but the shards' log-mels have {n_mels} "
            f"(audio.n_mels); set audio.n_mels: {expected} and re-run the shard stage"
        )
    if normalization is None:  # the log-mels were not standardised
        mean, std = torch.zeros(n_mels), torch.ones(n_mels)
    else:
        mean = torch.as_tensor(normalization["mean"], dtype=torch.float32)
        std = torch.as_tensor(normalization["std"], dtype=torch.float32)
        if mean.shape != (n_mels,) or std.shape != (n_mels,):
            raise ValueError(
                f"{where}: audio normalisation statistics of shape {tuple(mean.shape)}/{tuple(std.shape)} do not "
                f"fit {n_mels} mel bins (index normalization['audio.feat'])"
            )
    return WhisperTrunk(encoder, mean, std)


def _check_catalogue(modality: str, name: str, where: str) -> None:
    entry = catalogue_entry(name)
    if entry is None:
        return
    if modality not in entry.modality:
        raise ParamsError(
            f"{where}.backbone={name!r} is a catalogue model for {'/'.join(entry.modality)}, not {modality}"
        )
    if entry.backend == "efficientnet-lite":
        raise ParamsError(
            f"{where}.backbone={name!r} is a feature model, not a trainable backbone: use features.{modality}.model: "
            f"{name} with {where}.input: emb, or a backbone such as torchvision:resnet18"
        )


def load_backbone(
    modality: str,
    name: str,
    *,
    where: str,
    vocab_size: int | None = None,
    n_mels: int = 80,
    audio_normalization: dict | None = None,
) -> Trunk:
    """The pretrained backbone ``name`` for ``modality``: ``torchvision:<arch>[@<weights.pth>]`` (images, video), else a
    catalogue name, local path or hub id loaded with transformers. ``where`` (``model.<modality>``) prefixes errors."""
    if name.startswith(TORCHVISION_PREFIX):
        if modality not in ("image", "video"):
            raise ParamsError(f"{where}.backbone={name!r}: torchvision backbones are for images and video only")
        return load_torchvision(name[len(TORCHVISION_PREFIX) :], where, video=modality == "video")
    _check_catalogue(modality, name, where)
    try:
        path = resolve_model(name, f"{where}.backbone")
    except (FileNotFoundError, ModelNotAvailableError) as e:
        raise type(e)(f"{where}.backbone: {e}") from e
    try:
        if modality in ("text", "code"):
            trunk: Trunk = TextTransformersTrunk(_load_text_model(path))
            _check_vocab(trunk, vocab_size, name, where)
            return trunk
        if modality == "image":
            return ImageTransformersTrunk(_load_image_model(path))
        return _whisper_trunk(_load_whisper_encoder(path, name, where), n_mels, audio_normalization, name, where)
    except ParamsError:
        raise
    except (OSError, ValueError, KeyError) as e:
        hint = (
            f"the local folder {path} does not hold a loadable model"
            if Path(path).exists()
            else f"{name!r} is neither a catalogue name nor an existing path, and loading it as a Hugging Face hub id "
            "failed (no network, or HF_HUB_OFFLINE set?)"
        )
        raise BackboneError(f"{where}.backbone={name!r}: cannot load ({hint}): {type(e).__name__}: {e}") from e


def _check_vocab(trunk: Trunk, vocab_size: int | None, name: str, where: str) -> None:
    model_vocab = getattr(trunk.model.config, "vocab_size", None)  # type: ignore[union-attr]
    if vocab_size is not None and model_vocab is not None and vocab_size > model_vocab:
        raise ParamsError(
            f"{where}.backbone={name!r} has a vocabulary of {model_vocab} tokens but loader.tokenizer has "
            f"{vocab_size}: use the backbone's own tokenizer (loader.tokenizer: {name})"
        )
