"""The Prefect flow's parts: cache keys from dvc.yaml, the training command, retries and failures that name the
stage, and that the CLI never imports Prefect. The flow end to end against `dvc repro` is in test_dvc_pipeline.py;
deployments against a real server in test_prefect_server.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from multigeometry.config import ParamsError, params_from_dict
from pipelines.launch import stage_command
from pipelines.stage_cache import StageSpecError, load_stage, missing_outputs, stage_key

REPO = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "validate", "shard", "train", "evaluate", "register")


def test_stage_specs_are_read_from_dvc_yaml():
    params = params_from_dict({"train": {"run_name": "r1"}, "data": {"dataset": "ds"}})
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name in STAGES:
        spec = load_stage(name, params)
        assert spec.params == tuple(dvc[name]["params"])
        assert not any(k.startswith("orchestration") for k in spec.params)  # DVC stages never read them
        assert "${" not in "".join(spec.deps + spec.outs)
    assert "data/models/r1/model.pt" in load_stage("evaluate", params).deps
    assert "metrics/runs/r1/headline.json" in load_stage("evaluate", params).outs  # metrics count as outputs
    assert "data/eval/r1/metrics.json" in load_stage("register", params).deps
    with pytest.raises(StageSpecError, match="no stage 'nope'"):
        load_stage("nope", params)


def test_a_training_knob_changes_only_the_train_key(tmp_path):
    base = params_from_dict({})
    knob = params_from_dict({"train": {"lr": 0.01}})
    orchestration = params_from_dict({"orchestration": {"dask_workers": 1, "retries": 0}})
    for name in STAGES:
        same = stage_key(name, base, tmp_path) == stage_key(name, knob, tmp_path)
        assert same is (name != "train"), name  # evaluate and register re-run through the new model.pt they read
        assert stage_key(name, base, tmp_path) == stage_key(name, orchestration, tmp_path)
    assert stage_key("train", base, tmp_path) == stage_key("train", base, tmp_path / "elsewhere")  # not the root


def test_dep_content_changes_the_key_and_missing_outputs_are_listed(tmp_path):
    params = params_from_dict({})
    validated = tmp_path / "data/validated/world"
    validated.mkdir(parents=True)
    (validated / "manifest.parquet").write_bytes(b"one")
    before = stage_key("shard", params, tmp_path)
    (validated / "manifest.parquet").write_bytes(b"two")
    assert stage_key("shard", params, tmp_path) != before
    copy = tmp_path / "copy"  # the same data in another folder: the same key (a scheduled run finds the cache)
    (copy / "data/validated/world").mkdir(parents=True)
    (copy / "data/validated/world/manifest.parquet").write_bytes(b"two")
    assert stage_key("shard", params, copy) == stage_key("shard", params, tmp_path)
    assert missing_outputs(load_stage("shard", params), tmp_path) == ["data/shards/world"]
    (tmp_path / "data/shards/world").mkdir(parents=True)
    assert missing_outputs(load_stage("shard", params), tmp_path) == []


def test_an_edited_source_folder_changes_the_prepare_key(tmp_path):
    """The fingerprint stage records the files behind `folder:`; prepare's key includes them through its deps."""
    from multigeometry.stages.fingerprint import fingerprint

    folder = tmp_path / "mydata"
    folder.mkdir()
    (folder / "pairs.jsonl").write_text('{"sample_id": "a", "text": "a red circle"}\n')
    params = params_from_dict({"data": {"source": f"folder:{folder}", "dataset": "mydata"}})
    assert "data/sources/mydata.json" in load_stage("prepare", params).deps
    fingerprint(params, tmp_path)
    before = stage_key("prepare", params, tmp_path)
    fingerprint(params, tmp_path)
    assert stage_key("prepare", params, tmp_path) == before  # nothing changed: prepare stays cached
    (folder / "pairs.jsonl").write_text('{"sample_id": "a", "text": "a blue square"}\n')
    fingerprint(params, tmp_path)
    assert stage_key("prepare", params, tmp_path) != before


@pytest.mark.parametrize(("stage", "key"), [("train", "train"), ("evaluate", "eval")])
def test_launched_stages_run_dvc_yamls_command_or_the_launcher(stage, key, tmp_path):
    cmd = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]["cmd"]
    assert cmd == f"torchrun --standalone --nproc-per-node=${{{key}.nproc}} -m multigeometry {stage}"
    params = params_from_dict({key: {"nproc": 2}})
    command = stage_command(stage, params, tmp_path / "p.yaml", ["train.lr=0.1"])
    assert Path(command[0]).name == "torchrun"
    assert command[1:] == ["--standalone", "--nproc-per-node=2", "-m", "multigeometry", stage, "--params",
                           str((tmp_path / "p.yaml").resolve()), "--set", "train.lr=0.1"]
    launcher = params_from_dict({key: {"nproc": 4}, "orchestration": {
        "launcher": "torchrun --nnodes=2 --rdzv-endpoint=h0:29500 --nproc-per-node={nproc} {args}"}})
    assert stage_command(stage, launcher, Path("/p y.yaml"), []) == [
        "torchrun", "--nnodes=2", "--rdzv-endpoint=h0:29500", "--nproc-per-node=4", "-m", "multigeometry", stage,
        "--params", "/p y.yaml"]
    with pytest.raises(ValueError, match="stage 'shard' is not launched under torchrun"):
        stage_command("shard", params, tmp_path / "p.yaml", [])


@pytest.mark.parametrize(("launcher", "match"), [("torchrun {nproc}", "must contain {args}"),
                                                 ("run {nodes} {args}", "allowed placeholders")])
def test_bad_launcher_names_the_key(launcher, match):
    with pytest.raises(ParamsError, match=f"orchestration.launcher: .*{match}"):
        params_from_dict({"orchestration": {"launcher": launcher}})


def test_retries_then_a_failure_that_names_the_stage(prefect_harness, monkeypatch, tmp_path):
    import pipelines.flows as flows

    calls: list[str] = []

    def fake(name, params, params_file, overrides, root):
        calls.append(name)
        if name == "prepare" and calls.count("prepare") == 1:
            raise ConnectionError("source offline")
        if name == "validate":
            raise ValueError("too many bad rows")
        return root / name

    monkeypatch.setattr(flows, "_call_stage", fake)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"orchestration": {"retries": 2, "retry_delay_s": 0.0}}))
    with pytest.raises(flows.StageFailed, match=r"stage 'validate' failed: ValueError: too many bad rows"):
        flows.pipeline(str(params_file), [], str(tmp_path))
    # the source fingerprinted first; prepare retried once; validate has no retries
    assert calls == ["fingerprint", "prepare", "prepare", "validate"]


def test_the_cli_never_imports_prefect():
    code = ("import sys; import multigeometry.cli, multigeometry.stages.shard, multigeometry.stages.train; "
            "sys.exit('prefect' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
