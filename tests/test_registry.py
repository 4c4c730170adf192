"""The register stage: the gate, the pyfunc model (raw inputs -> the checkpoint's distributions, loaded with no hub
and no cache), registration with an alias and its tags, a worse model refused, and the embed / search commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from multigeometry.config import Params, ParamsError, params_from_dict


def write_metrics(params: Params, root: Path, model_path: Path | None = None, out: Path | None = None) -> Path:
    """The evaluate stage's metrics.json: the model's real metrics on eval.split."""
    from multigeometry.evaluation import evaluate_trained
    from multigeometry.evaluation.report import METRICS_FILE
    from multigeometry.inference import load_trained
    from multigeometry.io import write_json_atomic
    from multigeometry.paths import eval_dir, models_dir

    model_path = model_path or models_dir(params, root) / "model.pt"
    out = out or eval_dir(params, root) / METRICS_FILE
    write_json_atomic(out, evaluate_trained(load_trained(model_path), root, params.eval.split, params.eval))
    return out


def with_registry(params: Params, **registry: object) -> Params:
    raw = params.to_dict()
    raw["registry"].update(registry)
    return params_from_dict(raw)


@pytest.fixture(scope="module")
def registered(tiny_trained, tmp_path_factory):
    """The tiny model registered once in a fresh SQLite store: (params, root, outcome)."""
    from multigeometry.stages.register import register

    params, root = tiny_trained
    store = tmp_path_factory.mktemp("registry_store")
    params = with_registry(params, tracking_uri=f"sqlite:///{store / 'mlflow.db'}", model_name="tiny-model")
    write_metrics(params, root)
    out = register(params, root)
    return params, root, json.loads(out.read_text())


@pytest.fixture(scope="module")
def champion(registered, tmp_path_factory):
    """The champion loaded through the registry with an empty model cache (nothing to fall back on)."""
    from multigeometry.registry.tools import load_registered

    params, root, _ = registered
    mp = pytest.MonkeyPatch()
    mp.setenv("MULTIGEOMETRY_CACHE", str(tmp_path_factory.mktemp("empty_cache")))
    try:
        yield load_registered(params, "models:/tiny-model@champion")
    finally:
        mp.undo()


# ---------------------------------------------------------------------------------------------------------------------
# the gate and the params
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "min_metric", "champion", "passes", "why"),
    [
        (0.5, 0.0, None, True, "no champion yet"),
        (0.5, 0.6, None, False, "below registry.min_metric"),
        (0.5, 0.0, 0.5, False, "ties the champion's 0.5000: the champion stays"),
        (0.6, 0.0, 0.5, True, "above the champion's 0.5000"),
        (0.4, 0.0, 0.5, False, "below the champion's 0.5000"),
        (float("nan"), 0.0, None, False, "NaN"),
    ],
)
def test_gate_decision(value, min_metric, champion, passes, why):
    from multigeometry.registry.register import decide

    passed, reason = decide("mean_R@1", value, min_metric, champion)
    assert passed is passes
    assert why in reason


@pytest.mark.parametrize(("key", "value"), [("alias", "latest"), ("alias", "v3"), ("alias", "a b"),
                                            ("model_name", ""), ("gate_metric", ""), ("search_k", 0)])
def test_registry_params_are_validated(key, value):
    with pytest.raises(ParamsError, match=f"registry.{key}"):
        params_from_dict({"registry": {key: value}})


def test_summaries_of_each_geometry():
    import math

    from multigeometry.geometry.cone import ConeParams
    from multigeometry.geometry.mixture import MixtureParams
    from multigeometry.registry.summary import summarise

    cone = summarise(ConeParams(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0.3, 0.7])))
    assert [r["geometry"] for r in cone] == ["cone", "cone"]
    assert cone[1]["direction"] == [0.0, 1.0] and cone[1]["uncertainty"] == pytest.approx(0.7)
    point = summarise(MixtureParams.point(torch.tensor([[3.0, 4.0]])))
    assert point[0]["geometry"] == "point" and math.isnan(point[0]["uncertainty"]) and "log_variances" not in point[0]
    mix = MixtureParams(torch.zeros(1, 2), torch.tensor([[[0.0, 0.0], [2.0, 0.0]]]), torch.zeros(1, 2, 2))
    (row,) = summarise(mix)
    assert row["weights"] == [0.5, 0.5] and row["log_variances"] == [[0.0, 0.0], [0.0, 0.0]]
    assert row["uncertainty"] == row["total_variance"] == pytest.approx(2.0 + 1.0)  # within 2, between 1
    (row,) = summarise(mix, "weight_entropy")
    assert row["uncertainty"] == pytest.approx(math.log(2))


# ---------------------------------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------------------------------


def test_register_creates_a_version_with_alias_and_tags(registered):
    from multigeometry.registry.register import connect

    params, root, outcome = registered
    assert outcome["registered"] is True, outcome["gate"]["reason"]
    assert outcome["version"] == "1" and outcome["model_uri"] == "models:/tiny-model@champion"
    assert "no champion yet" in outcome["gate"]["reason"]
    client = connect(params.registry.tracking_uri)
    version = client.get_model_version_by_alias("tiny-model", "champion")
    assert str(version.version) == "1"
    tags = version.tags
    metrics = json.loads((root / "data/eval/tiny/metrics.json").read_text())
    assert float(tags["multigeometry.metric.mean_R_at_1"]) == pytest.approx(metrics["mean_R@1"])
    for key in ("git_commit", "params_hash", "dvc_data_hash", "eval_data_hash", "eval_params_hash", "model_sha256",
                "weights_sha256"):
        assert tags[f"multigeometry.{key}"], key
    assert tags["multigeometry.dataset"] == "world" and tags["multigeometry.modalities"] == "audio,image,text"
    assert (root / "data/registry/tiny/registration.json").is_file()


def test_the_version_links_to_its_training_run(registered):
    """Lineage. Training runs are named by run name and time. In the training run's own store the model is logged
    into that run, so the version's run holds the training params and metrics beside the evaluation's; in another
    store a registration run records the params and the training run's id."""
    import re

    import torch
    from mlflow import MlflowClient

    from multigeometry.registry.register import connect, register_model

    params, root, outcome = registered
    train_run_id = torch.load(root / "data/models/tiny/model.pt", map_location="cpu", weights_only=True)["info"][
        "mlflow_run_id"]
    train_client = MlflowClient(tracking_uri=params.train.tracking_uri)
    run = train_client.get_run(train_run_id)
    assert re.fullmatch(r"tiny-\d{8}-\d{6}", run.info.run_name) and run.data.tags["multigeometry.run_name"] == "tiny"

    other_store = connect(params.registry.tracking_uri).get_model_version_by_alias("tiny-model", "champion")
    assert other_store.tags["multigeometry.train_run_id"] == train_run_id != other_store.run_id
    registration = MlflowClient(tracking_uri=params.registry.tracking_uri).get_run(other_store.run_id)
    assert registration.data.params["model.geometry"] == "mixture"
    assert registration.data.tags["multigeometry.train_run_id"] == train_run_id

    same_store = with_registry(params, tracking_uri=params.train.tracking_uri, model_name="tiny-lineage")
    linked = register_model(same_store, root, root / "data/models/tiny/model.pt", root / "data/eval/tiny/metrics.json")
    assert linked["registered"] and linked["run_id"] == train_run_id
    version = connect(params.train.tracking_uri).get_model_version_by_alias("tiny-lineage", "champion")
    assert version.run_id == train_run_id
    run = train_client.get_run(train_run_id)
    assert {"train/loss", "val/mean_R_at_1", "eval/mean_R_at_1"} <= set(run.data.metrics)
    assert run.data.params["train.run_name"] == "tiny"


