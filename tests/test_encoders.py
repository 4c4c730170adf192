"""Modality encoders: features and from-scratch paths for every modality, and pretrained backbones (tiny random
transformers models and torchvision ResNet-18 saved to disk) with freezing, partial unfreezing and checkpointing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from multigeometry.config import MODALITIES, EncoderConfig, ParamsError
from multigeometry.models.encoders import (
    AudioEncoder,
    CodeEncoder,
    ImageEncoder,
    ModalityEncoder,
    TextEncoder,
    build_encoder,
)
from tests.tiny_models import SPECIALS, save_tiny_bert, tiny_vision_kwargs, tiny_whisper_config

HIDDEN = 16
N_MELS = 16
VOCAB = 40
FEATURE_DIM = 12
IMAGE = 32
WHISPER_POSITIONS = 16  # the tiny Whisper encoder's window: 32 log-mel frames
WORDS = ["a", "the", "dog", "cat", "red", "blue", "green", "small", "big", "on", "grass", "sits", "near"]
SMALL_TORCHVISION = "torchvision:shufflenet_v2_x0_5"  # cheap to build where only the errors matter
NORM = {"mean": [-0.5 + 0.05 * i for i in range(N_MELS)], "std": [0.5 + 0.02 * i for i in range(N_MELS)]}


def _cfg(**kwargs: object) -> EncoderConfig:
    return EncoderConfig(**{"hidden_dim": HIDDEN, "dropout": 0.0, **kwargs})  # type: ignore[arg-type]


def _tokens(lengths: list[int], seed: int, width: int | None = None, vocab: int = VOCAB) -> dict[str, torch.Tensor]:
    """Random ids with garbage (not pad ids) in the padded slots, so that only the mask can hide them."""
    g = torch.Generator().manual_seed(seed)
    width = width or max(lengths)
    ids = torch.randint(len(SPECIALS), vocab, (len(lengths), width), generator=g)
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    return {"input_ids": ids, "attention_mask": mask}


def _audio(lengths: list[int], seed: int, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mel = torch.randn(len(lengths), N_MELS, width or max(lengths), generator=g)
    return mel, torch.tensor(lengths)


def _batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mel, lengths = _audio([30, 12, 21], seed)
    batch = {
        "image": torch.randn(3, 3, IMAGE, IMAGE, generator=g),
        "text": _tokens([6, 3, 9], seed),
        "code": _tokens([9, 7, 2], seed + 1),
        "audio": mel,
        "audio_lengths": lengths,
    }
    for m in MODALITIES:
        batch[f"{m}.emb"] = torch.randn(3, FEATURE_DIM, generator=g)
    return batch


def _build(modality: str, cfg: EncoderConfig) -> ModalityEncoder:
    return build_encoder(
        modality, cfg, feature_dim=FEATURE_DIM, vocab_size=VOCAB, n_mels=N_MELS, audio_normalization=NORM
    )


# ---------------------------------------------------------------------------------------------------------------------
# features and from scratch
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("input_kind", ["emb", "raw"])
@pytest.mark.parametrize("modality", [m for m in MODALITIES if m != "video"])  # video: tests/test_video_encoder.py
def test_features_and_scratch_give_hidden_dim_and_train_every_parameter(modality: str, input_kind: str) -> None:
    torch.manual_seed(0)
    encoder = _build(modality, _cfg(input=input_kind, layers=2))
    cls = {"image": ImageEncoder, "text": TextEncoder, "audio": AudioEncoder, "code": CodeEncoder}[modality]
    assert type(encoder) is cls and encoder.modality == modality and encoder.out_dim == HIDDEN
    out = encoder(_batch())
    assert out.shape == (3, HIDDEN) and torch.isfinite(out).all()
    out.square().sum().backward()
    params = dict(encoder.named_parameters())
    assert params and all(p.requires_grad for p in params.values())  # nothing pretrained: nothing frozen
    missing = [name for name, p in params.items() if p.grad is None]
    assert not missing, missing
    assert all(p.grad.abs().sum() > 0 for name, p in params.items() if name.startswith("trunk.layers.0."))


def test_scratch_token_transformer_handles_a_row_without_tokens() -> None:
    encoder = _build("text", _cfg(input="raw")).eval()
    tokens = _tokens([4, 0], seed=3)
    out = encoder({"text": tokens})
    assert torch.isfinite(out).all()


def _alone_vs_padded(encoder: ModalityEncoder, make: Callable[[list[int], int, int | None], dict]) -> None:
    """Item 0 (length 5) alone, then in a batch padded to 11 by a longer item; garbage fills the padding."""
    encoder.eval()
    with torch.no_grad():
        alone = encoder(make([5], 1, None))
        together = encoder(make([5, 11], 1, None))
    torch.testing.assert_close(together[:1], alone, atol=1e-5, rtol=1e-4)


def _text_batch(lengths: list[int], seed: int, width: int | None) -> dict:
    vocab = len(SPECIALS + WORDS)  # fits the tiny BERT too
    tokens = _tokens(lengths, seed + 1, width, vocab)
    tokens["input_ids"][0, :5] = _tokens([5], seed, None, vocab)["input_ids"][0]  # the same item whatever the batch
    return {"text": tokens}


def _audio_batch(lengths: list[int], seed: int, width: int | None) -> dict:
    mel, lens = _audio(lengths, seed + 1, width)
    mel[0, :, :5] = _audio([5], seed)[0][0]
    return {"audio": mel, "audio_lengths": lens}


@pytest.mark.parametrize("modality", ["text", "audio"])
def test_scratch_pooling_ignores_padding(modality: str) -> None:
    torch.manual_seed(0)
    encoder = _build(modality, _cfg(input="raw", layers=3))
    _alone_vs_padded(encoder, _text_batch if modality == "text" else _audio_batch)


def test_scratch_audio_downsampled_lengths_count_only_valid_frames() -> None:
    """With odd lengths the stride-2 blocks leave (L - 1) // 2 + 1 frames; one more would include padding."""
    torch.manual_seed(0)
    encoder = _build("audio", _cfg(input="raw", layers=2)).eval()
    mel, _ = _audio([7], seed=5)
    with torch.no_grad():
        alone = encoder({"audio": mel, "audio_lengths": torch.tensor([7])})
        padded = torch.cat([mel, torch.full((1, N_MELS, 9), 7.0)], dim=-1)  # large garbage in 9 padded frames
        together = encoder({"audio": padded, "audio_lengths": torch.tensor([7])})
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------------
# pretrained backbones: tiny random models saved to disk
# ---------------------------------------------------------------------------------------------------------------------


