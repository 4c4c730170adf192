"""Read CTranslate2's ``model.bin`` and turn a Whisper encoder stored there into a transformers `WhisperEncoder`.

The binary layout, as CTranslate2 writes it (``python/ctranslate2/specs/model_spec.py``, ``ModelSpec._serialize``)
and reads it (``src/models/model.cc``, ``Model::load``), all little-endian:

- ``uint32`` binary version (1 to 6 are known);
- from version 2: the spec name as a string, then the ``uint32`` spec revision;
- ``uint32`` number of variables, then for each: its name (a string), ``uint8`` rank, ``rank`` x ``uint32`` dims,
  then from version 4 a ``uint8`` dtype id (0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16) and a
  ``uint32`` byte count, before version 4 a ``uint8`` item size (4 float32, 2 int16, 1 int8) and a ``uint32``
  element count; then the raw bytes, C order;
- from version 3: ``uint32`` number of aliases, then pairs of strings (alias, name of the variable it stands for).

A string is a ``uint16`` length that counts a trailing NUL, then that many bytes. Quantized weights (int8, int16)
come with a ``<name>_scale`` variable: int8 rows are scaled per output channel, ``float = int8 / scale``.

CTranslate2 fuses Whisper's encoder self-attention projections into one ``linear_0`` (q, k, v stacked along the
output dimension, with a zero bias for k, which has none in Whisper) and names the rest after its own spec
(``self_attention/linear_1`` = out_proj, ``ffn/linear_0`` = fc1, ``ffn/linear_1`` = fc2, layer norms as
``gamma``/``beta``, positions as ``position_encodings/encodings``).
"""

from __future__ import annotations

import json
import logging
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch

log = logging.getLogger(__name__)

KNOWN_BINARY_VERSIONS = range(1, 7)

# dtype ids of binary version >= 4 (the DataType enum of include/ctranslate2/types.h)
_DTYPES: dict[int, tuple[str, torch.dtype, int]] = {
    0: ("float32", torch.float32, 4),
    1: ("int8", torch.int8, 1),
    2: ("int16", torch.int16, 2),
    3: ("int32", torch.int32, 4),
    4: ("float16", torch.float16, 2),
    5: ("bfloat16", torch.bfloat16, 2),
}
# binary versions < 4 stored the item size instead of a dtype id
_LEGACY_ITEM_SIZES: dict[int, int] = {4: 0, 2: 2, 1: 1}


class CT2FormatError(ValueError):
    """A ``model.bin`` that does not follow CTranslate2's layout, or lacks what a conversion needs."""


@dataclass(frozen=True)
class CT2Variable:
    """One stored variable: its shape and dtype name, and its values unless they were skipped."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    value: torch.Tensor | None


@dataclass
class CT2Model:
    """What a ``model.bin`` holds."""

    path: Path
    binary_version: int
    spec: str
    revision: int
    variables: dict[str, CT2Variable] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def resolve(self, name: str) -> CT2Variable:
        """The variable stored under ``name``, following an alias."""
        seen = set()
        while name in self.aliases and name not in self.variables:
            if name in seen:
                raise CT2FormatError(f"{self.path}: alias cycle at {name!r}")
            seen.add(name)
            name = self.aliases[name]
        if name not in self.variables:
            raise CT2FormatError(f"{self.path}: variable {name!r} not found ({len(self.variables)} variables)")
        return self.variables[name]

    def has(self, name: str) -> bool:
        return name in self.variables or name in self.aliases

    def tensor(self, name: str) -> torch.Tensor:
        """The values of ``name`` as stored (dtype included); an error if they were skipped at read time."""
        var = self.resolve(name)
        if var.value is None:
            raise CT2FormatError(f"{self.path}: the values of {name!r} were not read")
        return var.value

    def float_tensor(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The values of ``name`` as floats, dequantized with ``<name>_scale`` when stored as int8 or int16."""
        value = self.tensor(name)
        if value.is_floating_point():
            return value.to(dtype)
        scale_name = f"{self.resolve(name).name}_scale"
        if not self.has(scale_name):
            raise CT2FormatError(f"{self.path}: {name!r} is stored as {value.dtype} without {scale_name!r}")
        scale = self.tensor(scale_name).to(torch.float32)
        values = value.to(torch.float32)
        if scale.dim() == 1 and values.dim() >= 1:  # int8: one scale per output channel (row)
            scale = scale.reshape(-1, *([1] * (values.dim() - 1)))
        return (values / scale).to(dtype)

    def scalar(self, name: str) -> int | float:
        return self.tensor(name).item()


