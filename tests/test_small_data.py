"""The small-data recipe: a linear trunk over frozen features, normalised features, full batch, early stopping with
the best validated weights kept, and a val split carved from train where a dataset has none."""

from __future__ import annotations

import dataclasses
import json
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from multigeometry.config import EncoderConfig, ModelConfig, ParamsError, params_from_dict
from multigeometry.data.datasets import IterableStylePairDataset, make_loader
from multigeometry.data.manifest import carve_val_split
from multigeometry.inference import load_trained
from multigeometry.losses import MainCriterion
from multigeometry.models.pair_model import PairModel
from multigeometry.paths import models_dir, shards_dir
from multigeometry.training.loop import MODEL_FILE, read_train_metrics, train_model
from multigeometry.training.objective import TrainModule
from multigeometry.training.validation import validate_model
from tests.conftest import shards_without_val, tiny_trained_raw


def test_linear_trunk_is_one_map_from_the_features_to_the_embedding():
    cfg = ModelConfig(geometry="point", embed_dim=4, n_components=1, trunk="linear", text=EncoderConfig())
    model = PairModel(cfg, ["image", "text"], feature_dims={"image": 6, "text": 3})
    assert not list(model.encoders.parameters())
    image = torch.randn(5, 6)
    head = model.heads["image"].mean.proj
    expected = F.normalize(image @ head.weight.T + head.bias, dim=-1)
    torch.testing.assert_close(model.encode({"image.emb": image}, "image").mu[:, 0], expected)


def test_standardized_features_use_the_train_statistics_and_travel_with_the_weights():
    stats = {"image.emb": {"mean": [1.0, 2.0], "std": [2.0, 4.0]}, "text.emb": {"mean": [0.0], "std": [1.0]}}
    cfg = ModelConfig(geometry="point", embed_dim=3, n_components=1, trunk="linear", feature_norm="standardize",
                      image=EncoderConfig(), text=EncoderConfig())
    model = PairModel(cfg, ["image", "text"], feature_dims={"image": 2, "text": 1}, feature_stats=stats)
    x = torch.tensor([[3.0, 6.0]])
    head = model.heads["image"].mean.proj
    expected = F.normalize(torch.tensor([[1.0, 1.0]]) @ head.weight.T + head.bias, dim=-1)
    torch.testing.assert_close(model.encode({"image.emb": x}, "image").mu[:, 0], expected)
    assert "encoders.image.norm.mean" in model.state_dict()
    with pytest.raises(ValueError, match="feature statistics"):
        PairModel(cfg, ["image", "text"], feature_dims={"image": 2, "text": 1})
    l2 = PairModel(ModelConfig(feature_norm="l2", image=EncoderConfig(), text=EncoderConfig()), ["image", "text"],
                   feature_dims={"image": 2, "text": 1})
    torch.testing.assert_close(l2.encoders["image"].norm(x), F.normalize(x, dim=-1))


@pytest.mark.parametrize("geometry", ["point", "mixture", "cone"])
def test_locked_and_identity_heads_keep_the_pretrained_space(geometry):
    """text locked: its directions are its normalised features, untrained; code starts at the identity and trains;
    the uncertainty (variances, aperture) trains for both."""
    cfg = ModelConfig(geometry=geometry, embed_dim=4, n_components=1 if geometry == "point" else 2,
                      trunk="linear",
                      text=EncoderConfig(lock=True), code=EncoderConfig(init="identity"))
    model = PairModel(cfg, ["code", "text"], feature_dims={"code": 4, "text": 4})
    x = torch.randn(3, 4)
    for modality in ("text", "code"):
        dist = model.encode({f"{modality}.emb": x}, modality)
        direction = dist.direction if geometry == "cone" else dist.mu[:, 0]
        torch.testing.assert_close(direction, F.normalize(x, dim=-1))
    assert not list(model.heads["text"].mean.parameters())
    assert all(p.requires_grad for p in model.heads["code"].mean.parameters())
    if geometry != "point":
        assert list(model.heads["text"].rest.parameters())
    with pytest.raises(ParamsError, match=r"model.embed_dim must be the same"):
        PairModel(cfg, ["code", "text"], feature_dims={"code": 4, "text": 6})
    with pytest.raises(ParamsError, match=r"model.trunk \(or model.code.trunk\) linear"):
        PairModel(dataclasses.replace(cfg, trunk="mlp"), ["code", "text"], feature_dims={"code": 4, "text": 4})


