"""`model.trunk: kernel`: RBF features against the train split's own, the head's mean map solved in closed form onto
a locked partner's space (kernel ridge regression), that start validated before the first step, and all of it saved
with the model."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from multigeometry.config import EncoderConfig, KernelConfig, ModelConfig, PairSpec, ParamsError, params_from_dict
from multigeometry.geometry.cone import cone_from_raw
from multigeometry.geometry.mixture import bound_logvar
from multigeometry.inference import load_trained
from multigeometry.models.backbones import FeatureInput, KernelFeatures
from multigeometry.models.pair_model import PairModel
from multigeometry.paths import models_dir, run_reports_dir
from multigeometry.stages.evaluate import evaluate
from multigeometry.stages.register import register
from multigeometry.training.kernel_fit import fit_kernels, kernel_ridge
from multigeometry.training.loop import MODEL_FILE, read_train_metrics, train_model
from tests.conftest import shards_without_val, tiny_trained_raw
from tests.test_registry import assert_pyfunc_matches_checkpoint


def _unit(x: np.ndarray, center: np.ndarray) -> np.ndarray:
    z = x - center
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def test_kernel_features_are_rbf_similarities_of_centred_unit_vectors_to_train_anchors():
    rng = np.random.default_rng(0)
    train, queries = rng.normal(size=(7, 5)) + 3.0, rng.normal(size=(4, 5)) + 3.0
    trunk = KernelFeatures(5, 7, gamma=0.7)
    trunk.fit(torch.tensor(train, dtype=torch.float64).float())
    center = train.mean(0)
    a, z = _unit(train, center), _unit(queries, center)
    want = np.exp(-0.7 * ((z[:, None, :] - a[None, :, :]) ** 2).sum(-1))
    np.testing.assert_allclose(trunk(torch.tensor(queries).float()).numpy(), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(trunk.anchor_gram().numpy(), np.exp(-0.7 * ((a[:, None] - a[None]) ** 2).sum(-1)),
                               rtol=1e-4, atol=1e-5)
    subset = KernelFeatures(5, 3, gamma=0.7)
    subset.fit(torch.tensor(train).float(), torch.Generator().manual_seed(0))
    chosen = [int(np.argmin(np.abs(a - row.numpy()).sum(1))) for row in subset.anchors]
    assert len(set(chosen)) == 3 and chosen == sorted(chosen)  # three distinct train rows, in their order
    with pytest.raises(ValueError, match="4 anchors asked of 3 train samples"):
        KernelFeatures(5, 4, gamma=1.0).fit(torch.tensor(train[:3]).float())


def test_kernel_ridge_is_the_regularised_least_squares_solution():
    rng = np.random.default_rng(1)
    trunk = KernelFeatures(3, 6, gamma=1.0)
    x = torch.tensor(rng.normal(size=(6, 3))).float()
    trunk.fit(x)
    y = torch.tensor(rng.normal(size=(6, 2))).float()
    k, kmm = trunk(x), trunk.anchor_gram()
    alpha = kernel_ridge(k, kmm, y, ridge=0.1)  # every sample an anchor: (K + ridge I)^-1 Y
    want = np.linalg.solve(k.double().numpy() + 0.1 * np.eye(6), y.double().numpy())
    np.testing.assert_allclose(alpha.numpy(), want, rtol=1e-3, atol=1e-4)
    few = KernelFeatures(3, 3, gamma=1.0)  # Nystrom: fewer anchors than samples; the objective's gradient is zero
    few.fit(x, torch.Generator().manual_seed(2))
    k, kmm = few(x).double(), few.anchor_gram().double()
    alpha = kernel_ridge(k, kmm, y, ridge=0.1).double()
    gradient = k.T @ (k @ alpha - y.double()) + 0.1 * kmm @ alpha
    assert gradient.abs().max() < 1e-4


def _kernel_model(geometry: str = "point", **kernel) -> PairModel:
    cfg = ModelConfig(geometry=geometry, embed_dim=4, n_components=1 if geometry == "point" else 2,
                      trunk="kernel",
                      kernel=KernelConfig(**kernel), text=EncoderConfig(lock=True), code=EncoderConfig(init="identity"))
    return PairModel(cfg, ["image", "text", "code"], feature_dims={"image": 6, "text": 4, "code": 4},
                     train_samples=12)


@pytest.mark.parametrize("geometry", ["point", "mixture", "cone"])
def test_the_mean_map_is_solved_onto_the_locked_partner(geometry):
    """With a tiny ridge and every train sample an anchor the solution interpolates: each train image's direction is
    its caption's (the locked text space); code (init identity) keeps its features as they are."""
    model = _kernel_model(geometry, ridge=1e-6, gamma=2.0)
    assert isinstance(model.encoders["image"].trunk, KernelFeatures)
    assert isinstance(model.encoders["code"].trunk, FeatureInput)
    assert isinstance(model.encoders["text"].trunk, FeatureInput)
    gen = torch.Generator().manual_seed(0)
    image, text = torch.randn(12, 6, generator=gen), torch.randn(12, 4, generator=gen)
    batches = [SimpleNamespace(inputs={"image.emb": image[:5], "text.emb": text[:5]}),
               SimpleNamespace(inputs={"image.emb": image[5:], "text.emb": text[5:]})]
    fitted = fit_kernels(model, batches, [PairSpec("image", "text"), PairSpec("code", "text")], seed=0)
    assert fitted == {"image": "text"}
    with torch.no_grad():
        dist = model.encode({"image.emb": image}, "image")
    directions = dist.direction if geometry == "cone" else dist.mu
    want = F.normalize(text, dim=-1)
    if geometry == "mixture":  # every component starts at the same solution
        want = want[:, None, :].expand(-1, 2, -1)
    torch.testing.assert_close(directions if geometry != "point" else directions[:, 0], want, atol=2e-3, rtol=0)
    # model.kernel.lock (the default): the solution stays, the uncertainty around it trains
    assert not any(p.requires_grad for p in model.heads["image"].mean.parameters())
    if geometry != "point":
        assert all(p.requires_grad for p in model.heads["image"].rest.parameters())
    unlocked = _kernel_model(geometry, ridge=1e-6, gamma=2.0, lock=False)
    fit_kernels(unlocked, batches, [PairSpec("image", "text")], seed=0)
    assert all(p.requires_grad for p in unlocked.heads["image"].mean.parameters())


