"""The train stage on raw inputs through pretrained backbones: tiny random BERT, ViT and Whisper saved to disk stand
in for hub models, loaded by local path exactly as a hub name would be."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from multigeometry.config import params_from_dict
from multigeometry.inference import load_trained
from multigeometry.stages.prepare import prepare
from multigeometry.stages.shard import shard
from multigeometry.stages.validate import validate
from multigeometry.training.loop import MODEL_FILE, read_train_metrics, seed_everything, train_model
from tests.conftest import still
from tests.tiny_models import save_tiny_bert, tiny_vision_kwargs, tiny_whisper_config

pytestmark = pytest.mark.slow

IMAGE = 32
WORDS = [
    "a", "an", "the", "shape", "circle", "square", "triangle", "red", "blue", "green",
    "small", "large", "left", "of", "right", "above", "below", "and",
]  # fmt: skip


@pytest.fixture(scope="module")
def backbone_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from transformers import ViTConfig, ViTModel
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    root = tmp_path_factory.mktemp("hub")
    torch.manual_seed(0)
    save_tiny_bert(root / "bert", WORDS, max_positions=64)
    ViTModel(ViTConfig(**tiny_vision_kwargs(IMAGE))).save_pretrained(root / "vit")
    WhisperEncoder(tiny_whisper_config(n_mels=80, positions=100)).save_pretrained(root / "whisper")
    return {"bert": root / "bert", "vit": root / "vit", "whisper": root / "whisper"}


def test_raw_inputs_through_backbones_train_a_few_steps(tmp_path: Path, backbone_dirs: dict[str, Path]):
    raw = {
        "seed": 0,
        "data": {"world": {"n_items": 24, "workers": 1, "image_size": 64}},
        "features": {m: {"model": ""} for m in ("image", "text", "audio", "code")},
        "shard": {"max_samples": 16, "workers": 1},
        "pairs": {"pairs": [{"a": "image", "b": "text", "weight": 1.0}, {"a": "audio", "b": "text", "weight": 1.0}]},
        "loader": {"batch_size": 6, "workers": 0, "tokenizer": str(backbone_dirs["bert"]), "max_tokens": 32,
                   "augment": {"image_size": IMAGE}},
        "model": {
            "geometry": "mixture",
            "embed_dim": 8,
            "n_components": 2,
            "trunk": "mlp",
            "text": {"input": "raw", "backbone": str(backbone_dirs["bert"]), "unfreeze_last_n": 1, "hidden_dim": 16,
                     "lock": False},
            "image": {"input": "raw", "backbone": str(backbone_dirs["vit"]), "unfreeze_last_n": 1, "hidden_dim": 16},
            "audio": {"input": "raw", "backbone": str(backbone_dirs["whisper"]), "freeze": False, "hidden_dim": 16,
                      "grad_checkpointing": True},
        },
        "train": {"epochs": 1, "max_steps": 3, "lr": 1e-2, "warmup_steps": 0, "val_every": 3, "checkpoint_every": 3,
                  "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    }
    params = params_from_dict(still(raw))
    prepare(params, tmp_path)
    validate(params, tmp_path)
    shard(params, tmp_path)
    init = initial_state(params, tmp_path)
    out = train_model(params, tmp_path)

    metrics = read_train_metrics(params, tmp_path)
    assert metrics["step"] == 3 and torch.isfinite(torch.tensor(metrics["train/loss"]))
    trained = load_trained(out / MODEL_FILE)
    state = trained.model.state_dict()
    changed = {k for k, v in state.items() if not torch.equal(v, init[k])}
    # the unfrozen last layers, the whole unfrozen Whisper and every head moved; the frozen BERT and ViT layers did not
    assert any(k.startswith("encoders.text.trunk.model.encoder.layer.1.") for k in changed)
    assert not any(k.startswith("encoders.text.trunk.model.encoder.layer.0.") for k in changed)
    assert any(k.startswith("encoders.image.trunk.model.layers.1.") for k in changed)
    assert not any(k.startswith("encoders.image.trunk.model.layers.0.") for k in changed)
    assert not any(k.startswith("encoders.image.trunk.model.embeddings.") for k in changed)
    assert any(k.startswith("encoders.audio.trunk.encoder.layers.0.") for k in changed)
    assert all(any(k.startswith(f"heads.{m}.") for k in changed) for m in ("text", "image", "audio"))


def initial_state(params, root: Path) -> dict[str, torch.Tensor]:
    """The model the train stage starts from: the same seed and construction, before any step."""
    from multigeometry.data.collate import load_tokenizer
    from multigeometry.data.datasets import read_index
    from multigeometry.models.pair_model import PairModel
    from multigeometry.paths import shards_dir

    seed_everything(params.seed)
    tokenizer = load_tokenizer(params.loader.tokenizer)
    model = PairModel.from_index(params, read_index(shards_dir(params, root)), vocab_size=len(tokenizer))
    return {k: v.clone() for k, v in model.state_dict().items()}