def _whisper_config() -> object:
    return tiny_whisper_config(N_MELS, WHISPER_POSITIONS)


def _vision_kwargs() -> dict:
    return tiny_vision_kwargs(IMAGE)


@pytest.fixture(scope="module")
def backbones(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    """kind -> (modality, backbone string) for every pretrained path."""
    import torchvision
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel, ViTConfig, ViTModel, WhisperModel
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    root = tmp_path_factory.mktemp("backbones")
    torch.manual_seed(0)
    save_tiny_bert(root / "bert", WORDS)
    vit = ViTConfig(**_vision_kwargs(), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ViTModel(vit).save_pretrained(root / "vit")
    CLIPVisionModel(CLIPVisionConfig(**_vision_kwargs())).save_pretrained(root / "clip-vision")
    text = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
    clip = CLIPConfig(text_config={**text, "vocab_size": 50}, vision_config=_vision_kwargs(), projection_dim=8)
    CLIPModel(clip).save_pretrained(root / "clip-full")
    WhisperModel(_whisper_config()).save_pretrained(root / "whisper-model")
    WhisperEncoder(_whisper_config()).save_pretrained(root / "whisper-encoder")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), root / "resnet18.pth")
    return {
        "bert": ("text", str(root / "bert")),
        "vit": ("image", str(root / "vit")),
        "clip-vision": ("image", str(root / "clip-vision")),
        "clip-full": ("image", str(root / "clip-full")),
        "whisper-model": ("audio", str(root / "whisper-model")),
        "whisper-encoder": ("audio", str(root / "whisper-encoder")),
        "resnet18": ("image", "torchvision:resnet18"),
        "resnet18-weights": ("image", f"torchvision:resnet18@{root / 'resnet18.pth'}"),
    }


