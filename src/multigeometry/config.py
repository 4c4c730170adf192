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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

MODALITIES = ("image", "text", "audio", "code")
Modality = Literal["image", "text", "audio", "code"]
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
    train: float = bounded(0.8, min=0.0, max=1.0)
    val: float = bounded(0.1, min=0.0, max=1.0)
    test: float = bounded(0.1, min=0.0, max=1.0)

    def __post_init__(self) -> None:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ParamsError(f"data.splits: fractions must add up to 1, got {total:g} ({self})")


@dataclass(frozen=True)
class WorldConfig:
    """The embedded generated world (`data.source: world`)."""

    n_items: int = bounded(600, min=1)
    captions_per_item: int = bounded(1, min=1, max=8)
    image_size: int = bounded(96, min=32, max=1024)
    image_format: Literal["png", "jpg"] = "png"
    max_objects: int = bounded(2, min=1, max=2)
    noise: float = bounded(6.0, min=0.0, max=64.0)
    audio: bool = True
    audio_sample_rate: int = bounded(16000, min=8000, max=48000)
    workers: int = bounded(2, min=1, max=64)


@dataclass(frozen=True)
class HFConfig:
    """A Hugging Face `datasets` source (`data.source: hf:<name or path>`)."""

    layout: Literal["flickr30k", "audio_caption", "code_docstring", "generic"] = "generic"
    config: str = ""
    data_files: tuple[str, ...] = ()
    load_split: str = ""
    split_column: str = ""
    group_column: str = ""
    columns: dict[str, str] = field(default_factory=dict)
    hierarchy_columns: tuple[str, ...] = ()
    split_names: dict[str, str] = field(default_factory=dict)
    max_rows: int = bounded(0, min=0)


@dataclass(frozen=True)
class StdlibCodeConfig:
    """Code–docstring pairs from the running interpreter's standard library (`data.source: stdlib-code`)."""

    max_samples: int = bounded(2000, min=1)
    min_doc_chars: int = bounded(16, min=1)
    max_code_lines: int = bounded(60, min=3)
    packages: tuple[str, ...] = ()


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "world"
    source: str = "world"
    splits: SplitFractions = field(default_factory=SplitFractions)
    world: WorldConfig = field(default_factory=WorldConfig)
    hf: HFConfig = field(default_factory=HFConfig)
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
    max_bad_fraction: float = bounded(0.05, min=0.0, max=1.0)
    modalities: tuple[Modality, ...] = _list(["image", "text", "audio", "code"])
    text_min_chars: int = bounded(1, min=1)
    text_max_chars: int = bounded(2000, min=1)
    image_min_side: int = bounded(32, min=1)
    image_max_pixels: int = bounded(89_478_485, min=1)  # refused from the header, before decoding (Pillow's default)
    audio_sample_rates: tuple[int, ...] = _list([])  # allowed rates; empty: any rate >= audio_min_sample_rate
    audio_min_sample_rate: int = bounded(4000, min=1)  # the shard stage resamples every clip to audio.sample_rate
    audio_min_seconds: float = bounded(0.2, min=0.0)
    audio_max_seconds: float = bounded(30.0, min=0.0)
    audio_min_rms: float = bounded(1e-4, min=0.0)
    code_max_bytes: int = bounded(1_000_000, min=1)  # larger source files are quarantined unread
    data_docs: bool = True


# ---------------------------------------------------------------------------------------------------------------------
# shards: audio features, pretrained features, image handling
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioConfig:
    """Audio decoding and log-mel features; the defaults are Whisper's (16 kHz, 80 mels, 25 ms window, 10 ms hop)."""

    sample_rate: int = bounded(16000, min=1000, max=96000)
    max_seconds: float = bounded(10.0, min=0.1)
    crop: Literal["start", "center"] = "start"
    pad: Literal["none", "zeros"] = "none"
    n_mels: int = bounded(80, min=8, max=256)
    win_ms: float = bounded(25.0, min=1.0)
    hop_ms: float = bounded(10.0, min=1.0)
    f_min: float = bounded(0.0, min=0.0)
    f_max: float = bounded(8000.0, min=1.0)

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
    pooling: Literal["mean", "cls", "max"] = "mean"
    batch_size: int = bounded(32, min=1)
    max_tokens: int = bounded(128, min=1)  # text and code: truncation length
    # audio (Whisper): pad each clip to the 30 s window Whisper was trained on and pool only the clip's frames
    pad_to_window: bool = False
    # audio with an ASR model (whisper-tiny.en-asr): the text model that embeds its transcripts
    transcript_model: str = "all-minilm-l6-v2"


@dataclass(frozen=True)
class FeaturesConfig:
    image: FeatureModelConfig = field(default_factory=FeatureModelConfig)
    text: FeatureModelConfig = field(default_factory=FeatureModelConfig)
    audio: FeatureModelConfig = field(default_factory=FeatureModelConfig)
    code: FeatureModelConfig = field(default_factory=FeatureModelConfig)


