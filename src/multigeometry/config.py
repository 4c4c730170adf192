"""Typed, validated params: `params.yaml` parsed once into frozen dataclasses.

Every knob of the project lives in `params.yaml`. `load_params` turns it into a `Params` tree; any unknown key,
wrong type, out-of-range number or unknown choice is a `ParamsError` that names the dotted key, the value and what
is allowed. Overrides use the dotted keys of `dvc exp run -S` (`train.lr=1e-4`).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

MODALITIES = ("image", "text", "audio", "code", "video")
Modality = Literal["image", "text", "audio", "code", "video"]
SPLITS = ("train", "val", "test")


class ParamsError(ValueError):
    """A params file or override that does not fit the schema."""


SEED_MAX = 2**32 - 1  # numpy's legacy seeding takes 32 bits; torch's generators 64 (the loop scales the seed)
INT_LIMIT = 2**63  # integers must fit a signed 64-bit integer: torch, numpy and SQLite take no more
NAME_MAX_BYTES = 255  # a file name's limit on common file systems


def check_name(key: str, value: str) -> None:
    """A params value that becomes one path component (a folder under data/): a plain name, never a path."""
    problem = ""
    if not value.strip():
        problem = "is empty"
    elif "/" in value or "\\" in value:
        problem = "holds a path separator"
    elif value.startswith("."):
        problem = "starts with '.' (hidden, or a step up the tree)"
    elif any(ord(c) < 32 or ord(c) == 127 for c in value):
        problem = "holds a control character"
    elif len(value.encode("utf-8", "surrogatepass")) > NAME_MAX_BYTES:
        problem = f"is longer than {NAME_MAX_BYTES} bytes"
    if problem:
        raise ParamsError(f"{key}: {value!r} {problem}; it names a folder and must be a plain folder name "
                          "(no '/', '\\', leading '.', or control characters)")


def bounded(default: Any, *, min: float | None = None, max: float | None = None, doc: str = "") -> Any:  # noqa: A002
    """A field whose numeric value must lie in [min, max]."""
    return field(default=default, metadata={"min": min, "max": max, "doc": doc})


def _list(default: list | tuple, **meta: Any) -> Any:
    return field(default_factory=lambda: tuple(default), metadata=meta)


# ---------------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitFractions:
    # share of the groups in train (sources without fixed splits; a group stays whole)
    train: float = bounded(0.8, min=0.0, max=1.0)
    val: float = bounded(0.1, min=0.0, max=1.0)  # share in val
    test: float = bounded(0.1, min=0.0, max=1.0)  # share in test

    def __post_init__(self) -> None:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ParamsError(f"data.splits: fractions must add up to 1, got {total:g} ({self})")


@dataclass(frozen=True)
class AmbiguityConfig:
    """Ambiguity injected into the world's samples and recorded as ground truth for the uncertainty metrics: each item
    not left clean gets a severity in (0, 1] per modality, which scales every corruption of that modality up to these
    limits (the manifest's `ambiguity` column holds the severities and the levels applied)."""

    clean_fraction: float = bounded(1.0, min=0.0, max=1.0)  # share of items left as generated (1: none corrupted)
    occlusion: float = bounded(0.5, min=0.0, max=0.9)  # image: largest share of its area under a grey box
    image_noise: float = bounded(48.0, min=0.0, max=128.0)  # image: largest extra pixel noise (std, 0-255 scale)
    blur: float = bounded(2.0, min=0.0, max=16.0)  # image: largest Gaussian blur radius (pixels)
    downscale: float = bounded(4.0, min=1.0, max=16.0)  # image: largest factor shrunk by, then enlarged back
    snr_db: float = bounded(-5.0, min=-20.0, max=60.0)  # audio: the lowest signal-to-noise ratio of the added noise
    babble: float = bounded(0.5, min=0.0, max=1.0)  # audio: share of that noise that is other speech (rest: white)
    truncation: float = bounded(0.5, min=0.0, max=0.9)  # audio: largest share of the clip cut from its end
    vagueness: int = bounded(3, min=0, max=3)  # text: most of size, colour (texture) and place dropped from it


@dataclass(frozen=True)
class WorldConfig:
    """The embedded generated world (`data.source: world`)."""

    n_items: int = bounded(600, min=1)  # generated items (scenes); each is one group
    # paraphrases of the most specific caption per item (one row each)
    captions_per_item: int = bounded(1, min=1, max=8)
    image_size: int = bounded(96, min=32, max=1024)  # pixels per side of the rendered image
    image_format: Literal["png", "jpg"] = "png"  # how images are stored
    max_objects: int = bounded(2, min=1, max=2)  # objects per scene: 1 or 2
    noise: float = bounded(6.0, min=0.0, max=64.0)  # Gaussian pixel noise (std, 0-255 scale) on every image
    audio: bool = True  # speak the caption with eSpeak NG
    audio_sample_rate: int = bounded(16000, min=8000, max=48000)  # of the spoken captions
    workers: int = bounded(2, min=1, max=64)  # processes generating the world (the bytes do not depend on it)
    textures: bool = False  # a fourth attribute (plain, striped, dotted, checked), drawn and named at the last level
    clutter: int = bounded(0, min=0, max=200)  # undescribed background strokes and blots per image
    near_duplicates: float = bounded(0.0, min=0.0, max=1.0)  # share of items: the previous scene, one thing changed
    ambiguity: AmbiguityConfig = field(default_factory=AmbiguityConfig)  # corrupted samples, with ground truth
    # a clip per item, its objects moving (left, right, up, down, grow, shrink, spin, still); the motion joins the
    # captions at every level, the concepts and the speech. false: the world without motion (and without video)
    video: bool = True
    video_frames: int = bounded(8, min=2, max=256)  # frames per clip
    video_fps: int = bounded(4, min=1, max=60)  # frames per second of the clips
    video_size: int = bounded(64, min=16, max=1024)  # pixels per side of the clips (even: H.264 needs it)
    video_format: Literal["mp4", "webm"] = "mp4"  # mp4: H.264 in MP4 | webm: VP9 in WebM; fixed settings, bit-exact
    # the spoken caption goes into the clip as its audio track (AAC) and the row's audio is read from the clip
    video_audio: bool = False

    def __post_init__(self) -> None:
        if self.video_size % 2:
            raise ParamsError(f"data.world.video_size: {self.video_size} must be even (H.264 and VP9 store 4:2:0 "
                              "colour, in 2x2 blocks)")
        if self.video_audio and not (self.video and self.audio):
            raise ParamsError("data.world.video_audio: true needs data.world.video and data.world.audio true (the "
                              "spoken caption is the clip's audio track)")


@dataclass(frozen=True)
class HFConfig:
    """A Hugging Face `datasets` source (`data.source: hf:<name or path>`)."""

    layout: Literal["flickr30k", "audio_caption", "code_docstring", "generic"] = "generic"  # default column mapping
    config: str = ""  # the dataset's configuration (name= of load_dataset)
    # files or globs; `train=<glob>`, `validation=<glob>` ... give each split its files
    data_files: tuple[str, ...] = ()
    load_split: str = ""  # load one split only (test, train[:1000], ...)
    split_column: str = ""  # a column holding each row's split
    group_column: str = ""  # a column whose value is the row's group
    columns: dict[str, str] = field(default_factory=dict)  # modality -> column, e.g. {image: img, text: caption}
    hierarchy_columns: tuple[str, ...] = ()  # columns giving the hierarchy, most general first
    # dataset split name -> train | val | test, or "" to leave its rows out
    split_names: dict[str, str] = field(default_factory=dict)
    max_rows: int = bounded(0, min=0)  # read at most this many rows (0: all)


@dataclass(frozen=True)
class StdlibCodeConfig:
    """Code–docstring pairs from the running interpreter's standard library (`data.source: stdlib-code`)."""

    max_samples: int = bounded(2000, min=1)  # code-docstring pairs at most
    min_doc_chars: int = bounded(16, min=1)  # shorter docstrings are skipped
    max_code_lines: int = bounded(60, min=3)  # longer functions are skipped
    packages: tuple[str, ...] = ()  # top-level modules to read ([]: all)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "world"  # folder name under data/raw, data/validated, data/shards
    source: str = "world"  # world | hf:<dataset or path> | folder:<path> | stdlib-code
    splits: SplitFractions = field(default_factory=SplitFractions)  # split fractions, for sources that give none
    world: WorldConfig = field(default_factory=WorldConfig)  # data.source: world
    # data.source: hf:<name> (docs/sources.md); "" / [] / {}: the layout's default
    hf: HFConfig = field(default_factory=HFConfig)
    # data.source: stdlib-code (the running interpreter's standard library)
    stdlib_code: StdlibCodeConfig = field(default_factory=StdlibCodeConfig)

    def __post_init__(self) -> None:
        kind = self.source.split(":", 1)[0]
        if kind not in ("world", "hf", "folder", "stdlib-code"):
            raise ParamsError(
                f"data.source: unknown source {self.source!r}; allowed: 'world', 'hf:<dataset or path>', "
                "'folder:<path>', 'stdlib-code'"
            )
        if kind in ("hf", "folder") and not self.source.partition(":")[2]:
            raise ParamsError(f"data.source: {self.source!r} needs a name or path after '{kind}:'")
        check_name("data.dataset", self.dataset)


@dataclass(frozen=True)
class ValidateConfig:
    # the stage fails when more rows than this are quarantined
    max_bad_fraction: float = bounded(0.05, min=0.0, max=1.0)
    # modalities every row must carry
    modalities: tuple[Modality, ...] = _list(["image", "text", "audio", "code", "video"])
    text_min_chars: int = bounded(1, min=1)  # captions shorter than this are quarantined
    text_max_chars: int = bounded(2000, min=1)  # and longer than this
    image_min_side: int = bounded(32, min=1)  # images smaller than this (px) are quarantined
    image_max_pixels: int = bounded(89_478_485, min=1)  # refused from the header, before decoding (Pillow's default)
    audio_sample_rates: tuple[int, ...] = _list([])  # allowed rates; empty: any rate >= audio_min_sample_rate
    audio_min_sample_rate: int = bounded(4000, min=1)  # the shard stage resamples every clip to audio.sample_rate
    audio_min_seconds: float = bounded(0.2, min=0.0)  # clips shorter than this are quarantined
    audio_max_seconds: float = bounded(30.0, min=0.0)  # and longer than this
    audio_min_rms: float = bounded(1e-4, min=0.0)  # quieter clips are quarantined as silent
    code_max_bytes: int = bounded(1_000_000, min=1)  # larger source files are quarantined unread
    video_max_bytes: int = bounded(500_000_000, min=1)  # larger clips are quarantined unread
    video_min_frames: int = bounded(2, min=1)  # clips with fewer decoded frames are quarantined (0 frames always)
    video_max_frames: int = bounded(20_000, min=1)  # decoding stops here: longer clips are quarantined
    video_min_seconds: float = bounded(0.1, min=0.0)  # clips shorter than this are quarantined
    video_max_seconds: float = bounded(600.0, min=0.0)  # and longer than this
    video_min_fps: float = bounded(1.0, min=0.0)  # clips with a lower frame rate are quarantined
    video_max_fps: float = bounded(240.0, min=0.0)  # and with a higher one
    video_min_side: int = bounded(16, min=1)  # frames smaller than this (px) are quarantined
    video_max_pixels: int = bounded(3840 * 2160, min=1)  # per frame; refused from the header, before decoding
    data_docs: bool = True  # render Great Expectations' data docs into data/validated/<dataset>/data_docs


# ---------------------------------------------------------------------------------------------------------------------
# shards: audio features, pretrained features, image handling
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioConfig:
    """Audio decoding and log-mel features; the defaults are Whisper's (16 kHz, 80 mels, 25 ms window, 10 ms hop)."""

    sample_rate: int = bounded(16000, min=1000, max=96000)  # every clip is resampled to this
    max_seconds: float = bounded(10.0, min=0.1)  # clips are cut to this length
    crop: Literal["start", "center"] = "start"  # which part of a longer clip is kept
    pad: Literal["none", "zeros"] = "none"  # none | zeros (pad every clip to max_seconds)
    n_mels: int = bounded(80, min=8, max=256)  # log-mel bands
    win_ms: float = bounded(25.0, min=1.0)  # analysis window
    hop_ms: float = bounded(10.0, min=1.0)  # hop between frames
    f_min: float = bounded(0.0, min=0.0)  # lowest mel frequency (Hz)
    f_max: float = bounded(8000.0, min=1.0)  # highest mel frequency (Hz)

    def __post_init__(self) -> None:
        if self.f_max > self.sample_rate / 2:
            raise ParamsError(f"audio.f_max: {self.f_max} is above the Nyquist frequency {self.sample_rate / 2}")
        if self.f_min >= self.f_max:
            raise ParamsError(f"audio.f_min ({self.f_min}) must be below audio.f_max ({self.f_max})")


@dataclass(frozen=True)
class FeatureModelConfig:
    """A frozen pretrained model run once at shard time; its pooled output is stored beside the raw media."""

    model: str = ""  # catalogue name, hub id or local path; empty: no pretrained features for this modality
    layer: int = -1  # hidden state whose output is pooled; -1 = the last
    pooling: Literal["mean", "cls", "max"] = "mean"  # how the chosen layer's states become one vector
    batch_size: int = bounded(32, min=1)  # items per forward pass at shard time
    max_tokens: int = bounded(128, min=1)  # text and code: truncation length
    # audio (Whisper): pad each clip to the 30 s window Whisper was trained on and pool only the clip's frames
    pad_to_window: bool = False
    # audio with an ASR model (whisper-tiny.en-asr): the text model that embeds its transcripts
    transcript_model: str = "all-minilm-l6-v2"
    image_size: int = bounded(0, min=0, max=1024)  # image and video, EfficientNet-Lite: the side it sees (0: its own)


@dataclass(frozen=True)
class FeaturesConfig:
    image: FeatureModelConfig = field(  # image features
        default_factory=lambda: FeatureModelConfig(model="efficientnet-lite0"))
    text: FeatureModelConfig = field(  # text features (the hierarchy's and the parts' descriptions too)
        default_factory=lambda: FeatureModelConfig(model="all-minilm-l6-v2", batch_size=64))
    audio: FeatureModelConfig = field(  # audio features
        default_factory=lambda: FeatureModelConfig(model="whisper-tiny.en", batch_size=16))
    code: FeatureModelConfig = field(  # code features
        default_factory=lambda: FeatureModelConfig(model="all-minilm-l6-v2", batch_size=64, max_tokens=256))
    # video features: an image model (efficientnet-lite0 with image_size 112 suits small clips) on each of the
    # video.feature_frames frames of a clip (T x D); "" = clips are stored in the shards without features
    video: FeatureModelConfig = field(
        default_factory=lambda: FeatureModelConfig(model="efficientnet-lite0", batch_size=64, image_size=112))


@dataclass(frozen=True)
class VideoConfig:
    """Video decoding and frame sampling: which frames the shards embed and which of them an encoder sees."""

    # frames of a clip the shard stage embeds (video.emb, T x D): the centres of as many equal segments of the clip
    feature_frames: int = bounded(8, min=1, max=64)
    # frames an encoder sees: one per equal segment of those (TSN-style), the centre one, or a random one in training
    num_frames: int = bounded(4, min=1, max=64)
    jitter: bool = True  # training: a random frame inside each segment instead of its centre
    threads: int = bounded(2, min=0, max=64)  # FFmpeg decoding threads (0: FFmpeg's choice); frames are the same
    # model.video.input raw: the sampled frames are resized to this side (112: torchvision's Kinetics video models)
    frame_side: int = bounded(112, min=8, max=1024)

    def __post_init__(self) -> None:
        if self.num_frames > self.feature_frames:
            raise ParamsError(f"video.num_frames ({self.num_frames}) cannot exceed video.feature_frames "
                              f"({self.feature_frames}): the encoder's frames are picked among the embedded ones")


@dataclass(frozen=True)
class ShardConfig:
    max_samples: int = bounded(128, min=1)  # samples per shard at most
    max_bytes: int = bounded(64_000_000, min=1024)  # bytes per shard at most
    max_image_side: int = bounded(512, min=8)  # larger images are re-encoded to this side
    max_video_side: int = bounded(512, min=16)  # larger clips are re-encoded (H.264, MP4) to this side
    workers: int = bounded(2, min=1, max=256)  # processes writing shards (the bytes do not depend on it)
    # a manifest without val rows: this fraction of the train groups becomes the val split (0: no val split)
    val_from_train: float = bounded(0.1, min=0.0, max=0.9)


# ---------------------------------------------------------------------------------------------------------------------
# pairing, model and loss
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairSpec:
    a: Modality = "image"  # one modality
    b: Modality = "text"  # the other
    weight: float = bounded(1.0, min=0.0)  # the pair's weight in the loss

    def __post_init__(self) -> None:
        if self.a == self.b:
            raise ParamsError(f"pairs.pairs: a pair needs two different modalities, got {self.a!r} twice")


@dataclass(frozen=True)
class DatasetPairConfig:
    """Which modalities are paired for training and evaluation, and how several pairings are mixed."""

    pairs: tuple[PairSpec, ...] = field(  # the modality pairs scored by the loss and the evaluation
        default_factory=lambda: (
            PairSpec("image", "text"),
            PairSpec("audio", "text"),
            PairSpec("code", "text"),
            PairSpec("video", "text"),
            PairSpec("video", "audio"),
        )
    )

    def __post_init__(self) -> None:
        if not self.pairs:
            raise ParamsError("pairs.pairs: at least one pair of modalities is needed")


@dataclass(frozen=True)
class AugmentConfig:
    """Image augmentation (train) and resizing (eval); mean and std are the image encoder's."""

    image_size: int = bounded(96, min=8)  # side of the image fed to raw-image encoders
    scale_min: float = bounded(0.7, min=0.05, max=1.0)  # random resized crop: smallest area kept (train)
    color_jitter: float = bounded(0.2, min=0.0, max=1.0)  # brightness, contrast, saturation (train)
    hflip: bool = False  # off: the world's captions say left and right
    mean: tuple[float, ...] = _list([0.485, 0.456, 0.406])  # normalisation of raw-image encoders (their own)
    std: tuple[float, ...] = _list([0.229, 0.224, 0.225])  # normalisation of raw-image encoders (their own)


@dataclass(frozen=True)
class LoaderConfig:
    """How samples are read, tokenised and batched by both dataset classes."""

    batch_size: int = bounded(0, min=0)  # samples per step; 0: the whole training split in one step (full batch)
    workers: int = bounded(0, min=0, max=64)  # loader processes (0: in-process; fastest for feature-only models)
    shuffle_buffer: int = bounded(512, min=0)  # samples in the streaming shuffle buffer
    resampled: bool = False  # draw shards with replacement (equal batches on every rank)
    tokenizer: str = "all-minilm-l6-v2"  # catalogue name, hub id or local path
    max_tokens: int = bounded(64, min=1)  # truncation of tokenised text
    padding: Literal["longest", "max_length"] = "longest"  # longest in the batch, or max_tokens
    # feature-only models (every encoder `input: emb`): decoded samples kept in memory between epochs, up to this size
    cache_mb: int = bounded(1024, min=0)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # image augmentation (raw-image encoders)


@dataclass(frozen=True)
class EncoderConfig:
    """One modality's encoder: a trainable trunk over the shards' pretrained features (`input: emb`), or a backbone
    over raw inputs (`input: raw`: images, token ids, log-mels) — a pretrained model by catalogue name, hub id or local
    path (transformers `AutoModel`, or `torchvision:<name>`), or a small from-scratch network when `backbone` is ""."""

    # emb: a trunk over the shards' pretrained features | raw: a backbone over images, tokens, log-mels
    input: Literal["emb", "raw"] = "emb"
    # input raw: "" = a small from-scratch network, else a catalogue name, hub id, local path or torchvision:<arch>
    backbone: str = ""
    freeze: bool = True  # keep the pretrained backbone frozen
    unfreeze_last_n: int = bounded(0, min=0)  # with freeze: train the backbone's last n layers
    grad_checkpointing: bool = False  # recompute activations in the backward pass (memory for time)
    hidden_dim: int = bounded(256, min=4)  # width of the trunk's MLP and adapter (trunk mlp)
    layers: int = bounded(2, min=1, max=48)  # MLP blocks (trunk mlp; from-scratch networks' depth)
    dropout: float = bounded(0.0, min=0.0, max=0.9)  # dropout in the trunk (on the features, with trunk linear)
    # the head's mean map starts random, or at the identity (model.trunk linear, input emb: the features' own space,
    # e.g. a text model's, kept as the start; model.embed_dim = their dim)
    init: Literal["random", "identity"] = "random"
    # keep the head's mean map the identity: the directions are the frozen features, only the uncertainty trains
    lock: bool = False
    feature_noise: float = bounded(0.0, min=0.0, max=4.0)  # training only: Gaussian noise x its RMS on the features
    # this modality's trunk: "" = model.trunk's (mlp | linear | kernel; kernel only where the mean map starts random
    # and is not locked, video aside: linear elsewhere)
    trunk: Literal["", "mlp", "linear", "kernel"] = ""
    # this modality's feature normalisation: "" = model.feature_norm's (none | standardize | l2)
    feature_norm: Literal["", "none", "standardize", "l2"] = ""


@dataclass(frozen=True)
class VideoEncoderConfig(EncoderConfig):
    """The video encoder: a clip's frame features (video.emb, video.num_frames x dim) pooled over time by `temporal`
    (CLIP4Clip's meanP or seqTransf), then the trunk and head as for the other modalities' features; or, with
    `input: raw`, a torchvision video model (`backbone: torchvision:<arch>[@weights.pth]`) over the clip's
    `video.num_frames` decoded frames at `video.frame_side` pixels, frozen but for its last `unfreeze_last_n` blocks."""

    # meanP: the mean of the frames (a bag of frames) | seqTransf: a small transformer with positions over them
    temporal: Literal["meanP", "seqTransf"] = "seqTransf"
    temporal_layers: int = bounded(1, min=1, max=12)  # seqTransf: transformer layers
    temporal_heads: int = bounded(4, min=1, max=32)  # seqTransf: attention heads (they divide temporal_width)
    temporal_width: int = bounded(128, min=4)  # seqTransf: its width; the frames are projected down, then back up
    # seqTransf: its tokens are what changes, each frame less the clip's mean and its difference from the previous
    # frame (pooled frame features hardly change as things move; BENCHMARKS.md, "meanP against seqTransf")
    temporal_deltas: bool = True

    def __post_init__(self) -> None:
        if self.temporal_width % self.temporal_heads:
            raise ParamsError(f"model.video.temporal_heads ({self.temporal_heads}) must divide "
                              f"model.video.temporal_width ({self.temporal_width})")
        if self.input == "raw" and not self.backbone.startswith("torchvision:"):
            raise ParamsError(f"model.video.input: raw needs a torchvision video model as model.video.backbone "
                              f"(torchvision:r3d_18, torchvision:mc3_18, ...[@weights.pth]), got {self.backbone!r}; "
                              "or input: emb, the shards' frame features (features.video.model)")


@dataclass(frozen=True)
class KernelConfig:
    """`model.trunk: kernel`, for few pairs: a modality's features (centred on the train split's mean, unit length)
    become their RBF similarities to anchors, the train split's own features, and its head's mean map over them starts
    at the kernel ridge regression onto its partner's locked space, solved in closed form; that start is validated
    as a candidate before the first step (BENCHMARKS.md, "Real data": kernel ridge on tuxpaint-images)."""

    anchors: int = bounded(4096, min=1)  # at most this many train samples are anchors (a seeded random subset)
    gamma: float = bounded(1.0, min=1e-6)  # the RBF's width: exp(-gamma * |x - anchor|^2) between unit vectors
    ridge: float = bounded(0.01, min=0.0)  # the closed-form solution's ridge (on the kernel's scale, 1 on its diagonal)
    # keep the solved mean map as it is: training then learns the uncertainty (variances, aperture) around it, as for
    # a locked text side (the solution wins on few pairs, and contrastive steps on it lost on val)
    lock: bool = True


@dataclass(frozen=True)
class ComposerConfig:
    """The compositional layer: a permutation-invariant network that maps the distributions of a compound's parts
    ("red", "a circle") to the compound's distribution ("a red circle"), in the model's geometry."""

    enabled: bool = True  # learn compose(parts) -> the compound's distribution (rows that carry parts)
    hidden_dim: int = bounded(128, min=4)  # width of the Deep Sets networks
    layers: int = bounded(1, min=1, max=8)  # depth of the Deep Sets networks
    # training: compose at most this many compounds of a batch, drawn at random each step (0: every one); the
    # composition term's cost is quadratic in them (BENCHMARKS.md, "Training throughput")
    max_compounds: int = bounded(256, min=0)
    # training: the composition term on every this many steps only (1: every step), at its weight on those steps
    every: int = bounded(1, min=1)


# model.trunk values under which the head reads the shards' features directly (or their kernel similarities)
FEATURE_TRUNKS = ("linear", "kernel")


@dataclass(frozen=True)
class ModelConfig:
    # a distribution per sample: mixture of Gaussians, cone, or a point (CLIP)
    geometry: Literal["mixture", "cone", "point"] = "mixture"
    embed_dim: int = bounded(384, min=2)  # dimension of the embedding space (a locked modality's feature dim)
    # input: emb encoders: "mlp" = FeatureMLP + adapter before the head; "linear" = the head alone on the features;
    # "kernel" = the head on the features' RBF similarities to the train split's (model.kernel) for the modalities
    # whose mean map starts random (video aside), the others as with linear; model.<modality>.trunk overrides it
    trunk: Literal["mlp", "linear", "kernel"] = "linear"
    kernel: KernelConfig = field(default_factory=KernelConfig)  # model.trunk: kernel
    # of the shards' features (standardize: with the train split's statistics), before the trunk;
    # model.<modality>.feature_norm overrides it (BENCHMARKS.md, "The per-modality recipe": what standardising the
    # text side gains in retrieval it costs the mixtures' hierarchy)
    feature_norm: Literal["none", "standardize", "l2"] = "none"
    image: EncoderConfig = field(default_factory=EncoderConfig)  # the image encoder
    # the text encoder: locked, the text model's own space (BENCHMARKS.md, "Real data": what won on real pairs)
    text: EncoderConfig = field(default_factory=lambda: EncoderConfig(lock=True))
    audio: EncoderConfig = field(default_factory=EncoderConfig)  # the audio encoder
    # the code encoder: starts from the text model's space, which embeds the code too
    code: EncoderConfig = field(default_factory=lambda: EncoderConfig(init="identity"))
    video: VideoEncoderConfig = field(default_factory=VideoEncoderConfig)  # the video encoder
    # what a head's uncertainty part (mixture weights and variances, cone aperture) reads: "trunk", what its mean map
    # reads (the features after model.feature_norm and the trunk); "features", the shards' features as stored, for
    # every modality with input: emb (a clip's frames averaged), so the mean can read standardised features or kernel
    # similarities while the uncertainty reads the raw ones (BENCHMARKS.md, "The per-modality recipe")
    uncertainty_input: Literal["trunk", "features"] = "trunk"
    n_components: int = bounded(2, min=1, max=64)  # mixture components K
    # a mixture component's variance: diagonal (one per dimension, PCME++'s) or isotropic (one per component, a head
    # of K outputs instead of K x embed_dim)
    variance: Literal["diagonal", "isotropic"] = "diagonal"
    logvar_min: float = -12.0  # smallest per-dimension log-variance of a mixture component
    # largest; the CSD sums variances over embed_dim, which must stay small beside squared distances (<= 4): at 384
    # dims e^-5 sums to 2.6 a component, e^-3 to 19 (BENCHMARKS.md, "Real data": mixture parity)
    logvar_max: float = -5.0
    theta_min: float = bounded(0.05, min=0.0, max=3.14159)  # smallest cone aperture (radians)
    theta_max: float = bounded(1.2, min=0.0, max=3.14159)  # largest cone aperture (radians)
    # the compositional layer: compose(parts) -> the compound's distribution (Deep Sets)
    composer: ComposerConfig = field(default_factory=ComposerConfig)

    def __post_init__(self) -> None:
        if self.logvar_min >= self.logvar_max:
            raise ParamsError(
                f"model.logvar_min ({self.logvar_min}) must be below model.logvar_max ({self.logvar_max})"
            )
        if self.theta_min >= self.theta_max:
            raise ParamsError(f"model.theta_min ({self.theta_min}) must be below model.theta_max ({self.theta_max})")

    def trunk_of(self, modality: str) -> str:
        """`model.<modality>.trunk`, or `model.trunk` where that is ""."""
        return getattr(self, modality).trunk or self.trunk

    def feature_norm_of(self, modality: str) -> str:
        """`model.<modality>.feature_norm`, or `model.feature_norm` where that is ""."""
        return getattr(self, modality).feature_norm or self.feature_norm

    def uses_kernel(self, modalities: Iterable[str]) -> bool:
        return any(self.trunk_of(m) == "kernel" for m in modalities)


@dataclass(frozen=True)
class LossConfig:
    # auto: point for model.geometry point, csd for mixtures (cones always use their own angular similarity)
    similarity: Literal["auto", "csd", "product_kernel", "point"] = "auto"
    csd_tau: float = bounded(1.0, min=1e-6)  # temperature of the CSD inside the mixture log-sum-exp
    init_logit_scale: float = bounded(14.285714, min=1e-3)  # CLIP's 1/0.07
    max_logit_scale: float = bounded(100.0, min=1e-3)  # the learnable logit scale is clamped here
    label_smoothing: float = bounded(0.0, min=0.0, max=0.5)  # of the InfoNCE targets
    entropy_weight: float = 0.0  # mixture-weight entropy term
    kl_weight: float = bounded(1e-5, min=0.0)  # KL of each Gaussian to N(0, I) (VIB)
    # mixtures: Gaussian NLL of the partner's mean under each side's spread, so the variance learns the match error;
    # under InfoNCE the CSD's variance alone acts as a per-item bias against hubs (BENCHMARKS.md, "The harder world")
    uncertainty_nll_weight: float = bounded(0.0, min=0.0)
    # mixtures: each query's InfoNCE logits divided by 1 + this x its total variance (a per-query temperature, as
    # "Temperature as Uncertainty"), so that a query's variance changes its own row's softmax and learns how well
    # the query can be matched; retrieval ranks are unchanged (one positive factor a row)
    uncertainty_temperature: float = bounded(0.0, min=0.0)
    sinkhorn_weight: float = bounded(0.0, min=0.0)  # Sinkhorn OT between the components of positive pairs
    sinkhorn_reg: float = bounded(0.1, min=1e-6)  # its entropic regularisation
    sinkhorn_max_iters: int = bounded(200, min=1)  # its solver's step cap (badly scaled costs need ~30-90)
    sinkhorn_tol: float = bounded(1e-6, min=1e-14)  # its solver stops at this marginal error (L1) on every pair
    entailment_weight: float = bounded(0.2, min=0.0)  # cone entailment over the hierarchy
    composition_weight: float = bounded(0.5, min=0.0)  # InfoNCE of compose(parts) against the compound's caption
    # infonce: symmetric InfoNCE | sigmoid: PCME++'s pairwise loss, a binary cross-entropy of every pair's logit
    # scale x similarity + bias (a learnable bias) against "same group"
    objective: Literal["infonce", "sigmoid"] = "infonce"
    init_logit_bias: float = -10.0  # the sigmoid objective's learnable bias, at the start (SigLIP's)
    pseudo_positive_weight: float = bounded(0.0, min=0.0, max=1.0)  # sigmoid: pairs above a row's positive: label
    pseudo_positive_warmup_steps: int = bounded(0, min=0)  # no pseudo-positives for this many steps (a random start)
    # sigmoid, single process: this share of a batch's pairs has its first side's features mixed with another pair's
    # (PCME++'s mixed-sample augmentation), labels mixed alike
    mixup: float = bounded(0.0, min=0.0, max=1.0)
    # mixtures (ProLIP): a general description's distribution includes the caption's, the caption's the item's
    inclusion_weight: float = bounded(0.0, min=0.0)
    inclusion_scale: float = bounded(1.0, min=1e-6)  # slope of the inclusion test inside its log-sigmoid
    # mixtures: a more general description's total variance is larger, by variance_order_gap in its log (the cones'
    # aperture order, read the way the evaluation reads a mixture's uncertainty); what made the mixtures' uncertainty
    # and hierarchy pay (BENCHMARKS.md, "The variance order")
    variance_order_weight: float = bounded(1.0, min=0.0)
    variance_order_gap: float = bounded(0.2, min=0.0)  # how much larger, in log total variance, per step up
    # cones: margins of the entailment, per step up the hierarchy (caption over item, first general level over the
    # caption, then each level over the next; the last margin repeats). With the aperture order below, the best cone
    # option on the real sets and world-hard (BENCHMARKS.md, "Cone options toward containment AUC")
    entailment_margins: tuple[float, ...] = _list([0.0, 0.05, 0.1])
    aperture_weight: float = bounded(0.5, min=0.0)  # cones: a more general cone is wider, by aperture_gap
    aperture_gap: float = bounded(0.05, min=0.0)  # radians between a level's aperture and the next's
    # every geometry: InfoNCE of the items against each hierarchy level's descriptions, so middle levels are learned
    hierarchy_contrastive_weight: float = bounded(0.0, min=0.0)
    # video-text pairs: cross-entropy of a caption against its clip played backwards and shuffled, and of a clip
    # against its opposite-motion captions (rows with temporal contrasts), so that a temporal encoder uses the order
    temporal_weight: float = bounded(0.5, min=0.0)
    gather_with_grad: bool = True  # gather features across ranks with gradients (OpenCLIP's --gather-with-grad)
    local_loss: bool = False  # each rank scores its own rows against all (OpenCLIP's --local-loss)


@dataclass(frozen=True)
class TrainConfig:
    run_name: str = "default"  # outputs under data/models/<run_name>
    nproc: int = bounded(1, min=1, max=64)  # processes per node (torchrun --nproc-per-node)
    # torch CPU threads per process; 0: OMP_NUM_THREADS when set, else the CPUs this process may use (affinity and
    # cgroup quota) shared among the node's processes
    threads: int = bounded(0, min=0, max=1024)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when available
    epochs: int = bounded(400, min=1)  # passes over the training split (at most: train.patience stops earlier)
    max_steps: int = bounded(0, min=0)  # 0: as many as the epochs make
    lr: float = bounded(1e-3, min=0.0)  # AdamW learning rate (peak)
    weight_decay: float = bounded(0.1, min=0.0)  # AdamW weight decay (not on norms, biases, temperature)
    beta1: float = bounded(0.9, min=0.0, max=1.0)  # AdamW beta1
    beta2: float = bounded(0.98, min=0.0, max=1.0)  # AdamW beta2
    eps: float = bounded(1e-6, min=0.0)  # AdamW epsilon
    warmup_steps: int = bounded(0, min=0)  # linear warmup, then cosine decay
    min_lr_ratio: float = bounded(0.0, min=0.0, max=1.0)  # the cosine ends at lr x this
    grad_clip: float = bounded(1.0, min=0.0)  # 0: off
    accum_freq: int = bounded(1, min=1)  # micro-batches per step; the contrastive batch stays whole (cached features)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False  # torch.compile the encoders
    checkpoint_every: int = bounded(50, min=1)  # steps between checkpoints
    keep_checkpoints: int = bounded(2, min=1)  # checkpoints kept
    resume: str = ""  # "" | latest | <path>
    val_every: int = bounded(5, min=1)  # steps between validations
    best_metric: str = "val/mean_R@1"  # the validation metric that picks the best weights
    best_mode: Literal["max", "min"] = "max"  # higher or lower is better
    select: Literal["best", "last"] = "best"  # model.pt: the best validated weights, or the last ones
    # with select best: the compositional layer's weights from the validation of its own lowest composition loss
    # ("own"), or from the same step as the rest ("model"); its term converges after retrieval, which best_metric
    # follows (BENCHMARKS.md, "The composer every N steps")
    composer_select: Literal["own", "model"] = "own"
    patience: int = bounded(8, min=0)  # stop after this many validations without a better best_metric (0: never)
    log_every: int = bounded(10, min=1)  # steps between logged metrics (and a log line)
    tracking_uri: str = ""  # "": sqlite:///<project root>/mlflow.db
    experiment: str = "multigeometry"  # the MLflow experiment

    def __post_init__(self) -> None:
        check_name("train.run_name", self.run_name)


@dataclass(frozen=True)
class EvalConfig:
    """The evaluate stage: retrieval, uncertainty and hierarchy metrics of the trained model on one split."""

    split: Literal["train", "val", "test"] = "test"  # the split evaluated
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when available
    batch_size: int = bounded(256, min=1)  # samples per forward pass when embedding the split
    block_size: int = bounded(1024, min=1)  # queries per block of pair scores: memory is block_size x items
    # processes (torchrun --nproc-per-node): each ranks the queries against its 1/nproc of the gallery
    nproc: int = bounded(1, min=1, max=64)
    ks: tuple[int, ...] = _list([1, 5, 10])  # R@K reported as metrics
    curve_max_k: int = bounded(50, min=1)  # the recall@K plot runs K = 1 .. curve_max_k
    # a mixture's uncertainty (cones: the aperture)
    mixture_uncertainty: Literal["total_variance", "weight_entropy"] = "total_variance"
    uncertainty_quantiles: tuple[int, ...] = _list([10, 20, 30, 40, 50, 60, 70, 80, 90, 100])  # % most certain
    hierarchy: bool = True  # containment AUC and level-wise R@1 where the rows carry a hierarchy
    composition: bool = True  # R@1 of compose(parts) -> items beside the compound's caption, where rows have parts
    # video/temporal_R@1: a caption against its clip played backwards and shuffled, a clip against its caption's
    # opposite-motion contrasts (rows with a clip, a caption and temporal contrasts; evaluation/temporal.py)
    temporal: bool = True
    # speech cascade baseline for audio-text pairs: an ASR model ("" = off) whose transcripts features.text embeds
    cascade: str = ""
    grid_queries: int = bounded(4, min=0)  # queries per direction in the top-k PNG grids (0: no grids)
    grid_k: int = bounded(5, min=1, max=20)  # items per query in the grids

    def __post_init__(self) -> None:
        if not self.ks or any(k < 1 for k in self.ks):
            raise ParamsError(f"eval.ks: {list(self.ks)} must be a non-empty list of integers >= 1")
        if not self.uncertainty_quantiles or any(not 0 < q <= 100 for q in self.uncertainty_quantiles):
            raise ParamsError(
                f"eval.uncertainty_quantiles: {list(self.uncertainty_quantiles)} must be percentages in (0, 100]"
            )


@dataclass(frozen=True)
class RegistryConfig:
    """The register stage: the MLflow pyfunc model, registered (and given `alias`) only when the gate passes, and the
    defaults of the `embed` and `search` commands."""

    model_name: str = "multigeometry"  # the registered model's name
    alias: str = "champion"  # moved to each version that passes the gate
    gate_metric: str = "mean_R@1"  # a key of the evaluate stage's metrics.json; higher is better
    min_metric: float = 0.0  # the gate: gate_metric >= min_metric and > the current champion's
    tracking_uri: str = ""  # "": sqlite:///<project root>/mlflow.db (as train.tracking_uri)
    experiment: str = "multigeometry-registry"  # the experiment of the runs that log the pyfunc model
    search_split: Literal["train", "val", "test"] = "test"  # what `multigeometry search` indexes by default
    search_k: int = bounded(10, min=1)  # results per query of `multigeometry search`
    # search and the pyfunc's search: a modality with at least this many items is searched approximately (FAISS IVF,
    # candidates re-ranked exactly); 0: always exact. Evaluation is always exact
    ann_threshold: int = bounded(100000, min=0)
    ann_nlist: int = bounded(0, min=0)  # lists of the IVF index (0: about 4 x sqrt(rows))
    ann_nprobe: int = bounded(32, min=1)  # lists scanned per query component
    # rows taken per query component, re-ranked exactly (K=2 mixtures at 1M: recall@10 0.87 at 128, 0.98 at 256)
    ann_candidates: int = bounded(256, min=1)
    ann_train_per_list: int = bounded(64, min=39)  # k-means training rows per list

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\- ]*", self.model_name):
            raise ParamsError(f"registry.model_name: {self.model_name!r} must be a non-empty name (letters, digits, "
                              "'_', '-', '.', spaces)")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]{0,254}", self.alias) or self.alias.lower() == "latest" \
                or re.fullmatch(r"[vV]\d+", self.alias):
            raise ParamsError(f"registry.alias: {self.alias!r} must be letters, digits, '_' or '-', start with a "
                              "letter or '_', and not be 'latest' or v<digits> (MLflow reserves them)")
        if not self.gate_metric:
            raise ParamsError("registry.gate_metric: empty; name a key of data/eval/<run>/metrics.json")


