"""The world with video through every stage: prepare, validate, shard (frame features by a tiny image model), train a
video-text pair with the temporal transformer, evaluate video retrieval, register the pyfunc that embeds clips."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from multigeometry.config import params_from_dict
from multigeometry.paths import models_dir


def test_a_tiny_video_world_trains_and_evaluates(tmp_path):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    from multigeometry.stages.evaluate import evaluate
    from multigeometry.stages.prepare import prepare
    from multigeometry.stages.shard import shard
    from multigeometry.stages.train import train
    from multigeometry.stages.validate import validate

    vit = tmp_path / "tiny-vit"
    torch.manual_seed(0)
    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32)).save_pretrained(vit)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(vit)
    encoder = {"input": "emb", "hidden_dim": 32, "layers": 1}
    params = params_from_dict({
        "data": {"dataset": "world-video", "world": {"n_items": 16, "workers": 1, "image_size": 64, "audio": False,
                                                     "video": True, "video_size": 32, "video_frames": 4},
                 "splits": {"train": 0.5, "val": 0.25, "test": 0.25}},
        "validate": {"modalities": ["text", "video"], "data_docs": False},
        "features": {"image": {"model": ""}, "audio": {"model": ""}, "code": {"model": ""},
                     "text": {"model": "all-minilm-l6-v2"}, "video": {"model": str(vit)}},
        "video": {"feature_frames": 4, "num_frames": 4},
        "shard": {"max_samples": 8, "workers": 1},
        "pairs": {"pairs": [{"a": "video", "b": "text"}]},
        "loader": {"batch_size": 4, "workers": 0, "shuffle_buffer": 8, "tokenizer": ""},
        "model": {"embed_dim": 16, "n_components": 2, "trunk": "mlp", "text": {**encoder, "lock": False,
                                                                              "init": "random"},
                  "video": {**encoder, "temporal": "seqTransf", "temporal_width": 16, "temporal_heads": 2}},
        "train": {"run_name": "video", "device": "cpu", "epochs": 2, "lr": 3e-3, "warmup_steps": 1, "val_every": 2,
                  "checkpoint_every": 2, "log_every": 2, "select": "last", "patience": 0,
                  "tracking_uri": f"sqlite:///{Path(tmp_path).resolve() / 'mlflow.db'}"},
        "eval": {"device": "cpu", "batch_size": 8, "block_size": 5, "grid_queries": 1, "curve_max_k": 5},
    })
    for stage in (prepare, validate, shard, train):
        stage(params, tmp_path)
    assert (models_dir(params, tmp_path) / "model.pt").is_file()
    import sqlite3

    with sqlite3.connect(tmp_path / "mlflow.db") as db:  # the temporal term trained on the rows with contrasts
        logged = db.execute("select count(*), min(value) from metrics where key = 'train/temporal'").fetchone()
    assert logged[0] > 0 and logged[1] > 0, logged
    _embeds_a_clip_given_as_a_path_or_bytes(params, tmp_path)
    out = evaluate(params, tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())
    flat = json.dumps(metrics)
    assert "video_to_text" in flat and "text_to_video" in flat and "R@1" in flat, flat[:2000]
    # the temporal check: rows whose motion has an opposite, against their clip reversed and shuffled
    assert 0.0 <= metrics["video/temporal_R@1"] <= 1.0
    assert {"text_to_video/temporal_R@1", "video_to_text/temporal_R@1"} <= set(metrics)
    # the hierarchy ("a shape in motion" ⊃ ...) and the composition of parts reach the clips as any other items
    assert {"hierarchy/video/containment_AUC", "composition/video/R@1", "composition/video/caption_R@1"} <= set(
        metrics), sorted(k for k in metrics if k.startswith(("hierarchy", "composition")))
    _the_registered_pyfunc_embeds_clips_as_the_checkpoint(params, tmp_path)
    _a_raw_frame_backbone_trains_on_the_same_shards(params, tmp_path)


def _the_registered_pyfunc_embeds_clips_as_the_checkpoint(params, root: Path) -> None:
    """Registered, the model behind models:/<name>@champion, loaded by MLflow, embeds the test clips from their files
    (decoded, frames sampled and embedded by the frame model inside the pyfunc) as the checkpoint embeds the shards."""
    from multigeometry.stages.register import register
    from tests.test_registry import assert_pyfunc_matches_checkpoint

    outcome = json.loads(register(params, root).read_text())
    assert outcome["registered"] is True, outcome["gate"]["reason"]
    uri = f"models:/{params.registry.model_name}@{params.registry.alias}"
    assert assert_pyfunc_matches_checkpoint(uri, params, root, params.train.tracking_uri) > 0


def _a_raw_frame_backbone_trains_on_the_same_shards(params, root: Path) -> None:
    """`model.video.input: raw` with a torchvision video model (random init: no weights offline) over the clips'
    decoded frames: the loader decodes them, the backbone stays frozen but for its last block."""
    from multigeometry.inference import load_trained
    from multigeometry.paths import raw_dir
    from multigeometry.registry.inputs import RawEmbedder
    from multigeometry.stages.evaluate import evaluate
    from multigeometry.stages.train import train

    raw = params_from_dict(params.to_dict(), [
        "model.video.input=raw", "model.video.backbone=torchvision:mc3_18", "model.video.unfreeze_last_n=1",
        "video.frame_side=32", "train.run_name=video-raw", "train.epochs=1", "eval.grid_queries=0"])
    train(raw, root)
    trained = load_trained(models_dir(raw, root) / "model.pt")
    encoder = trained.model.encoders["video"]
    assert type(encoder.trunk).__name__ == "TorchvisionVideoTrunk" and encoder.temporal is None
    trainable = {n.split(".")[1] for n, p in encoder.trunk.named_parameters() if p.requires_grad}
    assert trainable == {"layer4"}, trainable  # frozen but for the last block
    metrics = json.loads((evaluate(raw, root) / "metrics.json").read_text())
    assert 0.0 <= metrics["video_to_text/R@1"] <= 1.0 and 0.0 <= metrics["video/temporal_R@1"] <= 1.0
    clip = sorted((raw_dir(raw, root) / "video").glob("*.mp4"))[0]
    embedded = RawEmbedder(trained).embed([{"video": str(clip)}, {"video": clip.read_bytes()}])
    assert embedded.rows == {"video": [0, 1]}
    torch.testing.assert_close(embedded.dists["video"].mu[0], embedded.dists["video"].mu[1])


def _embeds_a_clip_given_as_a_path_or_bytes(params, root: Path) -> None:
    from multigeometry.inference import load_trained
    from multigeometry.paths import raw_dir
    from multigeometry.registry.inputs import RawEmbedder
    from multigeometry.registry.tools import one_record

    trained = load_trained(models_dir(params, root) / "model.pt")
    clip = sorted((raw_dir(params, root) / "video").glob("*.mp4"))[0]
    record = one_record(video=str(clip))
    assert record == {"video": str(clip.resolve())}
    embedded = RawEmbedder(trained).embed([record, {"video": clip.read_bytes()}, {"text": "a shape moving left"}])
    assert embedded.rows == {"video": [0, 1], "text": [2]}
    video = embedded.dists["video"]  # the default geometry: mixtures
    assert video.mu.shape[0] == 2
    torch.testing.assert_close(video.mu[0], video.mu[1])  # the same clip, as a path or as bytes
    torch.testing.assert_close(video.logits[0], video.logits[1])


def test_embed_takes_a_video_file(tmp_path, capsys, monkeypatch):
    from multigeometry.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("{}\n")
    assert main(["embed", "--model", "models:/none@champion", "--video", "nowhere.mp4"]) == 1
    err = capsys.readouterr().err.strip()
    assert "--video nowhere.mp4: no such file" in err and "Traceback" not in err
