"""Fault suite, data: one bad row never stops a stage. Decompression bombs, huge or deeply nested code, non-UTF-8 code,
audio of NaN or Inf, a check that raises and a path with a NUL byte are quarantined with their reason; the shard stage
then reads every row validation passed (both decode with the same functions). A broken pairs file names its line, and
an edited source folder is prepared again."""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from multigeometry.data.manifest import MANIFEST, read_manifest
from multigeometry.data.sources.folder import PairsFileError
from multigeometry.paths import raw_dir, shards_dir
from multigeometry.stages.validate import QUARANTINE, REPORT, validate

from .conftest import tiny_params
from .test_validate import _png


def _png_claiming(width: int, height: int) -> bytes:
    """A small real PNG whose header claims another size (the CRC fixed, so the header reads as valid)."""
    data = bytearray(_png(8))
    start = 8 + 8  # signature, then the IHDR chunk's length and type
    data[start : start + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12 : start + 13])) & 0xFFFFFFFF
    data[start + 13 : start + 17] = struct.pack(">I", crc)
    return bytes(data)


def _wav_of(value: float) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.full(16000, value, dtype=np.float32), 16000, format="WAV", subtype="FLOAT")
    return buf.getvalue()


LIMITS = {"image_max_pixels": 20_000, "code_max_bytes": 300_000}
# name -> (files to write, row changes, expected reason)
PLANTED = {
    "bomb_header": ({"image/bomb.png": _png_claiming(30000, 30000)}, {"image": "image/bomb.png"}, "image_too_large"),
    "too_many_pixels": ({"image/big.png": _png(200)}, {"image": "image/big.png"}, "image_too_large"),
    "nested_code": ({"code/nested.py": b"-" * 200_000 + b"1\n"}, {"code": "code/nested.py"}, "code_too_complex"),
    "deep_code": ({"code/deep.py": b"-" * 5_000 + b"1\n"}, {"code": "code/deep.py"}, "code_too_complex"),
    "huge_code": ({"code/huge.py": b"x = 1\n" * 60_000}, {"code": "code/huge.py"}, "code_too_large"),
    "latin1_code": ({"code/latin.py": "s = 'café'\n".encode("latin-1")}, {"code": "code/latin.py"},
                    "code_undecodable"),
    "nan_audio": ({"audio/nan.wav": _wav_of(np.nan)}, {"audio": "audio/nan.wav"}, "audio_undecodable"),
    "inf_audio": ({"audio/inf.wav": _wav_of(np.inf)}, {"audio": "audio/inf.wav"}, "audio_undecodable"),
    "nul_path": ({}, {"image": "image/a\0b.png"}, "image_file_missing"),
    "check_raises": ({"code/raises.py": b"x = 1\n"}, {"code": "code/raises.py"}, "media_check_error"),
}


@pytest.fixture()
def planted(prepared_world, tmp_path, monkeypatch):
    from multigeometry.data.validation import media

    params, world_root = prepared_world
    params = tiny_params(validate={"max_bad_fraction": 0.9, "data_docs": False, **LIMITS},
                         features={m: {"model": ""} for m in ("image", "text", "audio", "code")},
                         shard={"max_samples": 8, "workers": 1})
    source = raw_dir(params, tmp_path)
    shutil.copytree(raw_dir(params, world_root), source)
    frame = read_manifest(source / MANIFEST)
    template = frame.iloc[0].to_dict()
    extra = []
    for name, (files, changes, _reason) in PLANTED.items():
        for rel, data in files.items():
            (source / rel).write_bytes(data)
        extra.append({**template, "sample_id": f"bad-{name}", "group_id": f"g-{name}", **changes})
    pd.concat([frame, pd.DataFrame(extra)], ignore_index=True).to_parquet(source / MANIFEST, index=False)

    real = media.FILE_CHECKS["code"]

    def raising(path, cfg, audio=None):  # a check that fails in a way nobody planned for
        if path.name == "raises.py":
            raise RuntimeError("the checker itself broke")
        return real(path, cfg, audio)

    monkeypatch.setitem(media.FILE_CHECKS, "code", raising)
    return params, tmp_path, list(frame["sample_id"])


