"""What the distributions say, measured against ground truth: uncertainty against the ambiguity the world injected,
R@1 per uncertainty decile, flagging the most corrupted queries, and whether general captions are the uncertain ones."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from multigeometry.config import params_from_dict
from multigeometry.evaluation.uncertainty import ambiguity_metrics, auroc, decile_recall, severities
from tests.conftest import still


def test_auroc_is_the_share_of_correctly_ordered_pairs():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (40,), generator=gen).double()  # many ties
    labels = torch.rand(40, generator=gen) < 0.3
    pos, neg = scores[labels], scores[~labels]
    brute = sum(float(p > n) + 0.5 * float(p == n) for p in pos for n in neg) / (len(pos) * len(neg))
    assert auroc(scores, labels) == pytest.approx(brute)
    assert math.isnan(auroc(scores, torch.zeros(40, dtype=torch.bool)))


def test_decile_recall_falls_when_uncertain_queries_fail():
    uncertainty = torch.arange(100).double()
    ranks = torch.where(uncertainty < 50, 1, 7)
    curve = decile_recall(uncertainty, ranks)
    assert curve == [1.0] * 5 + [0.0] * 5
    assert decile_recall(uncertainty[:5], ranks[:5]) == []


def test_ambiguity_metrics_track_the_injected_severity():
    gen = torch.Generator().manual_seed(1)
    severity = torch.rand(200, generator=gen).double()
    tracking = severity + 0.05 * torch.randn(200, generator=gen).double()
    good = ambiguity_metrics(tracking, severity)
    assert good["uncertainty_ambiguity_spearman"] > 0.9 and good["corrupted_auroc"] > 0.9
    blind = ambiguity_metrics(torch.rand(200, generator=gen).double(), severity)
    assert abs(blind["uncertainty_ambiguity_spearman"]) < 0.25 and 0.3 < blind["corrupted_auroc"] < 0.7
    assert ambiguity_metrics(tracking, torch.zeros(200, dtype=torch.float64)) == {}  # nothing injected: no metric
    rows = [{"image": {"severity": 0.5}}, {}, {"text": {"severity": 1.0}}]
    s = severities(rows, "image")
    assert s[0] == 0.5 and math.isnan(s[1]) and math.isnan(s[2])


@pytest.fixture(scope="module")
def ambiguous_world(tmp_path_factory):
    """A small world with injected ambiguity, and a cone model trained on it for a few steps."""
    from multigeometry.stages.prepare import prepare
    from multigeometry.stages.shard import shard
    from multigeometry.stages.train import train
    from multigeometry.stages.validate import validate

    root = tmp_path_factory.mktemp("ambiguous")
    raw = {
        "data": {"dataset": "amb", "splits": {"train": 0.5, "val": 0.1, "test": 0.4},
                 "world": {"n_items": 40, "workers": 1, "image_size": 64, "audio": False,
                           "ambiguity": {"clean_fraction": 0.3}}},
        "validate": {"modalities": ["image", "text"], "data_docs": False},
        "features": {"audio": {"model": ""}, "code": {"model": ""}},
        "shard": {"workers": 1},
        "pairs": {"pairs": [{"a": "image", "b": "text"}]},
        "model": {"geometry": "cone", "composer": {"enabled": False}},
        "train": {"epochs": 30, "val_every": 5, "device": "cpu",
                  "tracking_uri": f"sqlite:///{(root / 'mlflow.db').resolve()}"},
        "eval": {"device": "cpu", "grid_queries": 0},
    }
    params = params_from_dict(still(raw))
    for stage in (prepare, validate, shard, train):
        stage(params, root)
    return params, root


def test_evaluate_reports_uncertainty_against_ambiguity_deciles_and_generality(ambiguous_world):
    from multigeometry.paths import eval_dir, run_reports_dir
    from multigeometry.stages.evaluate import evaluate

    params, root = ambiguous_world
    evaluate(params, root)
    metrics = json.loads((eval_dir(params, root) / "metrics.json").read_text())
    for direction in ("image_to_text", "text_to_image"):
        assert -1.0 <= metrics[f"{direction}/uncertainty_ambiguity_spearman"] <= 1.0
        assert 0.0 <= metrics[f"{direction}/corrupted_auroc"] <= 1.0
        assert 0.0 <= metrics[f"{direction}/R@1_most_certain_decile"] <= 1.0
    assert "mean_uncertainty_ambiguity_spearman" in metrics and "mean_corrupted_auroc" in metrics
    assert -1.0 <= metrics["hierarchy/generality_spearman"] <= 1.0
    assert {"hierarchy/level0/mean_uncertainty", "hierarchy/level3/mean_uncertainty"} <= set(metrics)
    with (run_reports_dir(params, root) / "plots" / "r1_by_uncertainty_decile.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["direction"] for r in rows} == {"image_to_text", "text_to_image"}
    assert sorted({int(r["uncertainty_decile"]) for r in rows}) == list(range(1, 11))
