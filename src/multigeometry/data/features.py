"""Pretrained features: a frozen model run once at shard time, its pooled output stored beside the raw media.

`load_extractor(modality, cfg, audio_cfg)` resolves ``cfg.model`` (a catalogue name, a local path or a hub id, see
`multigeometry.models.catalogue`) and returns a `FeatureExtractor`: ``.encode(items)`` gives float32 ``(B, dim)``,
computed in batches of ``cfg.batch_size`` under ``torch.inference_mode()``, and ``.spec`` describes it (for the
shards' ``index.json``). Items by modality:

- ``text`` and ``code``: ``list[str]``; `AutoTokenizer` + `AutoModel`, truncated to ``cfg.max_tokens``;
  ``hidden_states[cfg.layer]`` pooled over the attention mask (``cls``: the first token).
- ``image``: ``list[PIL.Image.Image]``; EfficientNet-Lite (the catalogue's ``efficientnet-lite0``, or a folder holding
  an ``efficientnet-lite<k>-*.pth``) with its own ImageNet evaluation preprocessing, its stage outputs (stem, 16
  blocks, head; ``-1`` = the 1280-channel head) pooled over space; any other model through `AutoImageProcessor` +
  `AutoModel` (ViT, CLIP/SigLIP vision towers, CNNs), ``cls`` = the model's pooler output for the last layer, the
  first token otherwise.
- ``video``: ``list[np.ndarray]`` of a clip's frames (F, H, W, 3) uint8, the same F for every clip: the image model
  of ``features.video`` (any model ``image`` takes) on every frame, ``.encode`` giving float32 ``(B, F, dim)``;
  ``image_size`` sets the side EfficientNet-Lite sees (the clips are small: fewer pixels, less time).
- ``audio``: ``list[np.ndarray]`` mono waveforms at ``audio.sample_rate``. Whisper encoders run on `log_mel` of the
  waveform at its own length, NOT padded to 30 s: the positional embeddings are sliced to the input's length (what
  Whisper's encoder would compute if it had been built for that length). Items run in batches of exactly equal
  length, so no item's features depend on its batch-mates and pooling sees only real frames; a clip longer than 30 s
  is encoded in 30 s windows whose frames are pooled together. Any other audio model (wav2vec 2.0, HuBERT, ...) runs
  through `AutoFeatureExtractor` + `AutoModel` in the same exact-length batches.
"""

from __future__ import annotations

import abc
import logging
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from multigeometry.config import MODALITIES, AudioConfig, FeatureModelConfig
from multigeometry.data.audio import hop_samples, log_mel
from multigeometry.data.images import to_rgb
from multigeometry.models.catalogue import (
    CATALOGUE,
    CatalogueEntry,
    ModelNotAvailableError,
    catalogue_entry,
    resolve_model,
)
from multigeometry.models.whisper import whisper_encoder_states

log = logging.getLogger(__name__)

EFFICIENTNET_WEIGHTS = re.compile(r"^(efficientnet-lite[0-4])-.*\.pth$")
EDGE_MEAN_RGB = 127.0  # EfficientNet-Lite ("edge") models were trained on (x - 127) / 128 inputs
EDGE_STD_RGB = 128.0
EDGE_CROP_PADDING = 32  # TF EfficientNet evaluation: centre crop size / (size + 32) of the short side, then resize
WINDOW_BATCHES = 16  # audio: items bucketed by length within windows of this many batches (bounded memory)


class FeatureModelError(RuntimeError):
    """A feature model that cannot be loaded or used as the params ask."""


# ---------------------------------------------------------------------------------------------------------------------
# pure helpers
# ---------------------------------------------------------------------------------------------------------------------


def pool_hidden(hidden: torch.Tensor, mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """Pool ``hidden`` (B, T, D) over the positions where ``mask`` (B, T) is true: ``mean``, ``max`` or ``cls``."""
    if pooling == "cls":
        return hidden[:, 0]
    if mask is None:
        return hidden.mean(dim=1) if pooling == "mean" else hidden.amax(dim=1)
    mask = mask.to(torch.bool)
    if pooling == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    if pooling == "max":
        return hidden.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)
    raise ValueError(f"unknown pooling {pooling!r}; allowed: 'mean', 'cls', 'max'")