def test_the_kernel_trunk_is_refused_or_left_out_where_it_cannot_apply():
    with pytest.raises(ParamsError, match=r"trunk kernel \(model.trunk or model.image.trunk\) maps the shards'"):
        PairModel(ModelConfig(trunk="kernel", image=EncoderConfig(input="raw")), ["image", "text"],
                  feature_dims={"text": 384}, train_samples=4)
    with pytest.raises(ParamsError, match="anchors from the train split"):
        PairModel(ModelConfig(trunk="kernel"), ["image", "text"], feature_dims={"image": 8, "text": 384})
    # video's pooled frames move as its temporal encoder trains: it keeps them as they are, like model.trunk: linear
    video = PairModel(ModelConfig(trunk="kernel", embed_dim=4, text=EncoderConfig(lock=True)), ["video", "text"],
                      feature_dims={"video": 6, "text": 4}, train_samples=3)
    assert isinstance(video.encoders["video"].trunk, FeatureInput)
    batch = SimpleNamespace(inputs={"video.emb": torch.randn(3, 2, 6), "text.emb": torch.randn(3, 4)})
    assert fit_kernels(video, [batch], [PairSpec("video", "text")], seed=0) == {}
    # asked of one modality where it cannot apply (locked, from the identity, video), it is linear there too
    for modality, cfg in [("text", EncoderConfig(lock=True, trunk="kernel")),
                          ("code", EncoderConfig(init="identity", trunk="kernel")),
                          ("video", replace(ModelConfig().video, trunk="kernel"))]:
        model = PairModel(ModelConfig(embed_dim=4, **{modality: cfg}), [modality, "image"],
                          feature_dims={modality: 4, "image": 6}, train_samples=3)
        assert isinstance(model.encoders[modality].trunk, FeatureInput)


