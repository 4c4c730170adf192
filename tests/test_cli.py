from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from multigeometry.cli import STAGES, main

HEAVY = ("torch", "pandas", "great_expectations", "datasets", "transformers", "mlflow", "prefect", "dvc", "numpy")


def test_help_of_every_command_imports_no_heavy_library():
    # --help must answer at once: building the parser and printing help touches none of the heavy libraries
    commands = [[], ["params"], ["deps"], *[[name] for name in STAGES]]
    script = (
        "import sys\n"
        "from multigeometry.cli import main\n"
        f"for argv in {commands!r}:\n"
        "    try:\n"
        "        main([*argv, '--help'])\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (argv, e.code)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
    for name in STAGES:
        assert name in out.stdout


def test_params_prints_resolved_params_with_overrides(capsys, tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  world:\n    n_items: 5\n")
    assert main(["params", "--params", str(path), "--set", "model.embed_dim=32", "-S", "seed=7"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["world"]["n_items"] == 5
    assert printed["model"]["embed_dim"] == 32
    assert printed["seed"] == 7


def test_bad_params_exit_2_with_a_message(capsys, tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("model:\n  geometry: blob\n")
    assert main(["params", "--params", str(path)]) == 2
    err = capsys.readouterr().err
    assert "model.geometry: 'blob' is not allowed" in err and "params.yaml" in err


def test_stage_failure_names_the_stage(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("{}\n")
    assert main(["validate"]) == 1
    assert "multigeometry validate: FileNotFoundError" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(STAGES))
def test_every_stage_module_has_its_function(name):
    import importlib

    module = importlib.import_module(STAGES[name][0])
    assert callable(getattr(module, name))
