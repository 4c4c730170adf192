from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from multigeometry.config import (
    ModelConfig,
    Params,
    ParamsError,
    apply_override,
    load_params,
    params_from_dict,
)

REPO = Path(__file__).resolve().parents[1]


def test_repository_params_load_and_match_defaults_shape():
    params = load_params(REPO / "params.yaml")
    assert isinstance(params, Params)
    assert params.data.source == "world"
    assert params.model.geometry in ("mixture", "cone", "point")
    # every section of params.yaml is a field of Params: nothing in the file is ignored
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(raw) <= {f.name for f in dataclasses.fields(Params)}


def test_params_yaml_is_the_defaults_rendered_from_config():
    """One set of defaults: params.yaml is written from config.py's dataclasses (`multigeometry params --defaults
    --write params.yaml`), docs included, so the two cannot disagree."""
    from multigeometry.params_file import DEFAULTS_HEADER, render

    assert (REPO / "params.yaml").read_text() == render(Params(), DEFAULTS_HEADER), (
        "params.yaml differs from config.py's defaults: run `multigeometry params --defaults --write params.yaml`")
    assert load_params(REPO / "params.yaml") == Params()


@pytest.mark.parametrize("overlay", sorted(p.name for p in (REPO / "presets" / "overlays").glob("*.yaml")))
def test_each_preset_is_its_overlay_rendered_in_full(overlay, monkeypatch):
    from multigeometry.params_file import header_for, render

    monkeypatch.chdir(REPO)  # the header names the overlay as the command does, relative to the project
    source = Path("presets/overlays") / overlay
    target = Path("presets") / overlay
    params = load_params(source)
    assert (REPO / target).read_text() == render(params, header_for(source, target)), (
        f"run `multigeometry params --params {source} --write {target}`")
    assert load_params(REPO / target) == params


def test_every_knob_has_a_one_line_doc_and_choices_are_listed():
    from multigeometry.params_file import render, undocumented

    assert undocumented() == []
    text = render(Params())
    crop = next(line for line in text.splitlines() if line.strip().startswith("crop:"))
    assert "# start | center: " in crop


def test_the_params_command_writes_a_full_file_that_loads_back(tmp_path):
    from multigeometry.cli import main

    out = tmp_path / "p.yaml"
    assert main(["params", "--defaults", "--set", "train.lr=0.5", "--write", str(out)]) == 0
    assert load_params(out).train.lr == 0.5 and "# AdamW learning rate" in out.read_text()


def _knobs(tree: dict, prefix: str = "") -> set[str]:
    """Dotted keys of every leaf (an empty mapping such as `data.hf.columns: {}` is a leaf)."""
    out: set[str] = set()
    for key, value in tree.items():
        out |= _knobs(value, f"{prefix}{key}.") if isinstance(value, dict) and value else {f"{prefix}{key}"}
    return out


@pytest.mark.parametrize("name", ["params.yaml", *sorted(p.relative_to(REPO).as_posix()
                                                           for p in (REPO / "presets").glob("*.yaml"))])
def test_every_knob_is_in_the_params_files(name):
    """params.yaml and every preset hold every knob, so `dvc exp run -S` can set any of them and a preset copied over
    params.yaml gives DVC every param its stages name."""
    every = _knobs(params_from_dict({}).to_dict())
    raw = yaml.safe_load((REPO / name).read_text())
    assert _knobs(raw) == every, f"{name}: missing {sorted(every - _knobs(raw))}, extra {sorted(_knobs(raw) - every)}"