KINDS = ["bert", "vit", "clip-vision", "clip-full", "whisper-model", "whisper-encoder", "resnet18", "resnet18-weights"]
TRAINED_KINDS = ["bert", "vit", "clip-vision", "whisper-model", "whisper-encoder", "resnet18"]  # one of each loader
LAST_LAYER: dict[str, Callable[[nn.Module], nn.Module]] = {
    "bert": lambda m: m.encoder.layer[-1],
    "vit": lambda m: m.encoder.layer[-1],
    "clip-vision": lambda m: m.encoder.layers[-1],
    "clip-full": lambda m: m.encoder.layers[-1],
    "whisper-model": lambda m: m.layers[-1],
    "whisper-encoder": lambda m: m.layers[-1],
    "resnet18": lambda m: m.layer4,
    "resnet18-weights": lambda m: m.layer4,
}


def _backbone_of(encoder: ModalityEncoder) -> nn.Module:
    trunk = encoder.trunk
    return trunk.encoder if hasattr(trunk, "encoder") and not hasattr(trunk, "model") else trunk.model


def _backbone_encoder(backbones: dict, kind: str, **cfg: object) -> ModalityEncoder:
    modality, name = backbones[kind]
    vocab = len(SPECIALS + WORDS) if modality == "text" else None
    return build_encoder(
        modality, _cfg(input="raw", backbone=name, **cfg), vocab_size=vocab, n_mels=N_MELS, audio_normalization=NORM
    )


@pytest.fixture(scope="module")
def backbone_batch(backbones: dict) -> dict:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(backbones["bert"][1])
    texts = ["a red dog sits on grass", "the cat", "a small blue cat runs near the big green dog"]
    batch = _batch(seed=7)
    batch["text"] = dict(tokenizer(texts, padding="longest", return_tensors="pt"))
    batch["audio"], batch["audio_lengths"] = _audio([40, 25, 70], seed=7)  # 40 and 70 frames: more than one window
    return batch