def test_an_isotropic_variance_is_one_log_variance_a_component():
    cfg = ModelConfig(geometry="mixture", embed_dim=4, n_components=2, trunk="linear", variance="isotropic",
                      text=EncoderConfig())
    model = PairModel(cfg, ["image", "text"], feature_dims={"image": 6, "text": 4})
    assert model.heads["image"].rest.out_features == 2 * (1 + 1)  # K logits and K log-variances
    dist = model.encode({"image.emb": torch.randn(3, 6)}, "image")
    assert dist.logvar.shape == (3, 2, 4)
    torch.testing.assert_close(dist.logvar, dist.logvar[..., :1].expand(-1, -1, 4))
    assert not torch.equal(dist.logvar[:, 0], dist.logvar[:, 1])  # each component its own
    assert cfg.logvar_min <= float(dist.logvar.min()) and float(dist.logvar.max()) <= cfg.logvar_max
    dist.logvar.sum().backward()
    assert model.heads["image"].rest.weight.grad.abs().sum() > 0
    diagonal = PairModel(dataclasses.replace(cfg, variance="diagonal"), ["image", "text"],
                         feature_dims={"image": 6, "text": 4})
    assert diagonal.heads["image"].rest.out_features == 2 * (1 + 4)


def test_feature_noise_perturbs_training_inputs_only():
    cfg = ModelConfig(geometry="point", embed_dim=4, n_components=1, trunk="linear",
                      image=EncoderConfig(feature_noise=0.5), text=EncoderConfig())
    model = PairModel(cfg, ["image", "text"], feature_dims={"image": 6, "text": 3})
    x = torch.randn(8, 6)
    model.train()
    assert not torch.equal(model.encode({"image.emb": x}, "image").mu, model.encode({"image.emb": x}, "image").mu)
    model.eval()
    torch.testing.assert_close(model.encode({"image.emb": x}, "image").mu, model.encode({"image.emb": x}, "image").mu)


def test_a_manifest_without_val_rows_gets_one_from_train_groups():
    frame = pd.DataFrame({"sample_id": [f"s{i}" for i in range(400)], "group_id": [f"g{i // 2}" for i in range(400)],
                          "split": ["train"] * 300 + ["test"] * 100})
    carved, moved = carve_val_split(frame, 0.2)
    val = carved[carved["split"] == "val"]
    assert moved == len(val) and 30 < moved < 90 and (frame.loc[val.index, "split"] == "train").all()
    assert carved.groupby("group_id")["split"].nunique().max() == 1  # a group stays whole
    assert carve_val_split(frame, 0.2)[0].equals(carved)
    assert carve_val_split(carved, 0.5)[1] == 0  # a val split exists: nothing moves
    assert carve_val_split(frame, 0.0)[1] == 0


def test_full_batch_early_stopping_keeps_the_best_validated_weights(tiny_trained):
    _params, root = tiny_trained
    raw = tiny_trained_raw(root, geometry="point", run_name="small", epochs=200, val_every=1, patience=3,
                           checkpoint_every=1000, select="best")
    raw["loader"]["batch_size"] = 0
    raw["model"]["trunk"] = "linear"
    params = params_from_dict(raw)
    out = train_model(params, root)
    metrics = read_train_metrics(params, root)
    selected = metrics["selected"]
    assert selected["model"] == "best" and selected["early_stopped"]
    assert metrics["step"] < 200  # one full-batch step an epoch, and the run stopped early
    assert metrics["step"] - selected["step"] == 3
    resolved = json.loads((out / "resolved_params.json").read_text())
    train_samples = json.loads((shards_dir(params, root) / "index.json").read_text())["splits"]["train"]["samples"]
    assert resolved["loader"]["batch_size"] == train_samples
    trained = load_trained(out / MODEL_FILE)
    val = IterableStylePairDataset(shards_dir(params, root), "val", trained.params)
    criterion = MainCriterion(trained.params.loss, trained.params.model, similarity=trained.model.similarity)
    with torch.no_grad():
        criterion.log_logit_scale.fill_(math.log(trained.logit_scale))
    again = validate_model(TrainModule(trained.model, criterion), make_loader(val, trained.params, workers=0),
                           torch.device("cpu"))
    assert again["val/mean_R@1"] == pytest.approx(selected["val/mean_R@1"])