@dataclass(frozen=True)
class ShardConfig:
    max_samples: int = bounded(256, min=1)
    max_bytes: int = bounded(64_000_000, min=1024)
    max_image_side: int = bounded(512, min=8)
    workers: int = bounded(2, min=1, max=256)
    # a manifest without val rows: this fraction of the train groups becomes the val split (0: no val split)
    val_from_train: float = bounded(0.1, min=0.0, max=0.9)


# ---------------------------------------------------------------------------------------------------------------------
# pairing, model and loss
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairSpec:
    a: Modality = "image"
    b: Modality = "text"
    weight: float = bounded(1.0, min=0.0)

    def __post_init__(self) -> None:
        if self.a == self.b:
            raise ParamsError(f"pairs.pairs: a pair needs two different modalities, got {self.a!r} twice")


@dataclass(frozen=True)
class DatasetPairConfig:
    """Which modalities are paired for training and evaluation, and how several pairings are mixed."""

    pairs: tuple[PairSpec, ...] = field(
        default_factory=lambda: (
            PairSpec("image", "text"),
            PairSpec("audio", "text"),
            PairSpec("code", "text"),
        )
    )

    def __post_init__(self) -> None:
        if not self.pairs:
            raise ParamsError("pairs.pairs: at least one pair of modalities is needed")


@dataclass(frozen=True)
class AugmentConfig:
    """Image augmentation (train) and resizing (eval); mean and std are the image encoder's."""

    image_size: int = bounded(96, min=8)
    scale_min: float = bounded(0.7, min=0.05, max=1.0)
    color_jitter: float = bounded(0.2, min=0.0, max=1.0)
    hflip: bool = False  # off: the world's captions say left and right
    mean: tuple[float, ...] = _list([0.485, 0.456, 0.406])
    std: tuple[float, ...] = _list([0.229, 0.224, 0.225])


@dataclass(frozen=True)
class LoaderConfig:
    """How samples are read, tokenised and batched by both dataset classes."""

    batch_size: int = bounded(64, min=0)  # 0: the whole training split in one step (full batch)
    workers: int = bounded(2, min=0, max=64)
    shuffle_buffer: int = bounded(512, min=0)
    resampled: bool = False
    tokenizer: str = "all-minilm-l6-v2"  # catalogue name, hub id or local path
    max_tokens: int = bounded(64, min=1)
    padding: Literal["longest", "max_length"] = "longest"
    # feature-only models (every encoder `input: emb`): decoded samples kept in memory between epochs, up to this size
    cache_mb: int = bounded(1024, min=0)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class EncoderConfig:
    """One modality's encoder: a trainable trunk over the shards' pretrained features (`input: emb`), or a backbone
    over raw inputs (`input: raw`: images, token ids, log-mels) — a pretrained model by catalogue name, hub id or local
    path (transformers `AutoModel`, or `torchvision:<name>`), or a small from-scratch network when `backbone` is ""."""

    input: Literal["emb", "raw"] = "emb"
    backbone: str = ""
    freeze: bool = True
    unfreeze_last_n: int = bounded(0, min=0)
    grad_checkpointing: bool = False
    hidden_dim: int = bounded(256, min=4)
    layers: int = bounded(2, min=1, max=48)
    dropout: float = bounded(0.0, min=0.0, max=0.9)
    # model.trunk: linear, input: emb only. The head's mean map from the frozen features starts at the identity
    # (same space as the target: a text model's) or random; `lock` keeps it the identity: the embedding's directions
    # are the pretrained features themselves and only the uncertainty trains (model.embed_dim = the feature dim)
    init: Literal["random", "identity"] = "random"
    lock: bool = False
    feature_noise: float = bounded(0.0, min=0.0, max=4.0)  # training only: Gaussian noise x its RMS on the features


@dataclass(frozen=True)
class ComposerConfig:
    """The compositional layer: a permutation-invariant network that maps the distributions of a compound's parts
    ("red", "a circle") to the compound's distribution ("a red circle"), in the model's geometry."""

    enabled: bool = True
    hidden_dim: int = bounded(128, min=4)
    layers: int = bounded(1, min=1, max=8)