@dataclass(frozen=True)
class OrchestrationConfig:
    """The Prefect flow only (`pipelines/`): where shard creation fans out, how training is launched, retries. No DVC
    stage reads these, so changing them never re-runs a stage."""

    dask_address: str = ""  # "": a local Dask cluster per flow run; else an existing scheduler, e.g. tcp://host:8786
    dask_workers: int = bounded(2, min=1, max=256)  # worker processes of the local cluster
    shards_per_task: int = bounded(1, min=1)  # shards written by one Dask task
    launcher: str = ""  # "": torchrun --standalone; else a command template with {nproc} and {args}
    retries: int = bounded(3, min=0, max=20)  # prepare and register: attempts after the first failure
    retry_delay_s: float = bounded(10.0, min=0.0)  # exponential backoff: delay_s, 2 x delay_s, 4 x delay_s, ...

    def __post_init__(self) -> None:
        if self.launcher:
            try:
                self.launcher.format(nproc=1, args="")
            except (KeyError, IndexError, ValueError) as e:
                raise ParamsError(f"orchestration.launcher: {self.launcher!r} is not a valid template ({e!r}); "
                                  "allowed placeholders: {nproc}, {args}") from e
            if "{args}" not in self.launcher:
                raise ParamsError(f"orchestration.launcher: {self.launcher!r} must contain {{args}} (the module "
                                  "and arguments to run, `-m multigeometry train --params ...`)")


