"""`dvc repro` end to end on tiny params in a temporary copy of the repository (git and DVC initialised): exactly
what changed re-runs, restored params come from DVC's run cache, metrics compare between two commits, plots render
offline, and a preset copied over params.yaml keeps `dvc status` working."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import STILL_WORLD

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _dotted(tree: dict, prefix: str = "") -> dict:
    """A nested params dict as dotted keys (`data.world.video`), as `_set` takes them."""
    out = {}
    for key, value in tree.items():
        out |= _dotted(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return out


# the still world (tests/conftest.py's STILL_WORLD) as dotted keys; the pairs each test sets itself
STILL_KEYS = {k: v for k, v in _dotted(STILL_WORLD).items() if not k.startswith("pairs.")}


def _git_commit(repo: Path, message: str) -> None:
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", message], repo)


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(cmd: list[str], cwd: Path) -> str:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(cwd / "src")
    env["DVC_NO_ANALYTICS"] = "1"
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


def _ran(output: str) -> list[str]:
    """The stages a repro ran, leaving out `fingerprint` (always run, it reads the files behind data.source)."""
    return [s for s in re.findall(r"Running stage '([\w-]+)'", output) if s != "fingerprint"]


def _set(repo: Path, key: str, value) -> None:
    path = repo / "params.yaml"
    tree = yaml.safe_load(path.read_text())
    node = tree
    *parents, last = key.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    path.write_text(yaml.safe_dump(tree, sort_keys=False))


def _check_registered(repo: Path) -> None:
    """The first repro registered version 1 with the alias in the repo's SQLite store, and the pyfunc behind
    models:/multigeometry@champion embeds raw inputs as the checkpoint embeds the shards."""
    from multigeometry.config import load_params
    from multigeometry.registry.register import connect
    from tests.test_registry import assert_pyfunc_matches_checkpoint

    outcome = json.loads((repo / "data/registry/default/registration.json").read_text())
    assert outcome["registered"] is True and outcome["version"] == "1", outcome["gate"]["reason"]
    assert outcome["tags"]["dvc_data_hash"].endswith(".dir")  # the shards' hash from dvc.lock
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    assert str(connect(uri).get_model_version_by_alias("multigeometry", "champion").version) == "1"
    assert assert_pyfunc_matches_checkpoint("models:/multigeometry@champion", load_params(repo / "params.yaml"),
                                            repo, uri) > 0


def _digests(folder: Path) -> dict[str, str]:
    import hashlib

    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file()}


def _check_flow_matches(repo: Path, root: Path) -> None:
    """The Prefect flow on the same params, in another root: the same metrics.json as `dvc repro`, the same shards
    byte for byte (Dask fan-out against the process pool), and a re-run that runs no stage. (Which stage keys a
    knob changes is test_flows.py's; a changed key's cascade through the outputs, dvc's below.)"""
    from pipelines.flows import STAGES, pipeline

    root.mkdir()
    first = pipeline(str(repo / "params.yaml"), [], str(root))
    assert first["ran"] == list(STAGES)
    metrics = "data/eval/default/metrics.json"
    assert json.loads((root / metrics).read_text()) == json.loads((repo / metrics).read_text())
    assert _digests(root / "data/shards/world") == _digests(repo / "data/shards/world")
    again = pipeline(str(repo / "params.yaml"), [], str(root))
    assert again["ran"] == [] and again["cached"] == list(STAGES)


@pytest.fixture()
def repo_copy(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", "pyproject.toml"):
        shutil.copy2(REPO / name, repo / name)
    shutil.copytree(REPO / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / ".dvc").mkdir()
    for name in ("config", ".gitignore"):
        shutil.copy2(REPO / ".dvc" / name, repo / ".dvc" / name)
    shutil.copytree(REPO / ".dvc" / "plots", repo / ".dvc" / "plots")  # the offline page, the plot templates
    _set(repo, "data.world.n_items", 10)
    _set(repo, "data.world.image_size", 48)
    _set(repo, "data.world.workers", 1)
    _set(repo, "validate.image_min_side", 16)
    _set(repo, "shard.workers", 1)
    _set(repo, "features.code.model", "")  # real pretrained features for image, text and audio
    _set(repo, "pairs.pairs", [{"a": "image", "b": "text", "weight": 1.0}, {"a": "audio", "b": "text", "weight": 1.0}])
    for key, value in STILL_KEYS.items():  # video's clips and pairs: tests/test_video_pipeline.py
        _set(repo, key, value)
    _set(repo, "loader.batch_size", 4)
    _set(repo, "loader.workers", 0)
    _set(repo, "train.epochs", 1)
    _set(repo, "train.tracking_uri", f"sqlite:///{repo / 'mlflow.db'}")
    _set(repo, "orchestration.dask_workers", 1)  # the flow's fan-out: one worker is enough to compare the bytes
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"]):
        _run(cmd, repo)
    return repo


def test_repro_reruns_exactly_what_changed(repo_copy: Path, tmp_path: Path, prefect_harness):
    first = _run(["dvc", "repro"], repo_copy)
    assert _ran(first) == ["prepare", "validate", "shard", "train", "evaluate", "register"]
    assert "Running stage 'fingerprint'" in first
    assert (repo_copy / "data/validated/world/manifest.parquet").is_file()
    index = json.loads((repo_copy / "data/shards/world/index.json").read_text())
    assert sum(split["samples"] for split in index["splits"].values()) == 10
    assert {"image.emb", "text.emb", "audio.emb", "audio.feat"} <= set(index["features"])
    assert "code.emb" not in index["features"]

    metrics = json.loads((repo_copy / "data/eval/default/metrics.json").read_text())
    assert {"image_to_text/R@1", "text_to_audio/mAP@R", "mean_R@1", "hierarchy/level0/R@1"} <= set(metrics)
    assert (repo_copy / "data/eval/default/grids/text_to_image.png").is_file()
    _check_registered(repo_copy)
    _check_flow_matches(repo_copy, tmp_path / "flow")

    again = _run(["dvc", "repro"], repo_copy)
    assert _ran(again) == []

    # metrics and plot data are in git beside dvc.lock, so two commits compare
    _git_commit(repo_copy, "first run")
    first_model = _sha(repo_copy / "data/models/default/model.pt")
    _set(repo_copy, "train.weight_decay", 0.05)  # a training knob never re-runs a data stage
    assert _ran(_run(["dvc", "repro"], repo_copy)) == ["train", "evaluate", "register"]
    _git_commit(repo_copy, "weight_decay 0.05")
    diff = _run(["dvc", "metrics", "diff", "HEAD~1", "HEAD", "--all"], repo_copy)
    for path, key in [("headline.json", "mean_R@1"), ("train.json", "train/loss")]:
        assert re.search(rf"metrics/runs/default/{path}\s+{re.escape(key)}\s+[-\d.]+\s+[-\d.]+", diff), diff
    shown = _run(["dvc", "metrics", "show"], repo_copy)  # readable: the headline, not every metric
    assert "mean_R@1" in shown and "image_to_text/R@1" in shown and "image_to_text/R@5" not in shown, shown
    assert "rows_passed" in shown, shown  # validation's counts beside them
    assert json.loads((repo_copy / "metrics/data/world.json").read_text())["rows_passed"] == 10
    full = _run(["dvc", "metrics", "diff", "HEAD~1", "HEAD", "--all", "--targets", "data/eval/default/metrics.json"],
                repo_copy)  # every metric: a cached output, read from DVC's cache at each commit
    assert "image_to_text/R@5" in full and "text_to_audio/mAP@R" in full, full
    _check_plots_render_offline(repo_copy)

    # restoring known params restores their outputs from DVC's run cache: no training, the same model bytes; register
    # (a side effect, not restored) checks the gate again and registers nothing new
    from multigeometry.registry.register import connect

    registry = connect(f"sqlite:///{repo_copy / 'mlflow.db'}")
    versions = len(registry.search_model_versions("name='multigeometry'"))
    _set(repo_copy, "train.weight_decay", 0.1)
    restored = _run(["dvc", "repro"], repo_copy)
    assert _ran(restored) == ["register"] and restored.count("is cached - skipping run") == 2, restored
    assert _sha(repo_copy / "data/models/default/model.pt") == first_model
    assert json.loads((repo_copy / "data/eval/default/metrics.json").read_text()) == metrics
    assert len(registry.search_model_versions("name='multigeometry'")) == versions

    _set(repo_copy, "registry.min_metric", 2.0)  # a registry knob re-runs only register; no model can pass now
    assert _ran(_run(["dvc", "repro"], repo_copy)) == ["register"]
    refused = json.loads((repo_copy / "data/registry/default/registration.json").read_text())
    assert refused["registered"] is False and "below registry.min_metric" in refused["gate"]["reason"]

    # a validate knob re-runs validate; its output is the same, so shard does not re-run
    _set(repo_copy, "validate.max_bad_fraction", 0.5)
    assert _ran(_run(["dvc", "repro"], repo_copy)) == ["validate"]

    # a shard knob: shard, and train on the new shards (a data knob's run of every stage is the first repro's)
    _set(repo_copy, "shard.max_samples", 4)
    assert _ran(_run(["dvc", "repro"], repo_copy)) == ["shard", "train", "evaluate", "register"]
    train_metrics = json.loads((repo_copy / "metrics/runs/default/train.json").read_text())
    assert train_metrics["step"] >= 1


def test_an_edited_source_folder_reruns_prepare(repo_copy: Path, tmp_path: Path):
    """A `folder:` source lives outside the workspace: the fingerprint stage reads it on every repro, so editing its
    pairs file re-runs prepare, and an unchanged folder re-runs nothing."""
    folder = tmp_path / "mydata"
    folder.mkdir()
    pairs = folder / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"sample_id": f"s{i}", "text": f"caption {i}"}) + "\n" for i in range(4)))
    _set(repo_copy, "data.source", f"folder:{folder}")
    _set(repo_copy, "data.dataset", "mydata")
    assert _ran(_run(["dvc", "repro", "prepare"], repo_copy)) == ["prepare"]
    assert _ran(_run(["dvc", "repro", "prepare"], repo_copy)) == []
    pairs.write_text(pairs.read_text().replace("caption 3", "an edited caption"))
    assert _ran(_run(["dvc", "repro", "prepare"], repo_copy)) == ["prepare"]
    import pandas as pd

    texts = set(pd.read_parquet(repo_copy / "data/raw/mydata/manifest.parquet")["text"])
    assert "an edited caption" in texts and "caption 3" not in texts


