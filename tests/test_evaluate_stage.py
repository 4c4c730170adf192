"""The evaluate stage on a tiny trained world: metrics.json with flat keys, the headline file and plot data (in git),
grids; and a cone model's containment metrics."""

from __future__ import annotations

import csv
import json

import pytest

from multigeometry.config import params_from_dict
from multigeometry.evaluation.report import CERTAIN_PLOT, HEADLINE_FILE, METRICS_FILE, RECALL_PLOT
from multigeometry.paths import eval_dir, run_reports_dir
from multigeometry.stages.evaluate import evaluate
from multigeometry.stages.train import train
from tests.conftest import tiny_trained_raw

pytestmark = pytest.mark.slow

DIRECTIONS = ["image_to_text", "text_to_image", "audio_to_text", "text_to_audio"]


def test_evaluate_writes_metrics_plots_and_grids(tiny_trained):
    params, root = tiny_trained
    out = evaluate(params, root)
    assert out == eval_dir(params, root)
    reports = run_reports_dir(params, root)
    assert reports == root / "metrics/runs/tiny"
    metrics = json.loads((out / METRICS_FILE).read_text())
    for d in DIRECTIONS:
        for key in ("R@1", "R@5", "R@10", "median_rank", "mean_rank", "mAP@R", "uncertainty_spearman"):
            assert f"{d}/{key}" in metrics, f"{d}/{key}"
        assert 0.0 <= metrics[f"{d}/R@1"] <= metrics[f"{d}/R@5"] <= metrics[f"{d}/R@10"] <= 1.0
    n_test = metrics["image_to_text/n_queries"]
    assert metrics["mean_R@1"] >= 2.0 / n_test  # twice chance after a few steps on 24 training items
    assert {"hierarchy/level0/R@1", "hierarchy/image/level1/R@1", "mean_uncertainty_spearman"} <= set(metrics)
    assert "hierarchy/image/containment_AUC" in metrics  # mixtures have a containment score of their own
    for m in ("image", "audio", "text"):  # compose(parts) -> items beside the compound's own caption
        assert 0.0 <= metrics[f"composition/{m}/R@1"] <= 1.0 and 0.0 <= metrics[f"composition/{m}/caption_R@1"] <= 1.0
    assert metrics["composition/n_compounds"] >= 2
    assert "composition/closed_form_R@1" not in metrics  # a closed form for cones only
    headline = json.loads((reports / HEADLINE_FILE).read_text())  # what `dvc metrics show` lists: a few lines
    assert {"mean_R@1", "mean_uncertainty_spearman", "composition/R@1", *(f"{d}/R@1" for d in DIRECTIONS)} <= set(
        headline) and set(headline) < set(metrics) and len(headline) <= len(metrics) // 4
    assert all(headline[k] == metrics[k] for k in headline)
    with (reports / RECALL_PLOT).open() as f:
        rows = list(csv.DictReader(f))
    assert {r["direction"] for r in rows} == set(DIRECTIONS) and len(rows) == 4 * params.eval.curve_max_k
    with (reports / CERTAIN_PLOT).open() as f:
        assert {int(r["most_certain_percent"]) for r in csv.DictReader(f)} == set(params.eval.uncertainty_quantiles)
    from PIL import Image

    grid = Image.open(out / "grids" / "text_to_image.png")
    assert grid.size == (128 * (1 + params.eval.grid_k), 128 * params.eval.grid_queries)


def test_cone_model_gets_containment_and_level_metrics(tiny_trained):
    params, root = tiny_trained
    cone = params_from_dict(tiny_trained_raw(root, geometry="cone", run_name="tiny-cone", epochs=4))
    train(cone, root)
    metrics = json.loads((evaluate(cone, root) / METRICS_FILE).read_text())
    assert 0.0 <= metrics["hierarchy/containment_AUC"] <= 1.0
    assert "image_to_text/uncertainty_spearman" in metrics  # the aperture is the cone's uncertainty
    assert 0.0 <= metrics["composition/R@1"] <= 1.0  # the composer speaks cones too
    assert 0.0 <= metrics["composition/closed_form_R@1"] <= 1.0  # beside compose_cones of the parts' cones