def test_registering_the_champion_again_adds_no_version(registered):
    from multigeometry.registry.register import connect
    from multigeometry.stages.register import register

    params, root, _ = registered
    outcome = json.loads(register(params, root).read_text())
    assert outcome["registered"] is True and outcome["version"] == "1"
    assert "weights are the champion's" in outcome["gate"]["reason"]
    assert outcome["gate"]["champion_source"] == "tags"
    client = connect(params.registry.tracking_uri)
    assert [str(v.version) for v in client.search_model_versions("name='tiny-model'")] == ["1"]


def test_a_retrain_to_the_same_weights_registers_nothing(registered, tmp_path):
    """Other model.pt bytes (another MLflow run, another time), the same tensors: nothing new, the champion stays."""
    import torch

    from multigeometry.registry.register import connect, register_model, weights_sha256

    params, root, _ = registered
    state = torch.load(root / "data/models/tiny/model.pt", map_location="cpu", weights_only=True)
    state["info"] = {**state["info"], "mlflow_run_id": "another-run", "retrained": True}
    again = tmp_path / "model.pt"
    torch.save(state, again)
    assert again.read_bytes() != (root / "data/models/tiny/model.pt").read_bytes()
    assert weights_sha256(again) == weights_sha256(root / "data/models/tiny/model.pt")
    outcome = register_model(params, root, again, root / "data/eval/tiny/metrics.json")
    assert outcome["version"] == "1" and "weights are the champion's" in outcome["gate"]["reason"]
    client = connect(params.registry.tracking_uri)
    assert [str(v.version) for v in client.search_model_versions("name='tiny-model'")] == ["1"]