def layer_index(layer: int, n_states: int, where: str, model: str) -> int:
    """``layer`` (negative counts from the end) as an index into ``n_states`` hidden states, or a clear error."""
    if not -n_states <= layer < n_states:
        raise FeatureModelError(
            f"{where}: {layer} is out of range for {model!r}, which has {n_states} hidden states "
            f"(the embeddings and {n_states - 1} layers); allowed: {-n_states}..{n_states - 1}"
        )
    return layer % n_states


def efficientnet_preprocess(images: Sequence[Any], image_size: int) -> torch.Tensor:
    """EfficientNet-Lite's evaluation preprocessing: centre crop, bicubic resize, (x - 127) / 128; (B, 3, S, S)."""
    from PIL import Image

    arrays = []
    for image in images:
        image = to_rgb(image)
        width, height = image.size
        crop = max(1, round(image_size / (image_size + EDGE_CROP_PADDING) * min(width, height)))
        left, top = (width - crop) // 2, (height - crop) // 2
        box = (left, top, left + crop, top + crop)
        image = image.resize((image_size, image_size), Image.Resampling.BICUBIC, box=box)
        arrays.append(np.asarray(image, dtype=np.float32))
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return (batch - EDGE_MEAN_RGB) / EDGE_STD_RGB


# ---------------------------------------------------------------------------------------------------------------------
# extractors
# ---------------------------------------------------------------------------------------------------------------------


class FeatureExtractor(abc.ABC):
    """A frozen model that turns a list of items of one modality into float32 features ``(B, dim)``."""

    backend: str = ""

    def __init__(self, modality: str, cfg: FeatureModelConfig, path: str) -> None:
        self.modality = modality
        self.cfg = cfg
        self.path = path
        self.dim = 0  # set by `_probe`, which also checks that `cfg.layer` exists

    # -- what subclasses implement ---------------------------------------------------------------------------------

    @abc.abstractmethod
    def _encode_batch(self, items: list) -> torch.Tensor:
        """Pooled features of one batch, (B, dim)."""

    @abc.abstractmethod
    def _probe_item(self) -> Any:
        """A small valid item, run once at load time to check the layer and learn the dimension."""

    @abc.abstractmethod
    def _check_items(self, items: list) -> None:
        """Raise a TypeError naming the first item of the wrong type."""

    # -- shared ----------------------------------------------------------------------------------------------------

    @property
    def where(self) -> str:
        return f"features.{self.modality}"

    def _probe(self) -> None:
        with torch.inference_mode():
            out = self._encode_batch([self._probe_item()])
        self.dim = int(out.shape[-1])

    @property
    def spec(self) -> dict:
        """What produced the features: enough to tell whether stored features are still valid."""
        return {
            "modality": self.modality,
            "model": self.cfg.model,
            "path": self.path,
            "backend": self.backend,
            "layer": self.cfg.layer,
            "pooling": self.cfg.pooling,
            "dim": self.dim,
            "dtype": "float32",
            **self._extra_spec(),
        }

    def _extra_spec(self) -> dict:
        return {}

    def encode(self, items: list) -> np.ndarray:
        """Features of ``items`` as float32 ``(len(items), dim)``; a progress bar when there is more than one batch."""
        items = list(items)
        self._check_items(items)
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        if not items:
            return out
        with (
            torch.inference_mode(),
            tqdm(
                total=len(items),
                desc=f"{self.modality} features ({self.cfg.model})",
                unit="item",
                disable=len(items) <= self.cfg.batch_size,
                leave=False,
            ) as bar,
        ):
            self._encode_into(items, out, bar)
        return out

    def _encode_into(self, items: list, out: np.ndarray, bar: tqdm) -> None:
        size = self.cfg.batch_size
        for start in range(0, len(items), size):
            batch = items[start : start + size]
            out[start : start + len(batch)] = self._encode_batch(batch).float().cpu().numpy()
            bar.update(len(batch))