def _read_exact(f: BinaryIO, n: int, path: Path, what: str) -> bytes:
    position = f.tell()
    data = f.read(n)
    if len(data) != n:
        raise CT2FormatError(f"{path}: the file ends at byte {position + len(data)} while reading {what} ({n} bytes)")
    return data


def _read(f: BinaryIO, fmt: str, path: Path, what: str) -> Any:
    size = struct.calcsize("<" + fmt)
    return struct.unpack("<" + fmt, _read_exact(f, size, path, what))[0]


def _read_string(f: BinaryIO, path: Path, what: str) -> str:
    length = _read(f, "H", path, f"the length of {what}")
    raw = _read_exact(f, length, path, what)
    return raw.split(b"\0", 1)[0].decode("utf-8")


def read_ct2_model(path: str | Path, load: Callable[[str], bool] | None = None) -> CT2Model:
    """Read a CTranslate2 ``model.bin`` (the file, or the folder holding it).

    ``load`` picks, by name, the variables whose values are read (an alias picks the variable it stands for, and a
    quantized weight brings its ``_scale``); the others keep only their name, shape and dtype (``value`` None).
    Scalars are always read. By default every variable is read.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CTranslate2 model file not found")
    size = path.stat().st_size
    offsets: dict[str, tuple[int, int, torch.dtype]] = {}
    with path.open("rb") as f:
        version = _read(f, "I", path, "the binary version")
        if version not in KNOWN_BINARY_VERSIONS:
            raise CT2FormatError(
                f"{path}: binary version {version} is not one this reader knows "
                f"({KNOWN_BINARY_VERSIONS.start}-{KNOWN_BINARY_VERSIONS.stop - 1}); is it a CTranslate2 model.bin?"
            )
        spec, revision = "", 1
        if version >= 2:
            spec = _read_string(f, path, "the spec name")
            revision = _read(f, "I", path, "the spec revision")
        model = CT2Model(path=path, binary_version=version, spec=spec, revision=revision)
        # Pass 1: every variable's header; the values are skipped and their offsets kept.
        n_variables = _read(f, "I", path, "the number of variables")
        for index in range(n_variables):
            name = _read_string(f, path, f"the name of variable #{index}")
            rank = _read(f, "B", path, f"the rank of {name!r}")
            shape = tuple(_read(f, "I", path, f"the shape of {name!r}") for _ in range(rank))
            if version >= 4:
                type_id = _read(f, "B", path, f"the dtype of {name!r}")
                if type_id not in _DTYPES:
                    raise CT2FormatError(f"{path}: variable {name!r} has an unknown dtype id {type_id}")
                num_bytes = _read(f, "I", path, f"the size of {name!r}")
            else:
                item_size = _read(f, "B", path, f"the item size of {name!r}")
                if item_size not in _LEGACY_ITEM_SIZES:
                    raise CT2FormatError(f"{path}: variable {name!r} has an unknown item size {item_size}")
                type_id = _LEGACY_ITEM_SIZES[item_size]
                num_bytes = _read(f, "I", path, f"the size of {name!r}") * item_size
            dtype_name, dtype, item = _DTYPES[type_id]
            if math.prod(shape) * item != num_bytes:
                raise CT2FormatError(
                    f"{path}: variable {name!r} of shape {shape} and dtype {dtype_name} should hold "
                    f"{math.prod(shape) * item} bytes, the file says {num_bytes}"
                )
            if f.tell() + num_bytes > size:
                raise CT2FormatError(
                    f"{path}: the file ends at byte {size} inside the values of {name!r} "
                    f"({num_bytes} bytes from byte {f.tell()}); the file is truncated"
                )
            offsets[name] = (f.tell(), num_bytes, dtype)
            model.variables[name] = CT2Variable(name=name, shape=shape, dtype=dtype_name, value=None)
            f.seek(num_bytes, 1)
        if version >= 3:
            n_aliases = _read(f, "I", path, "the number of aliases")
            for _ in range(n_aliases):
                alias = _read_string(f, path, "an alias")
                model.aliases[alias] = _read_string(f, path, f"the target of alias {alias!r}")
        # Pass 2: the values that were asked for.
        wanted = set()
        for name in [*model.variables, *model.aliases]:
            if load is None or load(name) or not model.resolve(name).shape:
                target = model.resolve(name).name
                wanted.add(target)
                if f"{target}_scale" in model.variables:
                    wanted.add(f"{target}_scale")
        for name in sorted(wanted, key=lambda n: offsets[n][0]):
            offset, num_bytes, dtype = offsets[name]
            f.seek(offset)
            raw = bytearray(_read_exact(f, num_bytes, path, f"the values of {name!r}"))
            var = model.variables[name]
            value = (
                torch.frombuffer(raw, dtype=dtype).reshape(var.shape)
                if num_bytes
                else torch.empty(var.shape, dtype=dtype)
            )
            model.variables[name] = CT2Variable(name=name, shape=var.shape, dtype=var.dtype, value=value)
    return model


# ---------------------------------------------------------------------------------------------------------------------
# Whisper encoder: CTranslate2 names -> transformers names
# ---------------------------------------------------------------------------------------------------------------------

_LAYER = re.compile(r"^(encoder|decoder)/layer_(\d+)/")


def _n_layers(model: CT2Model, side: str) -> int:
    names = [*model.variables, *model.aliases]
    indices = {int(m.group(2)) for name in names if (m := _LAYER.match(name)) and m.group(1) == side}
    if not indices:
        return 0
    if indices != set(range(max(indices) + 1)):
        raise CT2FormatError(f"{model.path}: {side} layers are not numbered 0..N-1: {sorted(indices)}")
    return max(indices) + 1


def _check_whisper(model: CT2Model) -> None:
    if model.spec and model.spec != "WhisperSpec":
        raise CT2FormatError(f"{model.path}: spec {model.spec!r} is not a Whisper model (expected 'WhisperSpec')")
    for name in ("encoder/conv1/weight", "encoder/conv2/weight", "encoder/position_encodings/encodings"):
        if not model.has(name):
            raise CT2FormatError(f"{model.path}: {name!r} is missing; not a CTranslate2 Whisper model")


def whisper_encoder_state_dict(model: CT2Model, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The state dict of a transformers `WhisperEncoder` from a CTranslate2 Whisper model's ``encoder/*`` variables."""
    _check_whisper(model)
    get = model.float_tensor
    sd: dict[str, torch.Tensor] = {}
    for i in (1, 2):
        sd[f"conv{i}.weight"] = get(f"encoder/conv{i}/weight", dtype)
        sd[f"conv{i}.bias"] = get(f"encoder/conv{i}/bias", dtype)
    sd["embed_positions.weight"] = get("encoder/position_encodings/encodings", dtype)
    sd["layer_norm.weight"] = get("encoder/layer_norm/gamma", dtype)
    sd["layer_norm.bias"] = get("encoder/layer_norm/beta", dtype)
    d_model = sd["conv1.weight"].shape[0]
    for i in range(_n_layers(model, "encoder")):
        src, dst = f"encoder/layer_{i}", f"layers.{i}"
        qkv_w = get(f"{src}/self_attention/linear_0/weight", dtype)
        qkv_b = get(f"{src}/self_attention/linear_0/bias", dtype)
        if qkv_w.shape[0] != 3 * d_model or qkv_b.shape[0] != 3 * d_model:
            raise CT2FormatError(
                f"{model.path}: {src}/self_attention/linear_0 has {qkv_w.shape[0]} outputs, expected 3 x {d_model} "
                "(fused q, k, v)"
            )
        q_w, k_w, v_w = qkv_w.split(d_model, dim=0)
        q_b, k_b, v_b = qkv_b.split(d_model, dim=0)
        if k_b.abs().max().item() > 0:
            log.warning("%s: %s has a non-zero key bias, which WhisperEncoder has no place for", model.path, src)
        sd[f"{dst}.self_attn.q_proj.weight"] = q_w.clone()
        sd[f"{dst}.self_attn.q_proj.bias"] = q_b.clone()
        sd[f"{dst}.self_attn.k_proj.weight"] = k_w.clone()
        sd[f"{dst}.self_attn.v_proj.weight"] = v_w.clone()
        sd[f"{dst}.self_attn.v_proj.bias"] = v_b.clone()
        sd[f"{dst}.self_attn.out_proj.weight"] = get(f"{src}/self_attention/linear_1/weight", dtype)
        sd[f"{dst}.self_attn.out_proj.bias"] = get(f"{src}/self_attention/linear_1/bias", dtype)
        sd[f"{dst}.self_attn_layer_norm.weight"] = get(f"{src}/self_attention/layer_norm/gamma", dtype)
        sd[f"{dst}.self_attn_layer_norm.bias"] = get(f"{src}/self_attention/layer_norm/beta", dtype)
        sd[f"{dst}.fc1.weight"] = get(f"{src}/ffn/linear_0/weight", dtype)
        sd[f"{dst}.fc1.bias"] = get(f"{src}/ffn/linear_0/bias", dtype)
        sd[f"{dst}.fc2.weight"] = get(f"{src}/ffn/linear_1/weight", dtype)
        sd[f"{dst}.fc2.bias"] = get(f"{src}/ffn/linear_1/bias", dtype)
        sd[f"{dst}.final_layer_norm.weight"] = get(f"{src}/ffn/layer_norm/gamma", dtype)
        sd[f"{dst}.final_layer_norm.bias"] = get(f"{src}/ffn/layer_norm/beta", dtype)
    return {k: v.contiguous() for k, v in sd.items()}


