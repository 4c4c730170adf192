"""The Flickr30k preset loads and validates, and every loader it uses works on local stand-ins of its hub models."""

from __future__ import annotations

from pathlib import Path

import torch

from multigeometry.config import load_params
from multigeometry.models.pair_model import PairModel

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "presets" / "flickr30k.yaml"


def test_flickr30k_preset_has_the_original_settings():
    params = load_params(PRESET)
    assert params.data.source.startswith("hf:nlphuji/flickr30k") and params.data.hf.layout == "flickr30k"
    assert params.model.image.backbone == "openai/clip-vit-base-patch32" and params.model.image.input == "raw"
    assert params.model.text.backbone == params.loader.tokenizer == "intfloat/e5-base-v2"
    assert params.loader.batch_size == 32
    assert params.train.lr == 5e-5 and params.train.weight_decay > 0 and 3 <= params.train.epochs <= 5


def test_flickr30k_preset_builds_and_runs_with_local_stand_ins(tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizerFast, CLIPVisionConfig, CLIPVisionModel

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "dog", "runs"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    text_dir = tmp_path / "e5"
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(text_dir)
    tokenizer = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    tokenizer.save_pretrained(text_dir)
    image_dir = tmp_path / "clip"
    CLIPVisionModel(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     image_size=32, patch_size=16)).save_pretrained(image_dir)
    params = load_params(PRESET, [f"model.image.backbone={image_dir}", f"model.text.backbone={text_dir}",
                                  f"loader.tokenizer={text_dir}", "loader.augment.image_size=32"])
    model = PairModel(params.model, ["image", "text"], vocab_size=len(tokenizer))
    tokens = tokenizer(["a dog runs", "a dog"], padding=True, return_tensors="pt")
    inputs = {"image": torch.randn(2, 3, 32, 32), "text": dict(tokens)}
    out = {m: model.encode(inputs, m) for m in ("image", "text")}
    assert out["image"].mu.shape == (2, 4, 256) and out["text"].mu.shape == (2, 4, 256)