def test_params_are_frozen():
    params = params_from_dict({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.seed = 3  # type: ignore[misc]


def test_unknown_key_names_it_and_the_nearest_valid_key():
    with pytest.raises(ParamsError) as e:
        params_from_dict({"data": {"wrold": {"n_items": 3}}})
    assert "data.wrold" in str(e.value)
    assert "did you mean 'data.world'" in str(e.value)


def test_unknown_top_level_key():
    with pytest.raises(ParamsError, match=r"sed: unknown key; did you mean 'seed'"):
        params_from_dict({"sed": 1})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"data": {"world": {"n_items": "many"}}}, r"data\.world\.n_items: expected an integer, got str 'many'"),
        ({"data": {"world": {"audio": "yes"}}}, r"data\.world\.audio: expected true or false, got 'yes'"),
        ({"validate": {"max_bad_fraction": [1]}}, r"validate\.max_bad_fraction: expected a number"),
        ({"validate": {"modalities": "image"}}, r"validate\.modalities: expected a list"),
        ({"data": "world"}, r"data: expected a mapping"),
    ],
)
def test_wrong_type_names_key_value_and_expected_type(raw, expected):
    with pytest.raises(ParamsError, match=expected):
        params_from_dict(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"data": {"world": {"n_items": 0}}}, r"data\.world\.n_items: 0 is out of range; allowed: \[1, inf\]"),
        ({"validate": {"max_bad_fraction": 1.5}}, r"validate\.max_bad_fraction: 1\.5 is out of range; allowed: \[0"),
        ({"model": {"theta_min": 1.0, "theta_max": 0.5}}, r"model\.theta_min .* must be below model\.theta_max"),
        ({"data": {"splits": {"train": 0.5, "val": 0.1, "test": 0.1}}}, r"data\.splits: fractions must add up to 1"),
    ],
)
def test_out_of_range_values(raw, expected):
    with pytest.raises(ParamsError, match=expected):
        params_from_dict(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"model": {"geometry": "sphere"}}, r"model\.geometry: 'sphere' is not allowed; allowed: 'mixture', 'cone'"),
        ({"validate": {"modalities": ["image", "smell"]}}, r"validate\.modalities\[1\]: 'smell' is not allowed"),
        ({"pairs": {"pairs": [{"a": "image", "b": "smell"}]}}, r"pairs\.pairs\[0\]\.b: 'smell' is not allowed"),
        ({"data": {"source": "ftp:somewhere"}}, r"data\.source: unknown source 'ftp:somewhere'; allowed"),
        ({"data": {"source": "hf:"}}, r"data\.source: 'hf:' needs a name or path"),
    ],
)
def test_unknown_choice_names_allowed_values(raw, expected):
    with pytest.raises(ParamsError, match=expected):
        params_from_dict(raw)


def test_overrides_use_dvc_dotted_keys_and_yaml_values(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"data": {"world": {"n_items": 5}}}))
    params = load_params(
        path,
        ["data.world.n_items=9", "model.geometry=cone", "validate.modalities=[image, text]", "loss.kl_weight=1e-3"],
    )
    assert params.data.world.n_items == 9
    assert params.model.geometry == "cone"
    assert params.validate.modalities == ("image", "text")
    assert params.loss.kl_weight == pytest.approx(1e-3)


def test_override_errors_name_the_override():
    tree: dict = {"seed": 1}
    with pytest.raises(ParamsError, match="expected key=value"):
        apply_override(tree, "seed")
    with pytest.raises(ParamsError, match="'seed' is not a section"):
        apply_override(tree, "seed.x=1")
    with pytest.raises(ParamsError, match="data.world.n_itms: unknown key; did you mean 'data.world.n_items'"):
        params_from_dict({}, ["data.world.n_itms=3"])


def test_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ParamsError, match="nope.yaml: params file not found"):
        load_params(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ParamsError, match="bad.yaml: not valid YAML"):
        load_params(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("seed: -1\n")
    with pytest.raises(ParamsError, match=r"wrong.yaml: seed: -1 is out of range"):
        load_params(wrong)


def test_section_hash_tracks_only_named_sections():
    a = params_from_dict({})
    b = params_from_dict({"model": {"embed_dim": 64}})
    c = params_from_dict({"data": {"world": {"n_items": 7}}})
    assert a.section_hash("seed", "data") == b.section_hash("seed", "data")
    assert a.section_hash("seed", "data") != c.section_hash("seed", "data")
    assert a.section_hash("model") != b.section_hash("model")


def test_model_config_defaults_are_valid():
    assert ModelConfig().theta_min < ModelConfig().theta_max