def whisper_config_from_ct2(model: CT2Model, ct2_config: dict | None = None) -> Any:
    """A transformers `WhisperConfig` from the stored shapes and head counts, plus CTranslate2's ``config.json``."""
    from transformers import WhisperConfig

    _check_whisper(model)
    ct2_config = ct2_config or {}
    conv1 = model.resolve("encoder/conv1/weight").shape  # (d_model, n_mels, 3)
    n_enc = _n_layers(model, "encoder")
    if n_enc == 0:
        raise CT2FormatError(f"{model.path}: no encoder layers (encoder/layer_0/...) found")
    if not model.has("encoder/num_heads"):
        raise CT2FormatError(f"{model.path}: 'encoder/num_heads' is missing; the head count cannot be inferred")
    kwargs: dict[str, Any] = {
        "d_model": conv1[0],
        "num_mel_bins": conv1[1],
        "encoder_layers": n_enc,
        "encoder_attention_heads": int(model.scalar("encoder/num_heads")),
        "encoder_ffn_dim": model.resolve("encoder/layer_0/ffn/linear_0/weight").shape[0],
        "max_source_positions": model.resolve("encoder/position_encodings/encodings").shape[0],
    }
    n_dec = _n_layers(model, "decoder")
    if n_dec and model.has("decoder/embeddings/weight"):
        vocab_size = model.resolve("decoder/embeddings/weight").shape[0]
        kwargs.update(
            decoder_layers=n_dec,
            decoder_ffn_dim=model.resolve("decoder/layer_0/ffn/linear_0/weight").shape[0],
            max_target_positions=model.resolve("decoder/position_encodings/encodings").shape[0],
            vocab_size=vocab_size,
        )
        if model.has("decoder/num_heads"):
            kwargs["decoder_attention_heads"] = int(model.scalar("decoder/num_heads"))
        # Whisper's special tokens follow its text vocabulary: <|endoftext|> is 50256 in the English-only models
        # (51864 tokens) and 50257 in the multilingual ones (51865 and more), <|startoftranscript|> the next one.
        eot = (50257 if vocab_size >= 51865 else 50256) if vocab_size > 50258 else vocab_size - 2
        kwargs.update(pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=eot + 1)
    if "suppress_ids" in ct2_config:
        kwargs["suppress_tokens"] = list(ct2_config["suppress_ids"])
    if "suppress_ids_begin" in ct2_config:
        kwargs["begin_suppress_tokens"] = list(ct2_config["suppress_ids_begin"])
    config = WhisperConfig(**kwargs)
    config.architectures = ["WhisperEncoder"]
    return config