def test_one_modality_can_take_the_kernel_while_the_others_keep_model_trunk():
    cfg = ModelConfig(embed_dim=4, trunk="linear", audio=EncoderConfig(trunk="kernel"))
    assert [cfg.trunk_of(m) for m in ("image", "audio", "text")] == ["linear", "kernel", "linear"]
    model = PairModel(cfg, ["image", "audio", "text"], feature_dims={"image": 6, "audio": 5, "text": 4},
                      train_samples=8)
    assert isinstance(model.encoders["audio"].trunk, KernelFeatures) and model.encoders["audio"].trunk.width == 8
    assert isinstance(model.encoders["image"].trunk, FeatureInput)
    gen = torch.Generator().manual_seed(0)
    batch = SimpleNamespace(inputs={"image.emb": torch.randn(8, 6, generator=gen),
                                    "audio.emb": torch.randn(8, 5, generator=gen),
                                    "text.emb": torch.randn(8, 4, generator=gen)})
    pairs = [PairSpec("image", "text"), PairSpec("audio", "text")]
    assert fit_kernels(model, [batch], pairs, seed=0) == {"audio": "text"}
    # and the other way round: model.trunk kernel, one modality linear
    mixed = PairModel(ModelConfig(embed_dim=4, trunk="kernel", image=EncoderConfig(trunk="linear")),
                      ["image", "audio", "text"], feature_dims={"image": 6, "audio": 5, "text": 4}, train_samples=8)
    assert isinstance(mixed.encoders["image"].trunk, FeatureInput)
    assert isinstance(mixed.encoders["audio"].trunk, KernelFeatures)
    with pytest.raises(ParamsError, match="anchors from the train split"):
        PairModel(cfg, ["audio", "text"], feature_dims={"audio": 5, "text": 4})
    assert not ModelConfig(audio=EncoderConfig(trunk="kernel")).uses_kernel(["image", "text"])


def test_one_modality_can_take_its_own_feature_norm():
    cfg = ModelConfig(embed_dim=4, feature_norm="l2", image=EncoderConfig(),
                      audio=EncoderConfig(feature_norm="standardize"))
    assert [cfg.feature_norm_of(m) for m in ("image", "audio")] == ["l2", "standardize"]
    stats = {"audio.emb": {"mean": [1.0] * 5, "std": [2.0] * 5}}
    model = PairModel(cfg, ["image", "audio", "text"], feature_dims={"image": 6, "audio": 5, "text": 4},
                      feature_stats=stats)
    x = torch.full((2, 5), 3.0)
    torch.testing.assert_close(model.encoders["audio"].norm(x), torch.ones(2, 5))  # (3 - 1) / 2
    assert model.encoders["image"].norm.mode == "l2"
    with pytest.raises(ValueError, match="standardize needs the shards' feature statistics"):
        PairModel(cfg, ["audio", "text"], feature_dims={"audio": 5, "text": 4})