def test_a_model_of_another_dataset_is_not_compared_with_the_champion(registered, tmp_path):
    import torch

    from multigeometry.registry.register import connect, register_model

    params, root, _ = registered
    state = torch.load(root / "data/models/tiny/model.pt", map_location="cpu", weights_only=True)
    state["params"]["data"]["dataset"] = "stdlib"  # the champion is the world's
    other = tmp_path / "model.pt"
    torch.save(state, other)
    outcome = register_model(params, root, other, root / "data/eval/tiny/metrics.json")
    assert outcome["registered"] is False
    reason = outcome["gate"]["reason"]
    assert "dataset 'world'" in reason and "'stdlib'" in reason and "registry.model_name=tiny-model-stdlib" in reason
    assert str(connect(params.registry.tracking_uri).get_model_version_by_alias("tiny-model", "champion").version) \
        == "1"


def test_the_registered_model_loads_without_the_package_installed(registered, champion, tmp_path):
    """Models-from-code: no pickled python_model, and the model's own copy of the code loads and embeds in a Python
    that cannot import this repository's package."""
    import subprocess
    import sys
    import sysconfig

    import mlflow

    from multigeometry.registry.register import connect

    params, root, _ = registered
    connect(params.registry.tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts("models:/tiny-model@champion", dst_path=str(tmp_path / "m")))
    assert not list(local.rglob("*.pkl")) and (local / "code" / "multigeometry" / "registry" / "pyfunc.py").is_file()
    code = (
        "import sys\n"
        f"sys.path[:0] = {[sysconfig.get_paths()['purelib'], sysconfig.get_paths()['platlib']]!r}\n"
        "try:\n    import multigeometry\nexcept ImportError:\n    pass\n"
        "else:\n    raise SystemExit('multigeometry is importable: ' + multigeometry.__file__)\n"
        "import mlflow, pandas as pd\n"
        f"out = mlflow.pyfunc.load_model({str(local)!r}).predict(pd.DataFrame({{'text': ['a red circle']}}))\n"
        "import multigeometry\n"
        "print(multigeometry.__file__, list(out['modality']), len(out['means'][0]))\n"
    )
    done = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    where, rest = done.stdout.split(" ", 1)
    assert Path(where).is_relative_to(local / "code") and "['text'] 2" in rest, done.stdout