def load_ct2_whisper_encoder(model_dir: str | Path, dtype: torch.dtype = torch.float32) -> Any:
    """A transformers `WhisperEncoder` (eval mode) with the weights of a CTranslate2 Whisper model folder."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    model_dir = Path(model_dir)
    model = read_ct2_model(model_dir / "model.bin", load=lambda name: name.startswith("encoder/"))
    config_path = model_dir / "config.json"
    ct2_config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    config = whisper_config_from_ct2(model, ct2_config)
    state = whisper_encoder_state_dict(model, dtype)
    encoder = WhisperEncoder(config)
    result = encoder.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CT2FormatError(
            f"{model.path}: converted encoder does not fit WhisperEncoder: missing {result.missing_keys}, "
            f"unexpected {result.unexpected_keys}"
        )
    return encoder.to(dtype).eval()


def convert_ct2_whisper_encoder(model_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a transformers folder (config.json, model.safetensors, preprocessor_config.json) for the encoder.

    The folder loads with ``WhisperEncoder.from_pretrained(out_dir)``; its `WhisperFeatureExtractor` is Whisper's,
    with the model's number of mel bins.
    """
    from transformers import WhisperFeatureExtractor

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder = load_ct2_whisper_encoder(model_dir)
    encoder.save_pretrained(out_dir)
    WhisperFeatureExtractor(feature_size=encoder.config.num_mel_bins).save_pretrained(out_dir)
    log.info("converted the Whisper encoder of %s into %s", model_dir, out_dir)
    return out_dir