def test_the_train_stage_validates_the_closed_form_start_and_saves_the_anchors(tiny_trained):
    """The tiny world's image and audio kernels solved onto the locked MiniLM text space: step 0 is validated (and kept
    when no step beats it), and the saved model embeds as the trained one did, anchors included."""
    _params, root = tiny_trained
    raw = tiny_trained_raw(root, geometry="point", run_name="kernel", epochs=3, val_every=1, select="best",
                           patience=0)
    raw["loader"]["batch_size"] = 0
    raw["model"].update({"trunk": "kernel", "embed_dim": 384, "text": {"lock": True}, "kernel": {"gamma": 1.0}})
    raw["registry"] = {"model_name": "multigeometry-kernel"}
    params = params_from_dict(raw)
    out = train_model(params, root)
    curve = (run_reports_dir(params, root) / "plots/loss.csv").read_text().splitlines()
    header, first = curve[0].split(","), curve[1].split(",")
    assert first[0] == "0" and first[header.index("val_mean_R_at_1")] != ""  # the start, validated
    selected = read_train_metrics(params, root)["selected"]
    assert selected["model"] == "best" and 0 <= selected["step"] <= 3
    trained = load_trained(out / MODEL_FILE)
    state = trained.model.state_dict()
    assert state["encoders.image.trunk.anchors"].abs().sum() > 0 and "encoders.audio.trunk.center" in state
    train_samples = trained.index["splits"]["train"]["samples"]
    assert state["encoders.image.trunk.anchors"].shape == (min(4096, train_samples), 1280)
    assert models_dir(params, root) == out
    # registered, the pyfunc (anchors in its weights) embeds raw inputs as the checkpoint embeds the shards
    evaluate(params, root)
    assert json.loads(register(params, root).read_text())["registered"] is True
    uri = f"models:/{params.registry.model_name}@{params.registry.alias}"
    assert assert_pyfunc_matches_checkpoint(uri, params, root, params.train.tracking_uri) > 0


def test_without_a_val_split_the_start_is_not_validated(tiny_trained, tmp_path):
    params, root = tiny_trained
    copy = tmp_path / "root"
    shards_without_val(params, root, copy)
    raw = tiny_trained_raw(copy, geometry="point", run_name="kernel-noval", epochs=1)
    raw["model"].update({"trunk": "kernel", "embed_dim": 384, "text": {"lock": True}})
    noval = params_from_dict(raw)
    train_model(noval, copy)
    curve = (run_reports_dir(noval, copy) / "plots/loss.csv").read_text().splitlines()
    assert curve[1].split(",")[0] != "0"  # the first row is a training step
    assert read_train_metrics(noval, copy)["selected"]["model"] == "last"


@pytest.mark.parametrize("geometry", ["mixture", "cone"])
def test_the_uncertainty_can_read_the_stored_features_while_the_mean_reads_normalised_ones(geometry):
    """`model.uncertainty_input: features`: the rest map (weights and variances, aperture) reads the shards' features
    as stored, the mean map the standardised ones or the kernel similarities; a modality without features is refused."""
    cfg = ModelConfig(geometry=geometry, embed_dim=4, feature_norm="standardize", uncertainty_input="features",
                      audio=EncoderConfig(trunk="kernel"), text=EncoderConfig(lock=True))
    stats = {f"{m}.emb": {"mean": [1.0] * d, "std": [2.0] * d} for m, d in (("audio", 5), ("text", 4))}
    model = PairModel(cfg, ["audio", "text"], feature_dims={"audio": 5, "text": 4}, feature_stats=stats,
                      train_samples=8)
    assert model.heads["audio"].rest.in_features == 5  # the raw features, not the 8 kernel similarities
    assert model.heads["audio"].mean.proj.in_features == 8
    gen = torch.Generator().manual_seed(0)
    batch = {"audio.emb": torch.randn(3, 5, generator=gen), "text.emb": torch.randn(3, 4, generator=gen)}
    got = model.encode(batch, "text")
    head = model.heads["text"]
    want_mean = torch.nn.functional.normalize((batch["text.emb"] - 1.0) / 2.0, dim=-1)
    if geometry == "mixture":
        torch.testing.assert_close(got.mu[:, 0], want_mean)
        raw_logvar = head.rest(batch["text.emb"])[:, head.k:].reshape(3, head.k, 4)
        torch.testing.assert_close(got.logvar, bound_logvar(raw_logvar, cfg.logvar_min, cfg.logvar_max))
    else:
        torch.testing.assert_close(got.direction, want_mean)
        torch.testing.assert_close(got.theta, cone_from_raw(want_mean, head.rest(batch["text.emb"])[:, 0],
                                                            cfg.theta_min, cfg.theta_max).theta)
    with pytest.raises(ParamsError, match="uncertainty_input: features reads the shards' image features"):
        PairModel(replace(cfg, image=EncoderConfig(input="raw", trunk="mlp")), ["image", "text"],
                  feature_dims={"text": 4}, feature_stats=stats)
