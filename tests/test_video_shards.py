"""Clips in the shards: stored encoded (re-encoded only above shard.max_video_side), their frames sampled per segment
and embedded by the image model (`video.emb`, frames x dim), read back by the loaders' decoding."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch

from multigeometry.config import ParamsError, VideoConfig, params_from_dict
from multigeometry.data.decode import decode_members, to_example
from multigeometry.data.frame_sampling import VideoSampler
from multigeometry.data.video import encode_clip, probe, read_frames, segment_indices, video_member
from multigeometry.stages.prepare import prepare
from multigeometry.stages.shard import INDEX, shard
from multigeometry.stages.validate import validate

NO_FEATURES = {m: {"model": ""} for m in ("image", "text", "audio", "code")}
LIMITS = {"max_frames": 1000, "max_pixels": 1 << 20}


def _clip(seed: int, frames: int = 6, side: int = 32, fps: int = 4) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(frames, side, side, 3), dtype=np.uint8)
    return encode_clip(pixels, fps, "mp4")


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    root = tmp_path_factory.mktemp("tiny-vit")
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32)
    ViTModel(config).save_pretrained(root)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, tiny_vit):
    folder = tmp_path_factory.mktemp("clips")
    sources = {}
    (folder / "clips").mkdir()
    records = []
    for i in range(4):
        sources[f"c{i}"] = _clip(i)
        (folder / "clips" / f"c{i}.mp4").write_bytes(sources[f"c{i}"])
        records.append({"sample_id": f"c{i}", "text": f"clip number {i}", "video": f"clips/c{i}.mp4",
                        "split": "train" if i < 2 else "test"})
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    root = tmp_path_factory.mktemp("project")
    params = params_from_dict({
        "data": {"dataset": "clips", "source": f"folder:{folder}"},
        "validate": {"modalities": ["text", "video"], "data_docs": False},
        "features": NO_FEATURES | {"video": {"model": str(tiny_vit), "batch_size": 5}},
        "video": {"feature_frames": 4, "num_frames": 2},
        "shard": {"max_samples": 2, "workers": 1, "val_from_train": 0.0},
    })
    raw = prepare(params, root)
    validate(params, root)
    return params, raw, shard(params, root), sources


def _samples(out):
    samples = {}
    for tar_path in sorted(out.rglob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                key, field = member.name.split(".", 1)
                samples.setdefault(key, {"__key__": key})[field] = tar.extractfile(member).read()
    return samples


def test_clips_are_stored_as_encoded_with_their_frame_features(sharded):
    _params, _raw, out, sources = sharded
    samples = _samples(out)
    assert len(samples) == 4
    index = json.loads((out / INDEX).read_text())
    spec = index["features"]["video.emb"]
    assert (spec["dim"], spec["frames"], spec["layout"]) == (16, 4, "[frames, dim]")
    assert len(index["normalization"]["video.emb"]["mean"]) == 16
    for i in range(4):
        (members,) = [s for s in samples.values() if json.loads(s["meta.json"])["sample_id"] == f"c{i}"]
        assert members["video.mp4"] == sources[f"c{i}"]  # the clip's bytes as the source file holds them
        emb = np.load(io.BytesIO(members["video.emb.npy"]))
        assert emb.shape == (4, 16) and emb.dtype == np.float32
        assert not np.allclose(emb[0], emb[-1])  # the frames differ, so do their features


def test_the_round_trip_gives_back_the_clip_and_the_features_of_its_segment_frames(sharded, tiny_vit):
    from multigeometry.data.features import load_extractor

    params, _raw, out, _sources = sharded
    extractor = load_extractor("video", params.features.video, params.audio)
    for members in _samples(out).values():
        decoded = decode_members(members, str(out))
        frames = decoded["video"]
        assert frames.shape == (6, 32, 32, 3)
        picked, _info = read_frames(members["video.mp4"], 4)
        np.testing.assert_array_equal(picked, frames[segment_indices(6, 4)])
        expected = extractor.encode([picked])[0]
        np.testing.assert_allclose(decoded["video.emb"], expected, atol=1e-5)
        example = to_example(decoded, None, {}, VideoSampler(params.video))
        side = params.video.frame_side  # decoded frames (for a raw-frame backbone): the segments' frames, resized
        assert example["video"].shape == (params.video.num_frames, 3, side, side)
        skipped = to_example(decode_members(members, str(out), skip=frozenset({"video"})), None, {},
                             VideoSampler(params.video))
        assert "video" not in skipped  # what the loaders skip when no encoder reads raw frames
        np.testing.assert_allclose(example["video.emb"].numpy(), expected[[1, 3]], atol=1e-5)  # 2 segment centres


def test_the_same_inputs_give_the_same_shards(sharded, tmp_path):
    params, _raw, out, _sources = sharded
    import shutil

    root = tmp_path / "again"
    shutil.copytree(out.parents[2], root)
    again = shard(params, root)
    for name in ("train", "test"):
        first = sorted(p.read_bytes() for p in (out / name).glob("*.tar"))
        assert first == sorted(p.read_bytes() for p in (again / name).glob("*.tar"))


def test_segment_sampling_centres_and_jitter():
    assert segment_indices(8, 4) == [1, 3, 5, 7]
    assert segment_indices(3, 6) == [0, 0, 1, 1, 2, 2]  # more segments than frames repeat frames
    assert segment_indices(8, 4, [0.0, 0.99, 0.5, 0.0]) == [0, 3, 5, 6]
    sampler = VideoSampler(VideoConfig(feature_frames=8, num_frames=4), train=True)
    torch.manual_seed(0)
    for _ in range(20):
        picks = sampler.indices(8)
        assert [p // 2 for p in picks] == [0, 1, 2, 3]  # one frame inside each segment
    assert VideoSampler(VideoConfig(feature_frames=8, num_frames=4)).indices(8) == [1, 3, 5, 7]
    with pytest.raises(ValueError, match="frames, dim"):
        sampler.features(np.zeros(16, np.float32))


def test_clips_above_the_size_limit_or_in_other_containers_are_re_encoded(tmp_path):
    big = tmp_path / "big.mp4"
    big.write_bytes(_clip(0, side=64))
    name, data = video_member(big, 32, LIMITS)
    info = probe(data, count=True)
    assert name == "video.mp4" and (info.width, info.height, info.packets, info.fps) == (32, 32, 6, 4.0)
    kept = tmp_path / "kept.mp4"
    kept.write_bytes(_clip(1))
    assert video_member(kept, 32, LIMITS) == ("video.mp4", kept.read_bytes())
    mkv = tmp_path / "other.mkv"
    mkv.write_bytes(kept.read_bytes())
    name, data = video_member(mkv, 32, LIMITS)
    assert name == "video.mp4" and data[4:8] == b"ftyp"


def test_video_features_need_an_image_model():
    from multigeometry.config import AudioConfig, FeatureModelConfig
    from multigeometry.data.features import FeatureModelError, load_extractor

    with pytest.raises(FeatureModelError, match=r"features\.video\.model='all-minilm-l6-v2'.*image model"):
        load_extractor("video", FeatureModelConfig(model="all-minilm-l6-v2"), AudioConfig())
    with pytest.raises(ParamsError, match=r"video\.num_frames \(8\) cannot exceed video\.feature_frames \(4\)"):
        VideoConfig(feature_frames=4, num_frames=8)


def test_decoding_gives_the_same_frames_for_any_number_of_threads(tmp_path):
    data = _clip(7, frames=12)
    frames = {threads: read_frames(data, threads=threads, **LIMITS)[0] for threads in (0, 1, 3)}
    assert frames[1].shape == (12, 32, 32, 3)
    np.testing.assert_array_equal(frames[0], frames[1])
    np.testing.assert_array_equal(frames[3], frames[1])
    picked, info = read_frames(data, 4, threads=2, **LIMITS)
    np.testing.assert_array_equal(picked, frames[1][segment_indices(12, 4)])
    assert info.packets == 12