@pytest.mark.parametrize("kind", TRAINED_KINDS)
def test_backbone_trains_a_few_steps(backbones: dict, backbone_batch: dict, kind: str) -> None:
    torch.manual_seed(0)
    encoder = _backbone_encoder(backbones, kind, freeze=False)
    deep = next(p for p in _backbone_of(encoder).parameters() if p.requires_grad)  # the backbone's first tensor
    before = deep.detach().clone()
    target = torch.randn(3, HIDDEN, generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-2)  # no decay: only gradients move weights
    losses = []
    for _ in range(4):
        optimizer.zero_grad()
        out = encoder(backbone_batch)
        assert out.shape == (3, HIDDEN)
        loss = nn.functional.mse_loss(out, target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    assert not torch.equal(deep.detach(), before)  # the backbone itself trained


def test_torchvision_weights_are_loaded_from_the_state_dict(backbones: dict) -> None:
    state = torch.load(backbones["resnet18-weights"][1].split("@", 1)[1], weights_only=True)
    torch.manual_seed(123)  # another random init than the saved one
    encoder = _backbone_encoder(backbones, "resnet18-weights")
    torch.testing.assert_close(encoder.trunk.model.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert isinstance(encoder.trunk.model.fc, nn.Identity) and encoder.trunk.width == 512


@pytest.mark.parametrize("kind", ["vit", "clip-vision"])
def test_vision_transformers_accept_another_image_size(backbones: dict, kind: str) -> None:
    encoder = _backbone_encoder(backbones, kind).eval()
    with torch.no_grad():
        out = encoder({"image": torch.randn(2, 3, IMAGE + 16, IMAGE + 16)})
    assert out.shape == (2, HIDDEN)


def test_clip_full_model_loads_only_the_vision_tower(backbones: dict) -> None:
    from transformers import CLIPVisionModel

    full = _backbone_encoder(backbones, "clip-full")
    assert isinstance(full.trunk.model, CLIPVisionModel)
    assert not any("text_model" in name for name, _ in full.named_parameters())


@pytest.mark.parametrize("kind", ["bert", "whisper-encoder"])
def test_backbone_pooling_ignores_padding(backbones: dict, kind: str) -> None:
    encoder = _backbone_encoder(backbones, kind)
    _alone_vs_padded(encoder, _text_batch if kind == "bert" else _audio_batch)


@pytest.mark.parametrize("kind", ["whisper-model", "whisper-encoder"])
def test_whisper_sees_its_own_log_mel_and_pools_windows(backbones: dict, kind: str) -> None:
    """Against transformers' own WhisperEncoder forward on full 32-frame windows of the un-standardised log-mel."""
    encoder = _backbone_encoder(backbones, kind).eval()
    whisper = encoder.trunk.encoder
    frames = 2 * WHISPER_POSITIONS
    raw = torch.randn(1, N_MELS, 2 * frames, generator=torch.Generator().manual_seed(2))
    mean, std = torch.tensor(NORM["mean"])[:, None], torch.tensor(NORM["std"])[:, None]
    standardised = (raw - mean) / std
    with torch.no_grad():
        windows = [whisper(raw[..., :frames]).last_hidden_state, whisper(raw[..., frames:]).last_hidden_state]
        expected = encoder.adapter(torch.cat(windows, dim=1).mean(dim=1))
        one_window = encoder.adapter(windows[0].mean(dim=1))
        got = encoder({"audio": standardised, "audio_lengths": torch.tensor([2 * frames])})
        got_one = encoder({"audio": standardised, "audio_lengths": torch.tensor([frames])})
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got_one, one_window, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", TRAINED_KINDS)
def test_freeze_keeps_the_backbone_fixed_and_in_eval_mode(backbones: dict, backbone_batch: dict, kind: str) -> None:
    encoder = _backbone_encoder(backbones, kind, freeze=True)
    encoder.eval()
    encoder.train()
    backbone = _backbone_of(encoder)
    assert not any(m.training for m in backbone.modules())
    assert all(m.training for m in encoder.adapter.modules())
    encoder(backbone_batch).square().sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in backbone.parameters())
    assert all(p.grad is not None for p in encoder.adapter.parameters())


@pytest.mark.parametrize("kind", ["bert", "clip-vision", "whisper-encoder", "resnet18"])
def test_unfreeze_last_n_trains_exactly_the_last_layer(backbones: dict, backbone_batch: dict, kind: str) -> None:
    encoder = _backbone_encoder(backbones, kind, freeze=True, unfreeze_last_n=1)
    encoder.train()
    backbone = _backbone_of(encoder)
    last = LAST_LAYER[kind](backbone)
    trainable = {id(p) for p in backbone.parameters() if p.requires_grad}
    assert trainable and trainable == {id(p) for p in last.parameters() if p.requires_grad}
    inside = set(last.modules())
    assert all(m.training for m in inside)
    assert not any(m.training for m in backbone.modules() if m not in inside)
    encoder(backbone_batch).square().sum().backward()
    assert all(p.grad is not None for p in last.parameters() if p.requires_grad)
    assert all(p.grad is None for p in backbone.parameters() if id(p) not in trainable)


def _count_calls(module: nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _first_leaf(block: nn.Module) -> nn.Module:
    """The first Linear or conv the block calls as a module (MultiheadAttention reads its out_proj's weight)."""
    return next(
        m
        for m in block.modules()
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))
        and not isinstance(m, nn.modules.linear.NonDynamicallyQuantizableLinear)
    )


CHECKPOINT_CASES = [
    ("image", None),
    ("text", None),
    ("audio", None),
    ("code", "emb"),
    ("bert", "raw"),
    ("vit", "raw"),
    ("whisper-encoder", "raw"),
]