def test_every_planted_bad_row_is_quarantined_and_the_shard_stage_reads_the_rest(planted):
    from multigeometry.data.shard_index import read_index
    from multigeometry.stages.shard import shard

    params, root, good_ids = planted
    out = validate(params, root)  # no exception: no row stops the stage
    quarantine = pd.read_parquet(out / QUARANTINE)
    reasons = {row["sample_id"]: list(row["reasons"]) for _, row in quarantine.iterrows()}
    for name, (_files, _changes, reason) in PLANTED.items():
        assert reason in reasons.get(f"bad-{name}", []), (name, reasons.get(f"bad-{name}"))
    assert len(quarantine) == len(PLANTED) and all(quarantine["details"].str.len() > 0)
    details = dict(zip(quarantine["sample_id"], quarantine["details"], strict=True))
    assert "30000x30000" in details["bad-bomb_header"] or "exceeds limit" in details["bad-bomb_header"]
    assert "byte 0xe9 at column" in details["bad-latin1_code"]
    assert "NaN or infinite" in details["bad-nan_audio"]
    assert "RuntimeError: the checker itself broke" in details["bad-check_raises"]
    report = json.loads((out / REPORT).read_text())
    assert report["rows_in"] == report["rows_passed"] + report["rows_quarantined"] == len(good_ids) + len(PLANTED)

    index = read_index(shard(params, root))  # every passed row is read: no stage abort
    assert sum(s["samples"] for s in index["splits"].values()) == len(good_ids)
    assert shards_dir(params, root).is_dir()


def _folder_with(tmp_path, content: bytes):
    folder = tmp_path / "mydata"
    folder.mkdir(exist_ok=True)
    (folder / "pairs.jsonl").write_bytes(content)
    return folder


@pytest.mark.parametrize(("content", "message"), [
    (b'{"text": "fine"}\n{"text": "caf\xe9"}\n', r"pairs.jsonl, line 2: not UTF-8 text: byte 0xe9 at column 14"),
    (b'{"text": "fine"}\n{"text": "\\ud800 lone"}\n', r"pairs.jsonl, line 2, column 'text': '\\ud800' is a lone "
                                                      "surrogate"),
    (b'{"hierarchy": ["ok", "\\udc80"], "text": "x"}\n', r"line 1, column 'hierarchy': '\\udc80' is a lone"),
])
def test_a_broken_pairs_file_names_the_file_and_line(tmp_path, content, message):
    from multigeometry.stages.prepare import prepare

    folder = _folder_with(tmp_path, content)
    params = tiny_params(data={"source": f"folder:{folder}", "dataset": "mydata"})
    with pytest.raises(PairsFileError, match=message) as e:
        prepare(params, tmp_path / "project")
    assert str(folder / "pairs.jsonl") in str(e.value)


def test_a_csv_pairs_file_that_is_not_utf8_names_its_line(tmp_path):
    from multigeometry.data.sources.folder import folder_rows

    folder = tmp_path / "csvdata"
    folder.mkdir()
    (folder / "pairs.csv").write_bytes(b"sample_id,text\na,fine\nb,na\xefve\n")
    with pytest.raises(PairsFileError, match=r"pairs.csv, line 3: not UTF-8 text"):
        folder_rows(tmp_path / "staging", folder)


def test_an_edited_pairs_file_is_prepared_again(tmp_path):
    from multigeometry.stages.prepare import prepare

    folder = _folder_with(tmp_path, b'{"sample_id": "a", "text": "one"}\n{"sample_id": "b", "text": "two"}\n')
    params = tiny_params(data={"source": f"folder:{folder}", "dataset": "mydata"})
    out = prepare(params, tmp_path / "project")
    assert set(read_manifest(out / MANIFEST)["text"]) == {"one", "two"}
    stamp = (out / "prepare.json").stat().st_mtime_ns
    prepare(params, tmp_path / "project")
    assert (out / "prepare.json").stat().st_mtime_ns == stamp  # unchanged source: up to date
    (folder / "pairs.jsonl").write_bytes(b'{"sample_id": "a", "text": "one"}\n{"sample_id": "b", "text": "three"}\n')
    prepare(params, tmp_path / "project")
    assert set(read_manifest(out / MANIFEST)["text"]) == {"one", "three"}
