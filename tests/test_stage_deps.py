"""Each stage's code deps in dvc.yaml are its import closure (`multigeometry deps`), the Prefect flow's cache keys read
the same lists, and dvc.yaml's outputs are the file names paths.py owns."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from multigeometry import paths, stage_deps
from multigeometry.cli import STAGES
from multigeometry.import_graph import closure, imports_of, package_modules
from tests.conftest import tiny_params

REPO = Path(__file__).resolve().parents[1]
DVC_YAML = REPO / "dvc.yaml"


def _stages() -> dict:
    return yaml.safe_load(DVC_YAML.read_text())["stages"]


def _entries(items: list | None) -> list[str]:
    return [next(iter(i)) if isinstance(i, dict) else i for i in items or []]


def test_every_stage_import_closure_is_covered_by_its_dvc_yaml_deps():
    reports = stage_deps.check(DVC_YAML)
    assert {r.stage for r in reports} == set(STAGES)
    assert all(not r.uncovered for r in reports), {r.stage: r.uncovered for r in reports}
    assert stage_deps.describe(reports) == "", "run `multigeometry deps --write` and commit dvc.yaml"


def test_drifted_deps_named_in_the_issue_are_now_listed():
    deps = {name: _entries(stage.get("deps")) for name, stage in _stages().items()}
    assert "src/multigeometry/models/whisper.py" in deps["shard"]
    assert all("src/multigeometry/config.py" in d for d in deps.values())
    def covered(path: str, entries: list[str]) -> bool:
        return any(path == e or path.startswith(e + "/") for e in entries)

    for module in ("geometry/cone.py", "geometry/mixture.py", "models/pair_model.py", "evaluation/suite.py"):
        assert covered(f"src/multigeometry/{module}", deps["register"]), module


def _fake_package(tmp_path: Path) -> Path:
    """A project with a small `multigeometry` package: stage `a` imports `util` lazily, `lib` (whole) and, only for
    the type checker, `heavy`; stage `b` imports one module of `lib`, relatively."""
    files = {
        "__init__.py": "VERSION = 1\n",
        "stages/__init__.py": "",  # empty: runs nothing, so no dep (DVC warns about empty deps)
        "stages/a.py": ("from typing import TYPE_CHECKING\nfrom multigeometry.lib import one, two\n"
                        "if TYPE_CHECKING:\n    from multigeometry import heavy\n"
                        "def a():\n    from multigeometry.util import helper\n"),
        "stages/b.py": "from ..lib.one import x\n",
        "lib/__init__.py": "",
        "lib/one.py": "x = 1\n",
        "lib/two.py": "import multigeometry.util\n",
        "util.py": "def helper():\n    pass\n",
        "heavy.py": "",
    }
    package = tmp_path / "src" / "multigeometry"
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n"
        "  a:\n    cmd: run a\n    deps:\n      - data/in.txt   # the data\n"
        "      - src/multigeometry/stages/a.py\n    outs:\n      - data/a\n\n"
        "  b:\n    cmd: run b\n    deps:\n      - data/a\n    outs:\n      - data/b\n"
    )
    return package


def test_closure_counts_lazy_and_relative_imports_not_type_checking_ones(tmp_path):
    package = _fake_package(tmp_path)
    a = closure(["multigeometry.stages.a"], package)
    assert {"multigeometry.util", "multigeometry.lib.two", "multigeometry.stages", "multigeometry"} <= a
    assert "multigeometry.heavy" not in a
    assert closure(["multigeometry.stages.b"], package) == {"multigeometry", "multigeometry.stages",
                                                           "multigeometry.stages.b", "multigeometry.lib",
                                                           "multigeometry.lib.one"}
    assert {e.line for e in imports_of("multigeometry.stages.a", package) if e.target == "multigeometry.util"} == {6}


def test_code_deps_list_whole_folders_only_when_every_module_is_imported(tmp_path):
    package = _fake_package(tmp_path)
    assert stage_deps.code_deps("a", tmp_path, package) == [
        "src/multigeometry/__init__.py", "src/multigeometry/lib", "src/multigeometry/stages/a.py",
        "src/multigeometry/util.py"]
    assert "src/multigeometry/lib/one.py" in stage_deps.code_deps("b", tmp_path, package)


def test_check_names_uncovered_modules_and_write_fixes_them_keeping_the_rest(tmp_path):
    package = _fake_package(tmp_path)
    dvc_yaml = tmp_path / "dvc.yaml"
    reports = {r.stage: r for r in stage_deps.check(dvc_yaml, package)}
    assert "src/multigeometry/util.py" in reports["a"].uncovered
    assert "stage a: missing" in stage_deps.describe(list(reports.values()))
    assert stage_deps.write(dvc_yaml, package) is True
    assert stage_deps.describe(stage_deps.check(dvc_yaml, package)) == ""
    text = dvc_yaml.read_text()
    assert "- data/in.txt   # the data" in text and "`multigeometry deps --write`" in text
    stages = yaml.safe_load(text)["stages"]
    assert stages["b"]["deps"][0] == "data/a" and stages["a"]["outs"] == ["data/a"]
    assert stage_deps.write(dvc_yaml, package) is False  # idempotent


def test_a_dvc_yaml_without_a_stage_of_the_package_is_a_clear_error(tmp_path):
    package = _fake_package(tmp_path)
    dvc_yaml = tmp_path / "dvc.yaml"
    dvc_yaml.write_text("stages:\n  a:\n    cmd: run a\n    deps:\n      - data/in.txt\n")
    with pytest.raises(stage_deps.StageDepsError, match=r"dvc.yaml: its stages \['a'\]"):
        stage_deps.check(dvc_yaml, package)


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd / "src")}
    return subprocess.run([sys.executable, "-m", "multigeometry", *args], cwd=cwd, env=env, capture_output=True,
                          text=True)


def test_cli_check_fails_on_a_stale_dvc_yaml_and_write_fixes_it(tmp_path):
    shutil.copytree(REPO / "src" / "multigeometry", tmp_path / "src" / "multigeometry",
                    ignore=shutil.ignore_patterns("__pycache__"))
    stale = DVC_YAML.read_text().replace("      - src/multigeometry/models/whisper.py\n", "", 1)
    assert stale != DVC_YAML.read_text()
    (tmp_path / "dvc.yaml").write_text(stale)
    out = _cli(["deps", "--check"], tmp_path)
    assert out.returncode == 1 and "stage shard: missing ['src/multigeometry/models/whisper.py']" in out.stderr
    assert _cli(["deps", "--write"], tmp_path).returncode == 0
    assert (tmp_path / "dvc.yaml").read_text() == DVC_YAML.read_text()
    assert _cli(["deps", "--check"], tmp_path).returncode == 0
    missing = _cli(["deps", "--check", "--dvc-yaml", "nowhere.yaml"], tmp_path)
    assert missing.returncode == 2 and "nowhere.yaml" in missing.stderr


def test_prefect_cache_keys_read_the_computed_deps():
    from pipelines.stage_cache import load_stage

    params = tiny_params()
    prefix = stage_deps.code_prefix(REPO)
    for stage in STAGES:
        code = [d for d in load_stage(stage, params, DVC_YAML).deps if d.startswith(prefix + "/")]
        assert code == stage_deps.code_deps(stage, REPO), stage


def test_dvc_yaml_outputs_are_the_names_paths_owns():
    stages = _stages()
    assert list(stages) == list(paths.STAGE_OUTPUTS)
    for name, stage in stages.items():
        declared = [o for key in ("outs", "metrics", "plots") for o in _entries(stage.get(key))]
        assert sorted(declared) == sorted(paths.STAGE_OUTPUTS[name]), name


def test_every_data_dep_is_an_output_of_an_earlier_stage():
    prefix = stage_deps.code_prefix(REPO)
    earlier: list[str] = []
    for name, stage in _stages().items():
        for dep in _entries(stage.get("deps")):
            if not dep.startswith(prefix + "/"):
                assert any(dep == out or dep.startswith(out + "/") for out in earlier), f"{name}: {dep}"
        earlier += paths.STAGE_OUTPUTS[name]


def test_paths_fill_templates_from_params_and_name_unknown_keys(tmp_path):
    params = tiny_params(train={"run_name": "r1"})
    assert paths.models_dir(params, tmp_path) == tmp_path / "data" / "models" / "r1"
    assert paths.data_report_path(params) == Path("metrics/data/world.json")
    with pytest.raises(paths.UnknownParamError, match=r"data/\$\{data.nope\}: \$\{data.nope\} names no param"):
        paths.fill("data/${data.nope}", params)


def test_evaluation_registry_and_serving_do_not_import_training_or_the_loss():
    """Dependencies point one way (DESIGN.md): what evaluation, the registry and serving share with training lives
    in geometry/ (the similarity: `geometry.similarity`, held by the model), models/, data/ or tracking.py."""
    serving = ("multigeometry.evaluation", "multigeometry.registry", "multigeometry.inference", "multigeometry.search",
               "multigeometry.ann")
    found = {m: [e.target for e in imports_of(m)
                 if e.target.startswith("multigeometry.training") or e.target == "multigeometry.losses"]
             for m in package_modules() if m.startswith(serving)}
    assert {m: t for m, t in found.items() if t} == {}
    assert {"multigeometry.evaluation.suite", "multigeometry.registry.register", "multigeometry.inference",
            "multigeometry.ann", "multigeometry.search"} <= set(found)
    # nor through anything they import
    for module in ("multigeometry.inference", "multigeometry.ann", "multigeometry.evaluation.suite"):
        reached = closure([module])
        assert "multigeometry.losses" not in reached and not any(m.startswith("multigeometry.training")
                                                                 for m in reached), module