@pytest.mark.parametrize(("kind", "input_kind"), CHECKPOINT_CASES)
def test_grad_checkpointing_gives_the_same_outputs_and_gradients(
    backbones: dict, backbone_batch: dict, kind: str, input_kind: str | None
) -> None:
    def make(checkpointing: bool) -> ModalityEncoder:
        if kind in backbones:
            return _backbone_encoder(backbones, kind, freeze=False, grad_checkpointing=checkpointing)
        return _build(kind, _cfg(input=input_kind or "raw", layers=2, grad_checkpointing=checkpointing))

    torch.manual_seed(0)
    plain, checkpointed = make(False), make(True)
    checkpointed.load_state_dict(plain.state_dict())
    batch = backbone_batch if kind in backbones else _batch()
    calls = [_count_calls(_first_leaf(encoder.trunk.blocks()[-1])) for encoder in (plain, checkpointed)]
    results = []
    for encoder in (plain, checkpointed):
        encoder.train()
        out = encoder(batch)
        out.square().sum().backward()
        results.append((out.detach(), {n: p.grad for n, p in encoder.named_parameters() if p.grad is not None}))
    assert calls[1][0] == 2 * calls[0][0] > 0  # run again in the backward pass: checkpointing is really on
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-6, rtol=1e-5)
    assert results[1][1].keys() == results[0][1].keys() and results[0][1]
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("kind", ["audio", "text", "whisper-encoder"])
def test_runs_under_autocast(backbones: dict, backbone_batch: dict, kind: str) -> None:
    encoder = _backbone_encoder(backbones, kind) if kind in backbones else _build(kind, _cfg(input="raw"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = encoder(backbone_batch if kind in backbones else _batch())
    assert out.shape == (3, HIDDEN) and torch.isfinite(out.float()).all()


# ---------------------------------------------------------------------------------------------------------------------
# errors that name the key
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("modality", "cfg", "kwargs", "needles"),
    [
        ("image", _cfg(input="emb"), {}, ["model.image.input", "features.image.model"]),
        ("text", _cfg(input="raw"), {}, ["model.text.input", "loader.tokenizer"]),
        ("code", _cfg(input="emb", backbone="bert"), {"feature_dim": 4}, ["model.code.backbone", "input: raw"]),
        ("image", _cfg(input="raw", backbone="torchvision:resnet1O"), {}, ["model.image.backbone", "resnet18"]),
        ("audio", _cfg(input="raw", backbone="torchvision:resnet18"), {}, ["model.audio.backbone", "video only"]),
        ("audio", _cfg(input="raw", unfreeze_last_n=1), {}, ["model.audio.unfreeze_last_n", "pretrained backbone"]),
        ("image", _cfg(input="raw", backbone="efficientnet-lite0"), {}, ["model.image.backbone", "features.image"]),
        ("text", _cfg(input="raw", backbone="whisper-tiny.en"), {}, ["model.text.backbone", "audio"]),
        (
            "image",
            _cfg(input="raw", backbone=SMALL_TORCHVISION, grad_checkpointing=True),
            {},
            ["model.image.grad_checkpointing"],
        ),
        (
            "image",
            _cfg(input="raw", backbone=SMALL_TORCHVISION, freeze=False, unfreeze_last_n=1),
            {},
            ["model.image.unfreeze_last_n", "model.image.freeze"],
        ),
        (
            "image",
            _cfg(input="raw", backbone=SMALL_TORCHVISION, unfreeze_last_n=6),
            {},
            ["model.image.unfreeze_last_n", "0..5"],  # conv1, stage2, stage3, stage4, conv5
        ),
    ],
)
def test_bad_combinations_name_the_key(modality: str, cfg: EncoderConfig, kwargs: dict, needles: list[str]) -> None:
    with pytest.raises(ParamsError) as info:
        build_encoder(modality, cfg, **kwargs)
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


def test_missing_weights_and_paths_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"model\.image\.backbone"):
        build_encoder("image", _cfg(input="raw", backbone=f"torchvision:resnet18@{tmp_path / 'none.pth'}"))
    with pytest.raises(FileNotFoundError, match=r"model\.text\.backbone"):
        build_encoder("text", _cfg(input="raw", backbone=str(tmp_path / "no" / "such" / "model")), vocab_size=9)


def test_whisper_with_other_mel_bins_names_audio_n_mels(backbones: dict) -> None:
    with pytest.raises(ParamsError, match=r"audio\.n_mels"):
        build_encoder("audio", _cfg(input="raw", backbone=backbones["whisper-encoder"][1]), n_mels=80)


def test_text_backbone_with_a_larger_tokenizer_names_loader_tokenizer(backbones: dict) -> None:
    with pytest.raises(ParamsError, match=r"loader\.tokenizer"):
        build_encoder("text", _cfg(input="raw", backbone=backbones["bert"][1]), vocab_size=30522)


def test_missing_batch_key_and_unknown_modality() -> None:
    encoder = _build("audio", _cfg(input="emb"))
    with pytest.raises(KeyError, match=r"audio\.emb"):
        encoder({"audio": torch.zeros(1, N_MELS, 4)})
    with pytest.raises(ValueError, match="video"):
        build_encoder("video", _cfg())
