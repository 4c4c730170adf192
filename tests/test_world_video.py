"""The world's clips (data.world.video): bit-exact for a seed, moving as the captions, concepts and code say."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from multigeometry.config import ParamsError, WorldConfig, load_params, params_from_dict
from multigeometry.data.sources.world import world_rows
from multigeometry.data.video import encode_clip, probe, read_frames, rgb_to_yuv420p
from multigeometry.data.world.scene import LEVELS, MOTION_PHRASES, OPPOSITE_MOTION

TINY = {"n_items": 6, "workers": 1, "image_size": 64, "audio": False, "video": True, "video_size": 32,
        "video_frames": 4, "video_fps": 4}


def _digests(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("wv")
    return root, world_rows(root, WorldConfig(**TINY), seed=3)


def test_the_default_world_has_clips_their_features_and_their_pairs():
    """`dvc repro` on the defaults trains and evaluates video: params.yaml has the clips, validates them, embeds their
    frames and pairs them with the captions and the speech; the still preset leaves all of that out."""
    from tests.conftest import REPO

    for params in (params_from_dict({}), load_params(REPO / "params.yaml")):
        assert params.data.world.video and "video" in params.validate.modalities and params.features.video.model
        assert {("video", "text"), ("video", "audio")} <= {(p.a, p.b) for p in params.pairs.pairs}
    still = load_params(REPO / "presets/world-still.yaml")
    assert not still.data.world.video and "video" not in still.validate.modalities
    assert "video" not in {m for p in still.pairs.pairs for m in (p.a, p.b)}


def test_the_colour_conversion_is_exact_and_does_not_depend_on_the_buffer():
    """The encoder is given yuv420p converted here (BT.601 limited range, as libswscale's), not RGB that libswscale
    would convert by a SIMD or C path depending on the buffer: flat colours as swscale gives them (within 1), and the
    same bytes from an unaligned copy of the frames."""
    import av

    for colour in ([200, 30, 60], [0, 0, 0], [255, 255, 255], [12, 240, 99]):
        flat = np.full((8, 10, 3), colour, dtype=np.uint8)
        reference = av.VideoFrame.from_ndarray(flat, format="rgb24").reformat(format="yuv420p").to_ndarray()
        assert np.abs(rgb_to_yuv420p(flat).astype(int) - reference.astype(int)).max() <= 1
    frames = np.random.default_rng(0).integers(0, 256, (3, 16, 24, 3), dtype=np.uint8)
    raw = np.zeros(frames.nbytes + 1, dtype=np.uint8)
    unaligned = raw[1:].reshape(frames.shape)  # one byte off any alignment
    unaligned[...] = frames
    assert encode_clip(unaligned, 4) == encode_clip(frames, 4)


def test_the_same_seed_gives_byte_identical_clips(tmp_path, clips):
    root, rows = clips
    again = tmp_path / "again"
    again.mkdir()
    rows_again = world_rows(again, WorldConfig(**TINY), seed=3)
    assert _digests(root) == _digests(again)
    assert [r.__dict__ for r in rows] == [r.__dict__ for r in rows_again]
    other = tmp_path / "other"
    other.mkdir()
    world_rows(other, WorldConfig(**TINY | {"n_items": 2}), seed=4)
    assert _digests(other)["video/w000000.mp4"] != _digests(root)["video/w000000.mp4"]


def test_clips_decode_to_the_configured_frames(clips):
    root, rows = clips
    for row in rows:
        assert row.video == f"video/{row.group_id}.mp4"
        frames, info = read_frames(root / row.video)
        assert frames.shape == (4, 32, 32, 3) and frames.dtype == np.uint8
        assert (info.fps, info.codec, info.has_audio) == (4.0, "h264", False)
        assert info.seconds == pytest.approx(1.0)


def test_the_motion_is_in_every_caption_level_the_concepts_the_parts_and_the_code(clips):
    root, rows = clips
    for row in rows:
        motion = next(c.removeprefix("motion(").rstrip(")") for c in row.concepts
                      if c.startswith("motion(") and c not in ("motion(moving)", "motion(still)"))
        phrases = MOTION_PHRASES[motion]
        assert any(p in row.text for p in phrases), row.text
        assert any(p in part for part in row.parts for p in phrases), row.parts
        for text in row.hierarchy[1:]:  # level 0 says only whether it moves ("a moving shape")
            assert any(p in text for p in phrases), text
        assert ("moving" in row.hierarchy[0] or "motion" in row.hierarchy[0]) == (motion != "still")
        levels = [set(c) for c in row.hierarchy_concepts] + [set(row.concepts)]
        assert all(general < specific for general, specific in zip(levels, levels[1:], strict=False))
        assert f"motion({motion})" not in levels[0] and f"motion({motion})" in levels[1]
        assert ".animate(frames=4, fps=4)" in (root / row.code).read_text()
        if motion in OPPOSITE_MOTION:  # the caption of the clip played backwards says the opposite motion
            (contrast,) = row.temporal_contrasts
            assert contrast != row.text
            assert any(p in contrast for p in MOTION_PHRASES[OPPOSITE_MOTION[motion]]), contrast
        else:
            assert row.temporal_contrasts == []


def test_a_motion_played_backwards_is_its_opposite():
    from multigeometry.data.world.render import place, render_clip
    from multigeometry.data.world.scene import Scene, SceneObject

    obj = SceneObject(color="red", shape="square", size="large")
    for motion, opposite in (("left", "right"), ("up", "down"), ("grows", "shrinks")):
        scene = Scene((obj,), position="centre", motion=motion)
        placements = place(scene, 64, np.random.default_rng(0))
        forward = render_clip(scene, placements, 64, 32, 5, 0.0, np.random.default_rng(1))
        backward = render_clip(Scene((obj,), position="centre", motion=opposite), placements, 64, 32, 5, 0.0,
                               np.random.default_rng(1))
        assert not np.array_equal(forward[0], forward[-1]), motion  # it moves
        assert np.array_equal(forward[::-1], backward), motion
    still = render_clip(Scene((obj,), position="centre", motion="still"), placements, 64, 32, 5, 0.0,
                        np.random.default_rng(1))
    assert all(np.array_equal(still[0], f) for f in still)


def test_video_leaves_the_images_as_they_were(tmp_path, clips):
    root, rows = clips
    plain = tmp_path / "plain"
    plain.mkdir()
    plain_rows = world_rows(plain, WorldConfig(**TINY | {"video": False}), seed=3)
    assert all(r.video is None and r.temporal_contrasts == [] for r in plain_rows)
    assert not (plain / "video").exists()
    assert all("motion" not in " ".join(r.concepts) for r in plain_rows)
    assert {k: v for k, v in _digests(plain).items() if k.startswith("image/")} == \
        {k: v for k, v in _digests(root).items() if k.startswith("image/")}
    assert len(rows[0].hierarchy) == LEVELS - 1


def test_webm_clips_are_vp9_and_bit_exact(tmp_path):
    cfg = WorldConfig(**TINY | {"n_items": 2, "video_format": "webm"})
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        folder.mkdir()
        rows = world_rows(folder, cfg, seed=5)
    assert rows[0].video.endswith(".webm")
    assert probe(first / rows[0].video).codec == "vp9"
    assert _digests(first) == _digests(second)


def test_clip_sizes_must_be_even_and_the_soundtrack_needs_speech():
    with pytest.raises(ParamsError, match="data.world.video_size"):
        WorldConfig(video=True, video_size=33)
    with pytest.raises(ParamsError, match="data.world.video_audio"):
        WorldConfig(video=True, audio=False, video_audio=True)


def test_the_spoken_caption_can_be_the_clips_soundtrack(tmp_path):
    from multigeometry.config import AudioConfig
    from multigeometry.data.audio import load_audio

    cfg = WorldConfig(**TINY | {"n_items": 2, "audio": True, "video_audio": True})
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        folder.mkdir()
        rows = world_rows(folder, cfg, seed=5)
    assert _digests(first) == _digests(second)
    for row in rows:
        assert row.audio == row.video and not list((first / "audio").iterdir())
        info = probe(first / row.video)
        assert info.has_audio and info.audio_rate == 16000
        wave = load_audio(first / row.audio, AudioConfig())
        assert wave.ndim == 1 and 0.5 < wave.size / 16000 <= AudioConfig().max_seconds
        assert np.sqrt(np.mean(wave**2)) > 1e-3  # speech, not silence


def test_corrupted_items_have_corrupted_clips_recorded_in_the_ambiguity_column(tmp_path, clips):
    import json

    from multigeometry.config import AmbiguityConfig

    _root, clean_rows = clips
    cfg = WorldConfig(**TINY | {"ambiguity": AmbiguityConfig(clean_fraction=0.0)})
    rows = world_rows(tmp_path, cfg, seed=3)
    for row, clean in zip(rows, clean_rows, strict=True):
        ambiguity = json.loads(row.ambiguity)
        assert 0.0 < ambiguity["video"]["severity"] <= 1.0
        assert {"occlusion", "noise", "blur", "downscale"} & set(ambiguity["video"]), ambiguity["video"]
        frames, _info = read_frames(tmp_path / row.video)
        clean_frames, _info = read_frames(_root / clean.video)
        assert frames.shape == clean_frames.shape and not np.array_equal(frames, clean_frames)
    assert all(json.loads(r.ambiguity)["video"] == {"severity": 0.0} for r in clean_rows)