# ---------------------------------------------------------------------------------------------------------------------
# the whole tree
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Params:
    seed: int = bounded(0, min=0, max=SEED_MAX)  # every random choice: splits, initialisation, shuffling
    data: DataConfig = field(default_factory=DataConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    pairs: DatasetPairConfig = field(default_factory=DatasetPairConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    orchestration: OrchestrationConfig = field(default_factory=OrchestrationConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    def section_hash(self, *keys: str) -> str:
        """A stable hash of the named sections (dotted keys), for stamps and cache keys."""
        plain = self.to_dict()
        picked = {k: _get_dotted(plain, k) for k in sorted(keys)}
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


def to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def _get_dotted(tree: dict, key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        node = node[part]
    return node


# ---------------------------------------------------------------------------------------------------------------------
# building dataclasses from plain data, with errors that name the key
# ---------------------------------------------------------------------------------------------------------------------


_FLOAT_1_2 = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of {_type_name(typing.get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _build(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            if option is type(None) and value is None:
                return None
            try:
                return _build(option, value, key)
            except ParamsError:
                continue
        raise ParamsError(f"{key}: {value!r} is not {' or '.join(_type_name(t) for t in typing.get_args(tp))}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ParamsError(f"{key}: {value!r} is not allowed; allowed: {', '.join(repr(a) for a in allowed)}")
        return value
    if origin in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ParamsError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
        (inner, *_rest) = typing.get_args(tp)
        return tuple(_build(inner, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
        _kt, vt = typing.get_args(tp)
        return {str(k): _build(vt, v, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
        if not -INT_LIMIT <= value < INT_LIMIT:
            raise ParamsError(f"{key}: {value!r} does not fit a 64-bit integer")
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT_1_2.fullmatch(value.strip()):
            value = float(value)  # YAML 1.2 (DVC's ruamel) reads 1e-3 as a number; PyYAML's 1.1 reads a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise ParamsError(f"{key}: {value!r} is not a finite number")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported params type {tp!r} at {key}")


def build_dataclass(cls: type, raw: Any, prefix: str = "") -> Any:
    """Build `cls` from a mapping; missing keys take their defaults, unknown keys are errors."""
    where = prefix or "params"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{where}: expected a mapping, got {type(raw).__name__} {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            dotted = f"{prefix}.{key}" if prefix else str(key)
            near = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean {(prefix + '.' if prefix else '') + near[0]!r}?" if near else ""
            raise ParamsError(f"{dotted}: unknown key{hint} Valid keys here: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        dotted = f"{prefix}.{name}" if prefix else name
        value = _build(hints[name], raw[name], dotted)
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if is_number and ((lo is not None and value < lo) or (hi is not None and value > hi)):
            rng = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
            raise ParamsError(f"{dotted}: {value!r} is out of range; allowed: {rng}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ParamsError:
        raise
    except (TypeError, ValueError) as e:  # pragma: no cover - a dataclass check that is not a ParamsError
        raise ParamsError(f"{where}: {e}") from e


# ---------------------------------------------------------------------------------------------------------------------
# overrides and loading
# ---------------------------------------------------------------------------------------------------------------------


def plain_tree(value: Any, key: str = "", _path: tuple[int, ...] = ()) -> Any:
    """A copy of parsed YAML in plain JSON types (mappings with string keys, lists, strings, numbers, booleans,
    null); anything else (a date, a timestamp, binary, a set) or a recursive anchor is an error naming the key."""
    where = key or "params"
    if isinstance(value, (dict, list, tuple)):
        if id(value) in _path:
            raise ParamsError(f"{where}: a recursive YAML anchor (the value contains itself)")
        inner = (*_path, id(value))
        if isinstance(value, dict):
            return {str(k): plain_tree(v, f"{key}.{k}" if key else str(k), inner) for k, v in value.items()}
        return [plain_tree(v, f"{key}[{i}]", inner) for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise ParamsError(f"{where}: {value!s} is a {type(value).__name__} (as YAML reads it); quote it for a string, "
                      "or give a number, true/false, a list or a mapping")


def apply_override(tree: dict, assignment: str) -> None:
    """Apply one `dotted.key=value` override in place; the value is parsed as YAML, as `dvc exp run -S` does."""
    if "=" not in assignment:
        raise ParamsError(f"override {assignment!r}: expected key=value")
    key, _, text = assignment.partition("=")
    key = key.strip()
    if not key:
        raise ParamsError(f"override {assignment!r}: empty key")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except (yaml.YAMLError, RecursionError) as e:
        raise ParamsError(f"override {assignment!r}: {key}: the value is not valid YAML "
                          f"({' '.join(str(e).split())})") from e
    value = plain_tree(value, key)
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ParamsError(f"override {assignment!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def params_from_dict(raw: dict | None, overrides: typing.Iterable[str] = ()) -> Params:
    tree = plain_tree(raw or {})  # a deep copy with plain types
    for assignment in overrides:
        apply_override(tree, assignment)
    return build_dataclass(Params, tree)


def load_params(path: str | Path = "params.yaml", overrides: typing.Iterable[str] = ()) -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: params file not found")
    if not path.is_file():
        raise ParamsError(f"{path}: not a file (a params file is a YAML file, e.g. params.yaml)")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ParamsError(f"{path}: line {line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save it as UTF-8") \
            from e
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from e
    except RecursionError as e:
        raise ParamsError(f"{path}: not valid YAML: nested too deeply") from e
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path}: the top level must be a mapping, got {type(raw).__name__}")
    try:
        return params_from_dict(raw, overrides)
    except ParamsError as e:
        raise ParamsError(f"{path}: {e}") from e