def test_without_a_val_split_the_last_model_is_kept_and_said(tiny_trained, tmp_path, caplog):
    params, root = tiny_trained
    copy = tmp_path / "root"
    shards_without_val(params, root, copy)
    noval = params_from_dict(tiny_trained_raw(copy, run_name="noval", epochs=2))
    with caplog.at_level("WARNING"):
        train_model(noval, copy)
    assert read_train_metrics(noval, copy)["selected"]["model"] == "last"
    assert "no val split" in caplog.text
    assert (models_dir(noval, copy) / MODEL_FILE).is_file()


def test_the_compositional_layer_is_selected_on_its_own_validation(tiny_trained):
    """train.composer_select: own keeps the best retrieval step's weights but the compositional layer of the
    validation with the lowest composition loss (its term converges after retrieval); `model` keeps both together."""
    import csv

    from multigeometry.paths import run_reports_dir
    from multigeometry.training.checkpoint import list_checkpoints, load_checkpoint

    _params, root = tiny_trained
    raw = tiny_trained_raw(root, run_name="composer-own", epochs=30, val_every=1, patience=4, checkpoint_every=1,
                           keep_checkpoints=100, select="best")
    raw["loader"]["batch_size"] = 0
    raw["model"]["trunk"] = "linear"
    # without the variance order, in this tiny run the composition loss bottoms out after the best retrieval step
    raw.setdefault("loss", {})["variance_order_weight"] = 0.0
    params = params_from_dict(raw)
    out = train_model(params, root)
    selected = read_train_metrics(params, root)["selected"]
    rows = list(csv.DictReader((run_reports_dir(params, root) / "plots/loss.csv").open()))
    losses = {int(r["step"]): float(r["val_composition"]) for r in rows if r.get("val_composition")}
    assert selected["composer"]["step"] == min(losses, key=losses.get)
    assert selected["composer"]["val/composition"] == pytest.approx(min(losses.values()), abs=1e-4)  # the csv: 4 digits
    assert selected["composer"]["step"] != selected["step"]  # this run: the two bests are different steps
    saved = torch.load(out / MODEL_FILE, weights_only=False)["model"]
    checkpoints = {load_checkpoint(p)["step"]: p for p in list_checkpoints(out / "checkpoints")}

    def weights(step: int) -> dict[str, torch.Tensor]:
        state = load_checkpoint(checkpoints[step])["model"]
        return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}

    at_best, at_composer = weights(selected["step"]), weights(selected["composer"]["step"])
    composer_keys = [k for k in saved if k.startswith("composer.")]
    assert composer_keys and set(saved) == set(at_best)
    for k, v in saved.items():
        torch.testing.assert_close(v, (at_composer if k in composer_keys else at_best)[k], rtol=0, atol=0)
    # composer_select: model keeps the best step's compositional layer with the rest
    together = params_from_dict({**raw, "train": {**raw["train"], "run_name": "composer-model",
                                                  "composer_select": "model"}})
    out = train_model(together, root)
    assert "composer" not in read_train_metrics(together, root)["selected"]
    saved = torch.load(out / MODEL_FILE, weights_only=False)["model"]
    torch.testing.assert_close(saved, at_best, rtol=0, atol=0)  # the same seed and data: the same run