@dataclass(frozen=True)
class ModelConfig:
    geometry: Literal["mixture", "cone", "point"] = "mixture"
    embed_dim: int = bounded(128, min=2)
    # input: emb encoders: "mlp" = FeatureMLP + adapter before the head; "linear" = the head alone on the features
    trunk: Literal["mlp", "linear"] = "mlp"
    feature_norm: Literal["none", "standardize", "l2"] = "none"  # of the shards' features, before the trunk
    image: EncoderConfig = field(default_factory=EncoderConfig)
    text: EncoderConfig = field(default_factory=EncoderConfig)
    audio: EncoderConfig = field(default_factory=EncoderConfig)
    code: EncoderConfig = field(default_factory=EncoderConfig)
    n_components: int = bounded(2, min=1, max=64)
    logvar_min: float = -12.0
    logvar_max: float = -3.0
    theta_min: float = bounded(0.05, min=0.0, max=3.14159)
    theta_max: float = bounded(1.2, min=0.0, max=3.14159)
    composer: ComposerConfig = field(default_factory=ComposerConfig)

    def __post_init__(self) -> None:
        if self.logvar_min >= self.logvar_max:
            raise ParamsError(
                f"model.logvar_min ({self.logvar_min}) must be below model.logvar_max ({self.logvar_max})"
            )
        if self.theta_min >= self.theta_max:
            raise ParamsError(f"model.theta_min ({self.theta_min}) must be below model.theta_max ({self.theta_max})")


@dataclass(frozen=True)
class LossConfig:
    # auto: point for model.geometry point, csd for mixtures (cones always use their own angular similarity)
    similarity: Literal["auto", "csd", "product_kernel", "point"] = "auto"
    csd_tau: float = bounded(1.0, min=1e-6)
    init_logit_scale: float = bounded(1 / 0.07, min=1e-3)
    max_logit_scale: float = bounded(100.0, min=1e-3)
    label_smoothing: float = bounded(0.0, min=0.0, max=0.5)
    entropy_weight: float = 0.0
    kl_weight: float = bounded(1e-5, min=0.0)
    sinkhorn_weight: float = bounded(0.0, min=0.0)
    sinkhorn_reg: float = bounded(0.1, min=1e-6)
    sinkhorn_iters: int = bounded(50, min=1)
    entailment_weight: float = bounded(0.2, min=0.0)
    composition_weight: float = bounded(0.5, min=0.0)  # InfoNCE of compose(parts) against the compound's caption
    gather_with_grad: bool = True
    local_loss: bool = False


@dataclass(frozen=True)
class TrainConfig:
    run_name: str = "default"
    nproc: int = bounded(1, min=1, max=64)  # processes per node (torchrun --nproc-per-node)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    epochs: int = bounded(4, min=1)
    max_steps: int = bounded(0, min=0)  # 0: as many as the epochs make
    lr: float = bounded(1e-3, min=0.0)
    weight_decay: float = bounded(0.1, min=0.0)
    beta1: float = bounded(0.9, min=0.0, max=1.0)
    beta2: float = bounded(0.98, min=0.0, max=1.0)
    eps: float = bounded(1e-6, min=0.0)
    warmup_steps: int = bounded(20, min=0)
    min_lr_ratio: float = bounded(0.0, min=0.0, max=1.0)
    grad_clip: float = bounded(1.0, min=0.0)  # 0: off
    accum_freq: int = bounded(1, min=1)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False
    checkpoint_every: int = bounded(50, min=1)
    keep_checkpoints: int = bounded(2, min=1)
    resume: str = ""  # "" | latest | <path>
    val_every: int = bounded(50, min=1)
    best_metric: str = "val/mean_R@1"
    best_mode: Literal["max", "min"] = "max"
    select: Literal["best", "last"] = "best"  # model.pt: the best validated weights, or the last ones
    patience: int = bounded(0, min=0)  # stop after this many validations without a better best_metric (0: never)
    log_every: int = bounded(10, min=1)
    tracking_uri: str = ""  # "": sqlite:///<project root>/mlflow.db
    experiment: str = "multigeometry"

    def __post_init__(self) -> None:
        check_name("train.run_name", self.run_name)


@dataclass(frozen=True)
class EvalConfig:
    """The evaluate stage: retrieval, uncertainty and hierarchy metrics of the trained model on one split."""

    split: Literal["train", "val", "test"] = "test"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = bounded(256, min=1)  # samples per forward pass when embedding the split
    block_size: int = bounded(1024, min=1)  # queries per block of pair scores: memory is block_size x items
    ks: tuple[int, ...] = _list([1, 5, 10])  # R@K reported as metrics
    curve_max_k: int = bounded(50, min=1)  # the recall@K plot runs K = 1 .. curve_max_k
    mixture_uncertainty: Literal["total_variance", "weight_entropy"] = "total_variance"
    uncertainty_quantiles: tuple[int, ...] = _list([10, 20, 30, 40, 50, 60, 70, 80, 90, 100])  # % most certain
    hierarchy: bool = True  # containment AUC and level-wise R@1 where the rows carry a hierarchy
    composition: bool = True  # R@1 of compose(parts) -> items beside the compound's caption, where rows have parts
    # speech cascade baseline for audio-text pairs: an ASR model ("" = off) whose transcripts features.text embeds
    cascade: str = ""
    grid_queries: int = bounded(4, min=0)  # queries per direction in the top-k PNG grids (0: no grids)
    grid_k: int = bounded(5, min=1, max=20)

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
    seed: int = bounded(0, min=0, max=SEED_MAX)
    data: DataConfig = field(default_factory=DataConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
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