def _check_types(items: list, kind: type | tuple[type, ...], what: str, where: str) -> None:
    for i, item in enumerate(items):
        if not isinstance(item, kind):
            raise TypeError(f"{where}: item #{i} is a {type(item).__name__}, expected {what}")


class TextExtractor(FeatureExtractor):
    """Text or code through `AutoTokenizer` + `AutoModel`, pooled over the attention mask."""

    backend = "transformers-text"

    def __init__(self, modality: str, cfg: FeatureModelConfig, path: str) -> None:
        super().__init__(modality, cfg, path)
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token is None and self.tokenizer.eos_token is not None:
            self.tokenizer.pad_token = self.tokenizer.eos_token  # decoder-only models (GPT-2) have no pad token
        model = AutoModel.from_pretrained(path)
        if getattr(model, "text_model", None) is not None:  # CLIP-like: the text tower
            model = model.text_model
        elif getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()
        self.model = model.eval()
        limit = getattr(self.model.config, "max_position_embeddings", None) or cfg.max_tokens
        self.max_tokens = min(cfg.max_tokens, int(limit))
        self._probe()

    def _probe_item(self) -> str:
        return "a probe sentence"

    def _check_items(self, items: list) -> None:
        _check_types(items, str, "a str", self.where)

    def _extra_spec(self) -> dict:
        return {"max_tokens": self.max_tokens}

    def _encode_batch(self, items: list) -> torch.Tensor:
        enc = self.tokenizer(items, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        out = self.model(**enc, output_hidden_states=True)
        states = out.hidden_states
        index = layer_index(self.cfg.layer, len(states), f"{self.where}.layer", self.cfg.model)
        return pool_hidden(states[index], enc["attention_mask"], self.cfg.pooling)


class EfficientNetLiteExtractor(FeatureExtractor):
    """EfficientNet-Lite (package ``efficientnet-lite-pytorch``) from a folder holding its ``.pth`` weights."""

    backend = "efficientnet-lite"

    def __init__(self, modality: str, cfg: FeatureModelConfig, path: str) -> None:
        super().__init__(modality, cfg, path)
        if cfg.pooling == "cls":
            raise FeatureModelError(
                f"{self.where}.pooling: 'cls' needs a model with a CLS token or pooler; {cfg.model!r} is a CNN, "
                "use 'mean' (its own global average pool) or 'max'"
            )
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            raise FeatureModelError(
                f"{self.where}.model={cfg.model!r} needs the pip package 'efficientnet-lite-pytorch': "
                "pip install efficientnet-lite-pytorch"
            ) from e
        weights = efficientnet_weights(Path(path))
        if weights is None:
            raise FeatureModelError(f"{self.where}.model={cfg.model!r}: no efficientnet-lite<k>-*.pth in {path}")
        name = EFFICIENTNET_WEIGHTS.match(weights.name).group(1)  # type: ignore[union-attr]
        self.image_size = int(cfg.image_size or EfficientNet.get_image_size(name))
        net = EfficientNet.from_name(name)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        result = net.load_state_dict(state, strict=False)
        if result.missing_keys:
            raise FeatureModelError(f"{weights}: weights do not fit {name}; missing {result.missing_keys[:5]}")
        self.net = net.eval()
        self.variant = name
        self._probe()

    def _probe_item(self) -> Any:
        from PIL import Image

        return Image.new("RGB", (32, 32))

    def _check_items(self, items: list) -> None:
        from PIL import Image

        _check_types(items, Image.Image, "a PIL.Image.Image", self.where)

    def _extra_spec(self) -> dict:
        return {"variant": self.variant, "image_size": self.image_size, "preprocess": "edge: (x-127)/128, crop 224/256"}

    def _encode_batch(self, items: list) -> torch.Tensor:
        net = self.net
        n_states = len(net._blocks) + 2  # the stem, every block, the head
        upto = layer_index(self.cfg.layer, n_states, f"{self.where}.layer", self.cfg.model)
        x = net._swish(net._bn0(net._conv_stem(efficientnet_preprocess(items, self.image_size))))
        for block in net._blocks[:upto]:
            x = block(x)
        if upto == n_states - 1:
            x = net._swish(net._bn1(net._conv_head(x)))
        return pool_hidden(x.flatten(2).transpose(1, 2), None, self.cfg.pooling)


class HFImageExtractor(FeatureExtractor):
    """Any transformers vision model: `AutoImageProcessor` + `AutoModel` (a CLIP-like model's vision tower)."""

    backend = "transformers-image"

    def __init__(self, modality: str, cfg: FeatureModelConfig, path: str) -> None:
        super().__init__(modality, cfg, path)
        from transformers import AutoImageProcessor, AutoModel

        if cfg.image_size:
            raise FeatureModelError(f"{self.where}.image_size={cfg.image_size}: only EfficientNet-Lite models take "
                                    f"another input size; {cfg.model!r} uses its own processor's (set it to 0)")
        self.processor = AutoImageProcessor.from_pretrained(path)
        model = AutoModel.from_pretrained(path)
        if getattr(model, "vision_model", None) is not None and hasattr(model, "text_model"):
            model = model.vision_model  # a two-tower model: keep the image side
        self.model = model.eval()
        self._probe()

    def _probe_item(self) -> Any:
        from PIL import Image

        return Image.new("RGB", (64, 64))

    def _check_items(self, items: list) -> None:
        from PIL import Image

        _check_types(items, Image.Image, "a PIL.Image.Image", self.where)

    def _encode_batch(self, items: list) -> torch.Tensor:
        pixels = self.processor(images=[to_rgb(im) for im in items], return_tensors="pt")["pixel_values"]
        out = self.model(pixel_values=pixels, output_hidden_states=True)
        states = out.hidden_states
        index = layer_index(self.cfg.layer, len(states), f"{self.where}.layer", self.cfg.model)
        hidden = states[index]
        pooler = getattr(out, "pooler_output", None)
        if self.cfg.pooling == "cls" and index == len(states) - 1 and pooler is not None:
            return pooler.flatten(1)
        if hidden.dim() == 4:  # a CNN: (B, C, H, W) -> (B, H*W, C)
            if self.cfg.pooling == "cls":
                raise FeatureModelError(
                    f"{self.where}.pooling: 'cls' on a CNN feature map needs the last layer's pooler; use mean or max"
                )
            hidden = hidden.flatten(2).transpose(1, 2)
        return pool_hidden(hidden, None, self.cfg.pooling)


class VideoExtractor:
    """A clip's frames through an image extractor: ``.encode(clips)`` -> float32 ``(B, F, dim)``, every frame of every
    clip in one stream of batches (a frame's features do not depend on its batch-mates: the image models run in eval
    mode, image by image)."""

    def __init__(self, frames: FeatureExtractor) -> None:
        self.frames = frames
        self.modality = "video"
        self.cfg = frames.cfg
        self.dim = frames.dim

    @property
    def backend(self) -> str:
        return self.frames.backend

    @property
    def spec(self) -> dict:
        return {**self.frames.spec, "modality": "video", "layout": "[frames, dim]"}

    def encode(self, clips: list) -> np.ndarray:
        from PIL import Image

        clips = list(clips)
        for i, clip in enumerate(clips):
            if not isinstance(clip, np.ndarray) or clip.ndim != 4 or clip.shape[-1] != 3 or clip.dtype != np.uint8:
                raise TypeError(f"features.video: item #{i} is not a clip's frames (F, H, W, 3) uint8: "
                                f"{type(clip).__name__} {getattr(clip, 'shape', '')}")
        counts = {clip.shape[0] for clip in clips}
        if len(counts) > 1:
            raise ValueError(f"features.video: clips of {sorted(counts)} frames in one call; sample the same number "
                             "from each (video.feature_frames)")
        if not clips:
            return np.zeros((0, 0, self.dim), dtype=np.float32)
        images = [Image.fromarray(frame) for clip in clips for frame in clip]
        flat = self.frames.encode(images)
        return flat.reshape(len(clips), counts.pop(), self.dim)


class _AudioExtractor(FeatureExtractor):
    """Shared by the audio extractors: resampling, exact-length buckets, pooling over every real frame."""

    def __init__(self, modality: str, cfg: FeatureModelConfig, path: str, audio_cfg: AudioConfig) -> None:
        super().__init__(modality, cfg, path)
        if cfg.pooling == "cls":
            raise FeatureModelError(
                f"{self.where}.pooling: 'cls' is not available for audio models (no CLS token); use 'mean' or 'max'"
            )
        self.input_rate = audio_cfg.sample_rate
        self.model_rate = audio_cfg.sample_rate  # set by subclasses

    def _probe_item(self) -> np.ndarray:
        return np.zeros(self.input_rate // 2, dtype=np.float32)  # 0.5 s of silence

    def _check_items(self, items: list) -> None:
        _check_types(items, np.ndarray, "a numpy waveform", self.where)
        for i, item in enumerate(items):
            if item.ndim != 1:
                raise TypeError(f"{self.where}: item #{i} has shape {item.shape}, expected a mono waveform (1-D)")

    def _extra_spec(self) -> dict:
        return {"sample_rate": self.model_rate}

    def _resample(self, wave: np.ndarray) -> np.ndarray:
        wave = np.asarray(wave, dtype=np.float32)
        if self.input_rate == self.model_rate:
            return wave
        import torchaudio.functional as AF

        return AF.resample(torch.from_numpy(wave), self.input_rate, self.model_rate).numpy()

    @abc.abstractmethod
    def _inputs(self, wave: np.ndarray) -> list[torch.Tensor]:
        """The model inputs of one waveform: one tensor per window, each with the time axis last."""

    @abc.abstractmethod
    def _frames(self, batch: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, T', D) of the chosen layer for a batch of equal-length inputs."""

    def _kept(self, wave: np.ndarray) -> list[int | None]:
        """Per window of `_inputs(wave)`, how many output frames cover the clip (None: all); padding is not pooled."""
        return [None] * len(self._inputs(wave))

    def _encode_batch(self, items: list) -> torch.Tensor:
        pooled: list[torch.Tensor] = []
        for item in items:  # one at a time: used by the probe; `encode` batches items of equal length
            states = [self._frames(x.unsqueeze(0))[0][:keep] for x, keep in zip(self._inputs(item), self._kept(item),
                                                                                 strict=True)]
            pooled.append(pool_hidden(torch.cat(states, dim=0).unsqueeze(0), None, self.cfg.pooling)[0])
        return torch.stack(pooled)

    def _encode_into(self, items: list, out: np.ndarray, bar: tqdm) -> None:
        window = self.cfg.batch_size * WINDOW_BATCHES
        for start in range(0, len(items), window):
            chunk = items[start : start + window]
            inputs: list[list[torch.Tensor]] = []
            kept: list[list[int | None]] = []
            for i, wave in enumerate(chunk):
                try:
                    inputs.append(self._inputs(wave))
                    kept.append(self._kept(wave))
                except ValueError as e:
                    raise ValueError(f"{self.where}: item #{start + i}: {e}") from e
            buckets: dict[tuple, list[tuple[int, int]]] = defaultdict(list)
            for i, windows in enumerate(inputs):
                for j, x in enumerate(windows):
                    buckets[tuple(x.shape)].append((i, j))
            frames: dict[tuple[int, int], torch.Tensor] = {}
            for keys in buckets.values():
                for b in range(0, len(keys), self.cfg.batch_size):
                    part = keys[b : b + self.cfg.batch_size]
                    states = self._frames(torch.stack([inputs[i][j] for i, j in part]))
                    for (i, j), state in zip(part, states, strict=True):
                        frames[(i, j)] = state[: kept[i][j]]
            for i, windows in enumerate(inputs):
                item_frames = torch.cat([frames[(i, j)] for j in range(len(windows))], dim=0)
                out[start + i] = pool_hidden(item_frames.unsqueeze(0), None, self.cfg.pooling)[0].float().numpy()
            bar.update(len(chunk))


class WhisperAudioExtractor(_AudioExtractor):
    """A Whisper encoder on unpadded log-mel input, positions sliced to the input length."""

    backend = "whisper-encoder"

    def __init__(self, modality: str, cfg: FeatureModelConfig, path: str, audio_cfg: AudioConfig) -> None:
        super().__init__(modality, cfg, path, audio_cfg)
        from transformers import AutoConfig, AutoModel
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        config = AutoConfig.from_pretrained(path)
        if "WhisperEncoder" in (getattr(config, "architectures", None) or []):
            encoder = WhisperEncoder.from_pretrained(path)
        else:
            encoder = AutoModel.from_pretrained(path).get_encoder()
        self.encoder = encoder.eval()
        self.n_layers = len(self.encoder.layers)
        self.mel_cfg = _whisper_mel_config(path, int(config.num_mel_bins))
        self.model_rate = self.mel_cfg.sample_rate
        self.max_frames = int(
            self.encoder.embed_positions.weight.shape[0] * self.encoder.conv1.stride[0] * self.encoder.conv2.stride[0]
        )
        self._upto = layer_index(cfg.layer, self.n_layers + 1, f"{self.where}.layer", cfg.model)
        self._probe()

    def _extra_spec(self) -> dict:
        padding = ("each window padded to 30 s as Whisper was trained; only the clip's frames pooled"
                   if self.cfg.pad_to_window else "none (positions sliced to the input length)")
        return {"sample_rate": self.model_rate, "n_mels": self.mel_cfg.n_mels, "hop_ms": self.mel_cfg.hop_ms,
                "padding": padding}

    def _windows(self, wave: np.ndarray) -> list[np.ndarray]:
        """The clip at the model's rate in windows of at most 30 s (the encoder's positions)."""
        wave = self._resample(wave)
        size = self.max_frames * hop_samples(self.mel_cfg)
        return [wave[i : i + size] for i in range(0, max(1, len(wave)), size)]

    def _inputs(self, wave: np.ndarray) -> list[torch.Tensor]:
        if not self.cfg.pad_to_window:
            mel = torch.from_numpy(log_mel(self._resample(wave), self.mel_cfg))
            return list(mel.split(self.max_frames, dim=-1))
        size = self.max_frames * hop_samples(self.mel_cfg)
        return [torch.from_numpy(log_mel(np.pad(w, (0, size - len(w))), self.mel_cfg)) for w in self._windows(wave)]

    def _kept(self, wave: np.ndarray) -> list[int | None]:
        if not self.cfg.pad_to_window:
            return super()._kept(wave)
        stride = self.encoder.conv1.stride[0] * self.encoder.conv2.stride[0]
        hop = hop_samples(self.mel_cfg)
        return [max(1, math.ceil(len(w) / hop / stride)) for w in self._windows(wave)]

    def _frames(self, batch: torch.Tensor) -> torch.Tensor:
        return whisper_encoder_states(self.encoder, batch.to(self.encoder.conv1.weight.dtype), self._upto)


def _whisper_mel_config(path: str, n_mels: int) -> AudioConfig:
    """The log-mel params of a Whisper model: its preprocessor config where there is one, else Whisper's defaults."""
    rate, n_fft, hop = 16000, 400, 160
    if (Path(path) / "preprocessor_config.json").is_file() or not Path(path).exists():
        try:
            from transformers import AutoFeatureExtractor

            fe = AutoFeatureExtractor.from_pretrained(path)
            rate = int(getattr(fe, "sampling_rate", rate))
            n_fft = int(getattr(fe, "n_fft", n_fft))
            hop = int(getattr(fe, "hop_length", hop))
        except (OSError, ValueError) as e:
            log.debug("%s: no Whisper feature extractor config (%s); using Whisper's defaults", path, e)
    return AudioConfig(
        sample_rate=rate,
        max_seconds=30.0,
        n_mels=n_mels,
        win_ms=n_fft * 1000.0 / rate,
        hop_ms=hop * 1000.0 / rate,
        f_min=0.0,
        f_max=min(8000.0, rate / 2),
    )


class HFAudioExtractor(_AudioExtractor):
    """Any other transformers audio model (wav2vec 2.0, HuBERT, WavLM, ...) on the raw waveform."""

    backend = "transformers-audio"

    def __init__(self, modality: str, cfg: FeatureModelConfig, path: str, audio_cfg: AudioConfig) -> None:
        super().__init__(modality, cfg, path, audio_cfg)
        from transformers import AutoFeatureExtractor, AutoModel

        self.processor = AutoFeatureExtractor.from_pretrained(path)
        self._input_name = "input_values"
        model = AutoModel.from_pretrained(path)
        if getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()
        self.model = model.eval()
        self.model_rate = int(getattr(self.processor, "sampling_rate", audio_cfg.sample_rate))
        self._probe()

    def _inputs(self, wave: np.ndarray) -> list[torch.Tensor]:
        enc = self.processor(self._resample(wave), sampling_rate=self.model_rate, return_tensors="pt")
        self._input_name = "input_values" if "input_values" in enc else "input_features"
        return [enc[self._input_name][0]]

    def _frames(self, batch: torch.Tensor) -> torch.Tensor:
        out = self.model(**{self._input_name: batch}, output_hidden_states=True)
        states = out.hidden_states
        index = layer_index(self.cfg.layer, len(states), f"{self.where}.layer", self.cfg.model)
        return states[index]


class TranscriptExtractor(FeatureExtractor):
    """Speech as what it says: a Whisper model (`whisper-tiny.en-asr`) transcribes each clip and the text model
    `transcript_model` embeds the transcript, so the audio features live in that text model's space (set
    `model.audio.init: identity` to start the learned map from it, where the text side uses the same model)."""

    backend = "whisper-asr"

    def __init__(self, modality: str, cfg: FeatureModelConfig, path: str, audio_cfg: AudioConfig) -> None:
        super().__init__(modality, cfg, path)
        from multigeometry.models.whisper_asr import WhisperTranscriber

        if not cfg.transcript_model:
            raise FeatureModelError(f"{self.where}.transcript_model: empty; an ASR model needs a text model to embed "
                                    "its transcripts (e.g. all-minilm-l6-v2)")
        self.transcriber = WhisperTranscriber(path)
        self.rate = audio_cfg.sample_rate
        text_cfg = FeatureModelConfig(model=cfg.transcript_model, batch_size=cfg.batch_size,
                                      max_tokens=cfg.max_tokens, pooling="mean")
        self.text = load_extractor("text", text_cfg, audio_cfg)
        self._probe()

    def _probe_item(self) -> np.ndarray:
        return np.zeros(self.rate // 2, dtype=np.float32)

    def _check_items(self, items: list) -> None:
        _check_types(items, np.ndarray, "a numpy waveform", self.where)

    def _extra_spec(self) -> dict:
        return {"transcript_model": self.cfg.transcript_model, "sample_rate": self.rate}

    def _encode_batch(self, items: list) -> torch.Tensor:
        transcripts = [self.transcriber.transcribe(np.asarray(w, dtype=np.float32), self.rate) for w in items]
        return torch.from_numpy(self.text.encode(transcripts))


# ---------------------------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------------------------


def efficientnet_weights(folder: Path) -> Path | None:
    """The ``efficientnet-lite<k>-*.pth`` file in ``folder`` (or ``folder`` itself if it is one), or None."""
    if folder.is_file():
        return folder if EFFICIENTNET_WEIGHTS.match(folder.name) else None
    if folder.is_dir():
        found = sorted(p for p in folder.iterdir() if EFFICIENTNET_WEIGHTS.match(p.name))
        return found[0] if found else None
    return None


def _model_type(path: str) -> str:
    from transformers import AutoConfig

    return str(getattr(AutoConfig.from_pretrained(path), "model_type", ""))


def load_extractor(modality: str, cfg: FeatureModelConfig, audio_cfg: AudioConfig) -> FeatureExtractor | VideoExtractor:
    """The frozen feature model that ``features.<modality>`` names, loaded on the CPU in eval mode."""
    if modality not in MODALITIES:
        raise ValueError(f"load_extractor: unknown modality {modality!r}; allowed: {', '.join(MODALITIES)}")
    where = f"features.{modality}"
    if not cfg.model:
        raise ValueError(f"{where}.model is empty: no pretrained features are configured for {modality}")
    entry = catalogue_entry(cfg.model)
    if entry is not None and modality not in entry.modality and not (modality == "video" and "image" in entry.modality):
        log.warning("%s.model=%r is catalogued for %s, not %s", where, cfg.model, "/".join(entry.modality), modality)
    try:
        path = resolve_model(cfg.model, f"{where}.model")
    except (FileNotFoundError, ModelNotAvailableError) as e:
        raise type(e)(f"{where}.model: {e}") from e
    try:
        extractor = _build(modality, cfg, audio_cfg, path, entry)
    except FeatureModelError:
        raise
    except (OSError, ValueError, KeyError) as e:
        local = Path(path).exists()
        hint = (
            f"the local folder {path} does not hold a loadable model"
            if local
            else f"{cfg.model!r} is not a catalogue name ({', '.join(CATALOGUE)}) nor an existing path, and loading "
            "it as a Hugging Face hub id failed (no network, or HF_HUB_OFFLINE set?)"
        )
        raise FeatureModelError(f"{where}.model={cfg.model!r}: cannot load ({hint}): {type(e).__name__}: {e}") from e
    if cfg.image_size and modality not in ("image", "video"):
        raise FeatureModelError(f"{where}.image_size applies to image and video features; set it to 0")
    if cfg.pad_to_window and not isinstance(extractor, WhisperAudioExtractor):
        raise FeatureModelError(f"{where}.pad_to_window: only Whisper encoders have a fixed window; {cfg.model!r} is "
                                f"a {extractor.backend} model (set {where}.pad_to_window: false)")
    log.info(
        "%s: %s (%s, layer %d, %s pooling) -> %d-dim features, from %s",
        where,
        cfg.model,
        extractor.backend,
        cfg.layer,
        cfg.pooling,
        extractor.dim,
        path,
    )
    return extractor


def _build(
    modality: str, cfg: FeatureModelConfig, audio_cfg: AudioConfig, path: str, entry: CatalogueEntry | None
) -> FeatureExtractor | VideoExtractor:
    if modality in ("text", "code"):
        return TextExtractor(modality, cfg, path)
    if modality == "video":
        if entry is not None and "image" not in entry.modality:
            raise FeatureModelError(f"features.video.model={cfg.model!r} is a {'/'.join(entry.modality)} model; video "
                                    "frames need an image model (e.g. efficientnet-lite0)")
        frames = _build("image", cfg, audio_cfg, path, entry)
        assert isinstance(frames, FeatureExtractor)
        frames.modality = "video"
        return VideoExtractor(frames)
    if modality == "image":
        if (entry is not None and entry.backend == "efficientnet-lite") or efficientnet_weights(Path(path)):
            return EfficientNetLiteExtractor(modality, cfg, path)
        return HFImageExtractor(modality, cfg, path)
    if entry is not None and entry.backend == "whisper-asr":
        return TranscriptExtractor(modality, cfg, path, audio_cfg)
    if (entry is not None and entry.backend == "whisper-encoder") or _model_type(path) == "whisper":
        return WhisperAudioExtractor(modality, cfg, path, audio_cfg)
    return HFAudioExtractor(modality, cfg, path, audio_cfg)
