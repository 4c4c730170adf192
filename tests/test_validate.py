from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from PIL import Image

from multigeometry.data.manifest import MANIFEST, read_manifest
from multigeometry.paths import raw_dir, validated_dir
from multigeometry.stages.validate import QUARANTINE, REPORT, ValidationFailed, validate

from .conftest import tiny_params


def _png(size=64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(size=64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (30, 30, 200)).save(buf, format="JPEG")
    return buf.getvalue()


def _audio(fmt: str, rate=16000, seconds=1.0, amplitude=0.3) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    buf = io.BytesIO()
    sf.write(buf, (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, format=fmt)
    return buf.getvalue()


# name -> (files to write, row changes, expected reason)
PLANTED = {
    "corrupt_jpeg": ({"image/bad.jpg": _jpeg()[:300]}, {"image": "image/bad.jpg"}, "image_undecodable"),
    "corrupt_png": ({"image/bad.png": _png()[:60] + b"\0" * 40}, {"image": "image/bad.png"}, "image_undecodable"),
    "tiny_image": ({"image/tiny.png": _png(8)}, {"image": "image/tiny.png"}, "image_too_small"),
    "truncated_wav": ({"audio/cut.wav": _audio("WAV")[:9000]}, {"audio": "audio/cut.wav"}, "audio_undecodable"),
    "truncated_flac": ({"audio/cut.flac": _audio("FLAC")[:4000]}, {"audio": "audio/cut.flac"}, "audio_undecodable"),
    "silent_audio": ({"audio/silent.flac": _audio("FLAC", amplitude=0.0)}, {"audio": "audio/silent.flac"},
                     "audio_silent"),
    "wrong_rate": ({"audio/rate.wav": _audio("WAV", rate=3000)}, {"audio": "audio/rate.wav"}, "audio_sample_rate"),
    "too_long": ({"audio/long.flac": _audio("FLAC", seconds=40)}, {"audio": "audio/long.flac"}, "audio_duration"),
    "empty_caption": ({}, {"text": ""}, "text_length"),
    "blank_caption": ({}, {"text": "   "}, "text_empty"),
    "syntax_error": ({"code/bad.py": b"def f(:\n    return 1\n"}, {"code": "code/bad.py"}, "code_syntax_error"),
    "missing_file": ({}, {"image": "image/nowhere.png"}, "image_file_missing"),
    "escaping_path": ({}, {"code": "../../etc/passwd"}, "code_file_missing"),
    "missing_modality": ({}, {"audio": None}, "audio_missing"),
    "unknown_split": ({}, {"split": "holdout"}, "unknown_split"),
    "duplicate_id": ({}, {"sample_id": "DUP"}, "duplicate_sample_id"),
    "ambiguity_out_of_range": ({}, {"ambiguity": '{"image": {"severity": 1.5}}'}, "ambiguity_invalid"),
    "ambiguity_not_json": ({}, {"ambiguity": "{image: high"}, "ambiguity_invalid"),
}


@pytest.fixture()
def planted(prepared_world, tmp_path):
    params, world_root = prepared_world
    params = tiny_params(validate={"max_bad_fraction": 0.9})
    source = raw_dir(params, tmp_path)
    shutil.copytree(raw_dir(params, world_root), source)
    frame = read_manifest(source / MANIFEST)
    good_ids = list(frame["sample_id"])
    template = frame.iloc[0].to_dict()
    extra = []
    # the first occurrence of a repeated id is good; only the repeat is quarantined
    first_dup = dict(template, sample_id="DUP", group_id="g-dup-first")
    extra.append(first_dup)
    good_ids.append("DUP")
    for name, (files, changes, _reason) in PLANTED.items():
        for rel, data in files.items():
            (source / rel).write_bytes(data)
        extra.append({**template, "sample_id": f"bad-{name}", "group_id": f"g-{name}", **changes})
    frame = pd.concat([frame, pd.DataFrame(extra)], ignore_index=True)
    frame.to_parquet(source / MANIFEST, index=False)
    return params, tmp_path, good_ids


def test_each_planted_bad_input_is_quarantined_for_its_reason(planted):
    params, root, good_ids = planted
    out = validate(params, root)
    passed = pd.read_parquet(out / MANIFEST)
    quarantine = pd.read_parquet(out / QUARANTINE)
    assert sorted(passed["sample_id"]) == sorted(good_ids)
    reasons = {
        (row["sample_id"] if row["sample_id"] != "DUP" else "bad-duplicate_id"): list(row["reasons"])
        for _, row in quarantine.iterrows()
    }
    for name, (_files, _changes, reason) in PLANTED.items():
        assert reason in reasons.get(f"bad-{name}", []), (name, reasons.get(f"bad-{name}"))
    assert len(quarantine) == len(PLANTED)
    assert all(quarantine["details"].str.len() > 0)


def test_report_counts_add_up(planted):
    params, root, good_ids = planted
    out = validate(params, root)
    report = json.loads((out / REPORT).read_text())
    assert report["rows_in"] == report["rows_passed"] + report["rows_quarantined"]
    assert report["rows_passed"] == len(good_ids)
    assert sum(report["per_first_reason"].values()) == report["rows_quarantined"]
    assert sum(report["passed_per_split"].values()) == report["rows_passed"]
    assert report["per_reason"]["image_undecodable"] == 2
    assert any(not e["success"] for e in report["expectations"])
    assert (out / "data_docs" / "index.html").is_file()


def test_quarantined_rows_are_reported_by_reason_split_and_knob(planted, caplog):
    params, root, _good = planted
    with caplog.at_level("WARNING", logger="multigeometry.stages.validate"):
        out = validate(params, root)
    report = json.loads((out / REPORT).read_text())
    assert sum(report["quarantined_per_split"].values()) == report["rows_quarantined"]
    warning = caplog.text
    assert f"{len(PLANTED)} of" in warning and "quarantine.parquet" in warning
    assert "audio_silent: 1 (" in warning and "set by validate.audio_min_rms" in warning
    assert "validate.audio_min_sample_rate" in warning


def test_any_sample_rate_above_the_minimum_passes_unless_rates_are_listed(tmp_path):
    from multigeometry.config import ValidateConfig
    from multigeometry.data.validation.media import check_audio

    path = tmp_path / "a.wav"
    path.write_bytes(_audio("WAV", rate=8000))
    assert check_audio(path, ValidateConfig()) is None  # telephone speech is fine: the shard stage resamples it
    reason, detail = check_audio(path, ValidateConfig(audio_sample_rates=(16000, 48000)))
    assert reason == "audio_sample_rate" and "validate.audio_sample_rates" in detail
    reason, detail = check_audio(path, ValidateConfig(audio_min_sample_rate=11025))
    assert reason == "audio_sample_rate" and "validate.audio_min_sample_rate" in detail


def test_too_many_bad_rows_fail_the_stage_naming_the_quarantine(planted):
    _params, root, _good = planted
    strict = tiny_params(validate={"max_bad_fraction": 0.05})
    with pytest.raises(ValidationFailed, match=r"quarantine\.parquet: 18 of \d+ rows quarantined"):
        validate(strict, root)
    # the outputs are still written for inspection
    assert (validated_dir(strict, root) / QUARANTINE).is_file()


def test_clean_world_passes_whole(prepared_world, tmp_path):
    params, world_root = prepared_world
    out = validate(params, world_root)
    report = json.loads((out / REPORT).read_text())
    assert report["rows_quarantined"] == 0
    assert report["rows_passed"] == 12


def test_missing_raw_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no raw manifest; run `multigeometry prepare` first"):
        validate(tiny_params(), tmp_path)
