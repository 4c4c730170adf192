"""Fault suite, params: every bad params file or override is one message naming the key or the file (exit 2, no
traceback), and every params value that becomes a path component is a plain folder name."""

from __future__ import annotations

from pathlib import Path

import pytest

from multigeometry.cli import main
from multigeometry.config import ParamsError, load_params, params_from_dict


def _bad_params(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert main(["params", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert err.startswith("multigeometry: bad params: "), err
    return err


@pytest.mark.parametrize(("override", "names"), [
    ("train.lr=[", "train.lr: the value is not valid YAML"),
    ("train.lr=.nan", "train.lr: nan is not a finite number"),
    ("loss.kl_weight=.inf", "loss.kl_weight: inf is not a finite number"),
    ("seed=100000000000000000000", "seed: 100000000000000000000 does not fit a 64-bit integer"),
    ("seed=4294967296", "seed: 4294967296 is out of range"),
    ("seed=2020-01-01", "seed: 2020-01-01 is a date"),
    ("train.run_name=../../../escape_run", "train.run_name: '../../../escape_run' holds a path separator"),
    ("train.run_name=..", "train.run_name: '..' starts with '.'"),
    ("train.run_name=", "train.run_name: '' is empty"),
    ("data.dataset=a/b", "data.dataset: 'a/b' holds a path separator"),
    ("data.dataset=.hidden", "data.dataset: '.hidden' starts with '.'"),
])
def test_bad_overrides_are_one_message_naming_the_key(capsys, tmp_path, override, names):
    params = tmp_path / "params.yaml"
    params.write_text("{}\n")
    err = _bad_params(capsys, ["--params", str(params), "--set", override])
    assert names in err, err


@pytest.mark.parametrize(("content", "names"), [
    (b"seed: 2020-01-01\n", "seed: 2020-01-01 is a date"),
    (b"seed: 1\n# caf\xe9\n", "line 2: not UTF-8 text (byte 0xe9)"),
    (b"train: &t {run_name: x, more: *t}\n", "train.more: a recursive YAML anchor"),
    (b"data: &d [*d]\n", "data[0]: a recursive YAML anchor"),
    (b"train:\n  lr: .nan\n", "train.lr: nan is not a finite number"),
    (b"train:\n  run_name: ../../../escape_run\n", "train.run_name: '../../../escape_run' holds a path separator"),
])
def test_bad_params_files_are_one_message_naming_the_file(capsys, tmp_path, content, names):
    params = tmp_path / "bad.yaml"
    params.write_bytes(content)
    err = _bad_params(capsys, ["--params", str(params)])
    assert str(params) in err and names in err, err


def test_a_folder_as_params_names_it(capsys, tmp_path):
    err = _bad_params(capsys, ["--params", str(tmp_path)])
    assert f"{tmp_path}: not a file" in err


def test_an_escaping_run_name_writes_nothing_outside(tmp_path):
    """The run name is refused when params load, so no stage can turn it into a path."""
    from multigeometry.paths import eval_dir, models_dir, registry_dir

    with pytest.raises(ParamsError, match="train.run_name"):
        params_from_dict({"train": {"run_name": "../../../escape_run"}})
    params = params_from_dict({"train": {"run_name": "ok-run_1.2"}})
    for folder in (models_dir(params, tmp_path), eval_dir(params, tmp_path), registry_dir(params, tmp_path)):
        assert folder.resolve().is_relative_to(tmp_path.resolve()) and folder.name == "ok-run_1.2"


def test_good_params_still_load(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("seed: 4294967295\ntrain:\n  lr: '1e-4'\n  run_name: run-1\n")
    params = load_params(path, ["loss.kl_weight=0.5"])
    assert params.seed == 2**32 - 1 and params.train.lr == pytest.approx(1e-4) and params.loss.kl_weight == 0.5
    assert load_params(Path(__file__).resolve().parents[1] / "params.yaml").train.run_name == "default"