def _perturbed(model_path: Path, out: Path, seed: int) -> Path:
    state = torch.load(model_path, map_location="cpu", weights_only=True)
    gen = torch.Generator().manual_seed(seed)
    state["model"] = {k: v + torch.randn(v.shape, generator=gen) * (v.float().std() + 0.1) if v.is_floating_point()
                      else v for k, v in state["model"].items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    return out


def test_a_worse_model_is_refused_against_the_reevaluated_champion(tiny_trained, tmp_path):
    """Two real models on the same data: the better one registers, the worse is refused. The second run uses other
    eval params, so the champion's recorded metric does not apply: its packaged model is evaluated again."""
    from multigeometry.paths import models_dir
    from multigeometry.registry.register import connect, register_model

    params, root = tiny_trained
    params = with_registry(params, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", model_name="tiny-gate")
    original = models_dir(params, root) / "model.pt"
    scored = [(json.loads(write_metrics(params, root, original, tmp_path / "m0.json").read_text())["mean_R@1"],
               original, tmp_path / "m0.json")]
    for seed in range(1, 6):  # real, different models until one scores differently from the original
        path = _perturbed(original, tmp_path / f"v{seed}" / "model.pt", seed)
        metrics = write_metrics(params, root, path, tmp_path / f"m{seed}.json")
        scored.append((json.loads(metrics.read_text())["mean_R@1"], path, metrics))
        if scored[-1][0] != scored[0][0]:
            break
    (best_value, best, best_metrics), (worse_value, worse, worse_metrics) = sorted(
        [scored[0], scored[-1]], key=lambda s: -s[0])
    assert best_value > worse_value, "no perturbation changed the metric"

    first = register_model(params, root, best, best_metrics)
    assert first["registered"] and first["version"] == "1"

    raw = params.to_dict()
    raw["eval"]["ks"] = [1, 2]  # other eval params: the champion's tags no longer describe this evaluation
    other = params_from_dict(raw)
    refused = register_model(other, root, worse, worse_metrics)
    assert refused["registered"] is False and refused["version"] is None
    assert refused["gate"]["champion_source"] == "re-evaluated"
    assert refused["gate"]["champion_value"] == pytest.approx(best_value, abs=1e-6)
    assert "below the champion's" in refused["gate"]["reason"]
    client = connect(params.registry.tracking_uri)
    assert [str(v.version) for v in client.search_model_versions("name='tiny-gate'")] == ["1"]
    assert str(client.get_model_version_by_alias("tiny-gate", "champion").version) == "1"


def test_register_names_a_missing_gate_metric(registered):
    from multigeometry.stages.register import register

    params, root, _ = registered
    with pytest.raises(KeyError, match="no metric 'nope'"):
        register(with_registry(params, gate_metric="nope"), root)


# ---------------------------------------------------------------------------------------------------------------------
# the pyfunc model
# ---------------------------------------------------------------------------------------------------------------------


def _test_rows(params: Params, root: Path) -> list[dict]:
    from multigeometry.data.manifest import MANIFEST, read_manifest
    from multigeometry.paths import validated_dir

    frame = read_manifest(validated_dir(params, root) / MANIFEST)
    return frame[frame["split"] == params.eval.split].to_dict("records")


def assert_pyfunc_matches_checkpoint(model_uri: str, params: Params, root: Path, tracking_uri: str) -> int:
    """The pyfunc at `model_uri`, loaded by MLflow, embeds the raw inputs of eval.split's validated rows exactly as the
    checkpoint embeds the same samples from the shards; returns how many (sample, modality) pairs it compared."""
    import mlflow
    import pandas as pd

    from multigeometry.evaluation.embed import embed_split
    from multigeometry.inference import load_trained
    from multigeometry.paths import models_dir, raw_dir, shards_dir
    from multigeometry.registry.register import connect

    connect(tracking_uri)
    rows = _test_rows(params, root)
    raw = raw_dir(params, root)
    trained = load_trained(models_dir(params, root) / "model.pt")
    modalities = trained.modalities
    frame = pd.DataFrame([{m: (r[m] if m == "text" else str(raw / r[m])) for m in modalities
                           if isinstance(r.get(m), str)} for r in rows])
    out = mlflow.pyfunc.load_model(model_uri).predict(frame)  # through MLflow's loader and signature enforcement
    reference = embed_split(trained, shards_dir(params, root), params.eval.split, batch_size=8)
    where = {sid: i for i, sid in enumerate(reference.sample_ids)}
    checked = 0
    for m in modalities:
        position = {int(r): j for j, r in enumerate(reference.rows[m])}
        dist = reference.dists[m]
        for _, got in out[out["modality"] == m].iterrows():
            j = position[where[rows[got["row"]]["sample_id"]]]
            assert torch.allclose(torch.tensor(got["means"]), dist.mu[j], atol=1e-5), (m, got["row"])
            assert torch.allclose(torch.tensor(got["weights"]), dist.weights()[j], atol=1e-5), (m, got["row"])
            if dist.logvar is not None:
                assert torch.allclose(torch.tensor(got["log_variances"]), dist.logvar[j], atol=1e-5)
            checked += 1
    assert checked == len(out) == sum(len(r) for r in reference.rows.values())
    return checked


def test_pyfunc_embeds_raw_inputs_as_the_checkpoint_embeds_the_shards(registered, champion):
    import mlflow
    import pandas as pd

    params, root, _ = registered
    assert assert_pyfunc_matches_checkpoint("models:/tiny-model@champion", params, root,
                                            params.registry.tracking_uri) == 24
    image = str(next((root / "data/raw/world/image").iterdir()))
    out = mlflow.pyfunc.load_model("models:/tiny-model@champion").predict(
        pd.DataFrame({"text": ["a red circle", None], "image": [None, image]}))
    assert list(out["modality"]) == ["text", "image"] and list(out["row"]) == [0, 1]
    assert set(out["geometry"]) == {"mixture"} and (out["uncertainty"] > 0).all()


def test_pyfunc_loads_the_packaged_models_and_reads_bytes(registered, champion):
    import pandas as pd

    params, root, _ = registered
    package = Path(champion.embedder.trained.params.loader.tokenizer or champion.embedder.features.get("text").path)
    assert "package" in package.parts  # the packaged copy, not the pip package or the cache
    for m in ("image", "text", "audio"):
        assert "package" in Path(champion.embedder.features.get(m).path).parts, m
    row = next(r for r in _test_rows(params, root) if isinstance(r.get("image"), str))
    image = Path(root / "data/raw/world" / row["image"])
    by_path = champion.predict(None, pd.DataFrame({"image": [str(image)]}))
    by_bytes = champion.predict(None, pd.DataFrame({"image": [image.read_bytes()]}))
    assert by_path["means"][0] == by_bytes["means"][0]


@pytest.mark.parametrize(("frame", "message"), [
    ({"colour": ["red"]}, "not modalities"),
    ({"text": [None]}, "row 0: no input"),
    ({"code": ["print(1)"]}, "column 'code': this model embeds only"),
    ({"image": ["/no/such/file.png"]}, "no such file"),
    ({"image": [b"not an image"]}, "row 0"),
    ({"text": []}, "nothing to embed: the input has no rows"),
])
def test_pyfunc_names_bad_inputs(champion, frame, message):
    import pandas as pd

    with pytest.raises(ValueError, match=message):
        champion.predict(None, pd.DataFrame(frame))


@pytest.mark.parametrize("given", [{"caption": ["a red circle"]}, ["a red circle", "a blue square"]])
def test_the_served_model_refuses_input_without_an_accepted_column(registered, given):
    """Through MLflow's loader, which drops columns outside the signature before the model sees them: no silent
    empty result, an error naming the accepted columns."""
    import mlflow
    import pandas as pd

    from multigeometry.registry.inputs import InputError

    model = mlflow.pyfunc.load_model("models:/tiny-model@champion")
    frame = pd.DataFrame(given) if isinstance(given, dict) else given
    with pytest.raises(InputError, match=r"nothing to embed: the input has (no rows|none of the columns this model "
                                         r"accepts); give a DataFrame with rows in any of audio, image, text"):
        model.predict(frame)


# ---------------------------------------------------------------------------------------------------------------------
# embed and search
# ---------------------------------------------------------------------------------------------------------------------


def test_search_builds_the_index_once_and_ranks_by_similarity(registered, champion, tmp_path):
    from multigeometry.registry.inputs import RawEmbedder
    from multigeometry.registry.tools import run_search
    from multigeometry.search import INDEX_JSON

    params, root, _ = registered
    query = {"text": "a large red circle"}
    rows, built = run_search(params, champion, tmp_path / "idx", query, 3, "test", root=root)
    assert built and (tmp_path / "idx" / INDEX_JSON).is_file()
    stamp = (tmp_path / "idx" / INDEX_JSON).stat().st_mtime_ns
    again, built = run_search(params, champion, tmp_path / "idx", query, 3, "test", ["image"], root=root)
    assert not built and (tmp_path / "idx" / INDEX_JSON).stat().st_mtime_ns == stamp
    assert {r["modality"] for r in rows} == {"image", "text", "audio"}
    assert [r for r in rows if r["modality"] == "image"] == again
    # the top k are the k best of a brute-force scoring of every image of the split
    from multigeometry.search import read_index_dir

    index = read_index_dir(tmp_path / "idx")
    trained = champion.trained
    q = RawEmbedder(trained).embed([query]).dists["text"]
    with torch.no_grad():
        scores = trained.similarity(q, index.dists["image"])[0]
    best = scores.topk(3)
    assert [r["score"] for r in again] == pytest.approx(best.values.tolist(), abs=1e-5)
    assert [r["sample_id"] for r in again] == [index.sample_ids[int(index.rows["image"][i])] for i in best.indices]
    assert all(r["uncertainty"] > 0 for r in again)
    # another model (its sha256) over the same folder: the index is rebuilt, not reused
    from multigeometry.paths import shards_dir
    from multigeometry.search import load_or_build

    rebuilt, built = load_or_build(trained, "0" * 64, shards_dir(params, root), "test", tmp_path / "idx")
    assert built and rebuilt.key["model_sha256"] == "0" * 64
    with pytest.raises(FileExistsError, match="not a search index"):
        load_or_build(trained, "0" * 64, shards_dir(params, root), "test", tmp_path)


def test_search_gives_calibrated_match_probabilities_and_says_no_match(registered, champion, tmp_path):
    """Platt scaling on the split's own pairs: matching pairs get higher match probabilities than the rest; the
    split's captions mostly find a likely match, and a query unlike anything in the index is flagged no_match."""
    import statistics

    from multigeometry.calibration import match_probability, pair_scores
    from multigeometry.evaluation.embed import embed_split
    from multigeometry.geometry.mixture import MixtureParams
    from multigeometry.paths import shards_dir
    from multigeometry.registry.tools import open_index
    from multigeometry.search import search

    params, root, _ = registered
    trained = champion.trained
    index, built = open_index(params, champion, tmp_path / "idx", "test", root)
    assert built and {"text->image", "image->text", "text->audio", "audio->text"} <= set(index.calibration)
    a, b = index.calibration["text->image"]
    assert a > 0  # a higher similarity is a likelier match
    emb = embed_split(trained, shards_dir(params, root), "test", batch_size=8)
    positives, negatives = pair_scores(emb.dists["text"], emb.groups("text"), emb.dists["image"],
                                       emb.groups("image"), trained.similarity)
    p_pos = statistics.mean(match_probability(float(s), a, b) for s in positives)
    p_neg = statistics.mean(match_probability(float(s), a, b) for s in negatives)
    assert p_pos > 0.5 > p_neg, (p_pos, p_neg)

    texts = index.dists["text"]
    answered = [search(trained, index, texts.map(lambda t, i=i: t[i : i + 1]), 3, ["image"], query_modality="text")
                for i in range(texts.batch_size)]
    assert all(0.0 <= r["match_prob"] <= 1.0 for rows in answered for r in rows)
    assert sum(not rows[0]["no_match"] for rows in answered) >= len(answered) / 2
    first = texts.map(lambda t: t[:1])
    assert isinstance(first, MixtureParams)
    images = index.dists["image"]
    away = -torch.nn.functional.normalize(images.mu.mean(dim=(0, 1)), dim=-1)  # opposite to where the items lie
    unlike = MixtureParams(first.logits, away.expand_as(first.mu).contiguous(), first.logvar)
    rows = search(trained, index, unlike, 3, ["image"], query_modality="text")
    assert all(r["no_match"] for r in rows) and rows[0]["match_prob"] < 0.5, (rows, a, b)
    assert 0.0 <= rows[0]["query_uncertainty_pct"] <= 100.0


def test_cli_embed_and_search(registered, champion, tmp_path, monkeypatch, capsys):
    from multigeometry.cli import main

    params, root, _ = registered
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params.to_dict()))
    monkeypatch.chdir(root)
    code = tmp_path / "q.py"
    code.write_text("print('hello')\n")
    base = ["--params", str(path), "--model", "models:/tiny-model@champion"]
    assert main(["embed", *base, "--text", "a small blue square", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["modality"] == "text" and len(row["weights"]) == 2 and len(row["means"][0]) == 32
    assert main(["embed", *base, "--audio", str(next((root / "data/raw/world/audio").iterdir()))]) == 0
    assert "modality:    audio" in capsys.readouterr().out
    assert main(["embed", *base, "--code", str(code)]) == 1  # this model has no code encoder
    assert "this model embeds only" in capsys.readouterr().err
    assert main(["search", *base, "--index", str(tmp_path / "idx"), "--query", "a red circle", "-k", "2",
                 "--target", "image", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in found] == [1, 2] and {r["modality"] for r in found} == {"image"}
    assert {"match_prob", "no_match", "query_uncertainty"} <= set(found[0])
    # `--query -`: a query a line from standard input, the model and the index loaded once
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("a red circle\n\na blue square\n"))
    assert main(["search", *base, "--index", str(tmp_path / "idx"), "--query", "-", "-k", "1", "--target", "image",
                 "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and [json.loads(line)[0]["rank"] for line in lines] == [1, 1]
    assert json.loads(lines[0]) == found[:1]  # the same answer as the one-shot command


def test_a_champion_that_cannot_be_compared_refuses(registered, monkeypatch):
    from multigeometry.registry import register as module

    params, root, _ = registered

    def fails(*_args, **_kwargs):
        raise RuntimeError("its feature dims differ from these shards'")

    monkeypatch.setattr(module, "champion_metric", fails)
    outcome = module.register_model(params, root, root / "data/models/tiny/model.pt",
                                    root / "data/eval/tiny/metrics.json")
    assert outcome["registered"] is False
    assert "cannot compare with the champion (version 1)" in outcome["gate"]["reason"]
