"""Clips from `folder:` and `hf:` sources: the `video` column, a clip's audio track as the row's audio, and validation
that decodes every clip and quarantines the bad ones with their reasons."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from multigeometry.config import HFConfig, params_from_dict
from multigeometry.data.manifest import MANIFEST, read_manifest
from multigeometry.data.video import encode_clip, probe
from multigeometry.stages.prepare import prepare
from multigeometry.stages.validate import QUARANTINE, validate


def _clip(frames: int = 6, side: int = 32, fps: int = 4, seed: int = 0, audio: bool = False) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(frames, side, side, 3), dtype=np.uint8)
    track = 0.3 * np.sin(np.linspace(0, 400 * np.pi, 16000 * frames // fps)).astype(np.float32) if audio else None
    return encode_clip(pixels, fps, "mp4", track, 16000)


def _webm_without_frames() -> bytes:
    """A WebM whose video stream holds no frame (its audio track holds some, so the file opens)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="webm") as container:
        video = container.add_stream("libvpx-vp9", rate=4)
        video.width = video.height = 32
        video.pix_fmt = "yuv420p"
        sound = container.add_stream("libopus", rate=48000, layout="mono")
        for i in range(3):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 48000, i * 960
            container.mux(sound.encode(frame))
        container.mux(sound.encode(None))
    return buf.getvalue()


GOOD = {"good-1": _clip(seed=1), "good-2": _clip(seed=2), "good-3": _clip(seed=3, frames=8, fps=8)}
# name -> (the clip's bytes, its extension, the reason it is quarantined for)
PLANTED = {
    "unreadable": (b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4, "mp4", "video_undecodable"),
    "truncated": (_clip(seed=4)[:400], "mp4", "video_undecodable"),
    "no_frames": (_webm_without_frames(), "webm", "video_no_frames"),  # its short soundtrack fails too
    "one_frame": (_clip(frames=1), "mp4", "video_frames"),
    "too_long": (_clip(frames=8, fps=1), "mp4", "video_duration"),  # 8 s > 5 s
    "absurd_rate": (_clip(frames=12, fps=60), "mp4", "video_frame_rate"),  # > 30 frames/s
    "too_small": (_clip(side=8), "mp4", "video_too_small"),  # < 16 px
    "too_many_pixels": (_clip(side=64), "mp4", "video_too_large"),  # 64 x 64 > 40 x 40
}
LIMITS = {"video_max_seconds": 5.0, "video_max_fps": 30.0, "video_min_side": 16, "video_max_pixels": 40 * 40}


@pytest.fixture(scope="module")
def clips_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    (folder / "clips").mkdir()
    records = []
    for name, data in GOOD.items():
        (folder / "clips" / f"{name}.mp4").write_bytes(data)
        records.append({"sample_id": name, "text": f"clip {name}", "video": f"clips/{name}.mp4"})
    (folder / "clips" / "voiced.mp4").write_bytes(_clip(seed=5, audio=True))
    records.append({"sample_id": "voiced", "text": "a clip with a soundtrack", "video": "clips/voiced.mp4"})
    for name, (data, ext, _reason) in PLANTED.items():
        (folder / "clips" / f"{name}.{ext}").write_bytes(data)
        records.append({"sample_id": name, "text": f"clip {name}", "video": f"clips/{name}.{ext}"})
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


@pytest.fixture(scope="module")
def validated(clips_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    params = params_from_dict({
        "data": {"dataset": "clips", "source": f"folder:{clips_folder}"},
        "validate": {"modalities": ["text", "video"], "max_bad_fraction": 0.9, "data_docs": False, **LIMITS},
    })
    raw = prepare(params, root)
    return raw, validate(params, root)


def test_the_folder_source_reads_the_video_column_and_a_clips_soundtrack(validated, clips_folder):
    raw, _out = validated
    frame = read_manifest(raw / MANIFEST).set_index("sample_id")
    assert (raw / frame.loc["good-1", "video"]).read_bytes() == GOOD["good-1"]
    assert pd.isna(frame.loc["good-1", "audio"])
    assert frame.loc["voiced", "audio"] == frame.loc["voiced", "video"]  # the track is the row's audio
    assert probe(raw / frame.loc["voiced", "video"]).has_audio


def test_each_planted_bad_clip_is_quarantined_for_its_reason(validated):
    _raw, out = validated
    passed = pd.read_parquet(out / MANIFEST)
    quarantine = pd.read_parquet(out / QUARANTINE).set_index("sample_id")
    assert sorted(passed["sample_id"]) == sorted([*GOOD, "voiced"])
    assert sorted(quarantine.index) == sorted(PLANTED)
    for name, (_data, ext, reason) in PLANTED.items():
        assert reason in list(quarantine.loc[name, "reasons"]), (name, quarantine.loc[name, "details"])
        assert f"{name}.{ext}" in "".join(quarantine.loc[name, "details"]) or reason != "video_undecodable"
    assert all(len("".join(d)) > 0 for d in quarantine["details"])
    details = "".join(quarantine.loc["too_long", "details"])
    assert "8.000 s" in details and "validate.video_max_seconds" in details


def test_the_hf_source_writes_a_video_column_from_bytes_or_a_file(tmp_path):
    from datasets import Dataset

    from multigeometry.data.sources.hf import hf_rows

    clip_file = tmp_path / "given.webm"
    clip_file.write_bytes(encode_clip(np.zeros((4, 32, 32, 3), np.uint8), 4, "webm"))
    ds = Dataset.from_dict({
        "clip": [{"bytes": GOOD["good-1"], "path": None}, {"bytes": None, "path": str(clip_file)}],
        "caption": ["first", "second"],
    })
    saved = tmp_path / "ds"
    ds.save_to_disk(saved)
    staging = tmp_path / "staging"
    staging.mkdir()
    rows = hf_rows(staging, str(saved), HFConfig(columns={"video": "clip", "text": "caption"}))
    assert [r.text for r in rows] == ["first", "second"]
    assert rows[0].video.endswith(".mp4") and (staging / rows[0].video).read_bytes() == GOOD["good-1"]
    assert rows[1].video.endswith(".webm") and (staging / rows[1].video).read_bytes() == clip_file.read_bytes()
    assert all(r.audio is None for r in rows)