def _check_plots_render_offline(repo: Path) -> None:
    """`dvc plots show` writes a page that loads no script from the network (the inlined Vega of .dvc/plots/
    offline.html) and draws the recall curves one line a direction."""
    _run(["dvc", "plots", "show", "-o", "plots_html"], repo)
    page = (repo / "plots_html/index.html").read_text()
    assert not re.search(r"<script[^>]*\bsrc=", page), "a script is loaded from elsewhere"
    assert "cdn.jsdelivr" not in page and "vegaEmbed(" in page and 'var e="5.20.2"' in page
    specs = [json.loads(m) for m in re.findall(r"var spec = (\{.*?\});\n", page, flags=re.S)]
    recall = [s for s in specs if s.get("encoding", {}).get("x", {}).get("field") == "k"]
    assert len(recall) == 1 and recall[0]["encoding"]["color"]["field"] == "direction"
    assert {row["direction"] for row in recall[0]["data"]["values"]} == {
        "image_to_text", "text_to_image", "audio_to_text", "text_to_audio"}


def test_a_preset_copied_over_params_keeps_dvc_status_working(tmp_path: Path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy2(REPO / name, repo / name)
    shutil.copytree(REPO / ".dvc", repo / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp", "config.local"))
    shutil.copy2(REPO / "presets/flickr30k.yaml", repo / "params.yaml")
    _run(["git", "init", "-q"], repo)
    status = _run(["dvc", "status"], repo)
    for stage in ("prepare", "validate", "shard", "train", "evaluate", "register"):
        assert f"{stage}:" in status, status  # every stage is listed as changed: nothing has run here
    assert "data/models/flickr30k/model.pt" in _run(["dvc", "status", "train"], repo)
