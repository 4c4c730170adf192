"""The `hf:` source on small datasets built here and loaded through `datasets` from local files, offline."""

from __future__ import annotations

import ast
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image as PILImage

from multigeometry.config import HFConfig, SplitFractions
from multigeometry.data.manifest import to_frame
from multigeometry.data.sources import hf as hf_module
from multigeometry.data.sources.hf import HFSourceError, hf_rows, row_quotas


@pytest.fixture(autouse=True)
def offline_datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No network, and a datasets cache inside the test's folder."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    out = tmp_path / "staging"
    out.mkdir()
    return out


def image_bytes(color: tuple[int, int, int], fmt: str = "PNG", size: int = 40) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (size, size), color).save(buf, format=fmt)
    return buf.getvalue()


def audio_bytes(freq: float, fmt: str = "FLAC", rate: int = 16000) -> bytes:
    t = np.arange(rate // 2) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.2 * np.sin(2 * np.pi * freq * t)).astype("float32"), rate, format=fmt)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------------------
# Flickr30k: an image, a list of 5 captions, its own split column
# ---------------------------------------------------------------------------------------------------------------------


def flickr30k_parquet(tmp_path: Path, splits: list[str]) -> tuple[Path, list[bytes]]:
    from datasets import Dataset, Image

    images = [image_bytes((40 * i, 10, 200), "PNG" if i % 2 == 0 else "JPEG") for i in range(len(splits))]
    ds = Dataset.from_dict(
        {
            "image": [{"bytes": b, "path": f"{1000 + i}.jpg"} for i, b in enumerate(images)],
            "caption": [[f"image {i} caption {c}" for c in range(5)] for i in range(len(splits))],
            "sentids": [[str(5 * i + c) for c in range(5)] for i in range(len(splits))],
            "split": splits,
            "img_id": [str(i) for i in range(len(splits))],
            "filename": [f"{1000 + i}.jpg" for i in range(len(splits))],
        }
    ).cast_column("image", Image())
    path = tmp_path / "flickr30k.parquet"
    ds.to_parquet(path)
    return path, images


def test_flickr30k_rows_share_the_image_and_keep_the_dataset_split(tmp_path, staging):
    path, images = flickr30k_parquet(tmp_path, ["train", "val", "test", "train"])
    rows = hf_rows(staging, "parquet", HFConfig(layout="flickr30k", data_files=(str(path),)))

    assert len(rows) == 20
    assert len({r.sample_id for r in rows}) == 20
    by_group: dict[str, list] = {}
    for row in rows:
        by_group.setdefault(row.group_id, []).append(row)
    assert sorted(by_group) == ["0", "1", "2", "3"]
    for i, group in enumerate(sorted(by_group)):
        members = by_group[group]
        assert [r.text for r in members] == [f"image {i} caption {c}" for c in range(5)]
        assert {r.image for r in members} == {members[0].image}  # one image file for the 5 captions
        assert {r.split for r in members} == {["train", "val", "test", "train"][i]}
        # the stored bytes, unchanged, under the extension of their real format
        assert (staging / members[0].image).read_bytes() == images[i]
        assert members[0].image.endswith(".png" if i % 2 == 0 else ".jpg")
        assert all(r.audio is None and r.code is None and r.hierarchy == [] for r in members)


def test_max_rows_limits_dataset_rows_not_captions(tmp_path, staging):
    path, _ = flickr30k_parquet(tmp_path, ["train", "val", "test", "train"])
    rows = hf_rows(staging, "parquet", HFConfig(layout="flickr30k", data_files=(str(path),), max_rows=2))
    assert len(rows) == 10
    assert Counter(r.group_id for r in rows) == {"0": 5, "1": 5}
    assert len(list((staging / "image").iterdir())) == 2


def test_a_split_value_that_maps_to_nothing_is_an_error_naming_it(tmp_path, staging):
    path, _ = flickr30k_parquet(tmp_path, ["train", "restval", "test"])
    with pytest.raises(HFSourceError, match=r"'restval'.*column 'split'.*data\.hf\.split_names"):
        hf_rows(staging, "parquet", HFConfig(layout="flickr30k", data_files=(str(path),)))
    assert not any(staging.iterdir()), "nothing is written before the splits are known to be good"

    rows = hf_rows(staging, "parquet", HFConfig(layout="flickr30k", data_files=(str(path),),
                                                split_names={"restval": "train"}))
    assert Counter(r.split for r in rows) == {"train": 10, "test": 5}
    rows = hf_rows(staging, "parquet", HFConfig(layout="flickr30k", data_files=(str(path),),
                                                split_names={"restval": ""}))
    assert sorted({r.group_id for r in rows}) == ["0", "2"]


def test_split_names_must_map_to_a_known_split(tmp_path, staging):
    path, _ = flickr30k_parquet(tmp_path, ["train"])
    with pytest.raises(HFSourceError, match=r"data\.hf\.split_names\.train: 'training'"):
        hf_rows(staging, "parquet", HFConfig(layout="flickr30k", data_files=(str(path),),
                                            split_names={"train": "training"}))


# ---------------------------------------------------------------------------------------------------------------------
# audio–caption: Clotho (caption_1..caption_5, save_to_disk) and AudioCaps (one caption a row, shared clips)
# ---------------------------------------------------------------------------------------------------------------------


def test_clotho_saved_to_disk_gives_one_row_per_caption(tmp_path, staging):
    from datasets import Audio, Dataset, DatasetDict

    media = tmp_path / "clips"
    media.mkdir()
    parts = {}
    originals = {}
    for split, freqs in {"development": [220, 330], "validation": [440], "evaluation": [550]}.items():
        files = []
        for freq in freqs:
            path = media / f"clip_{freq}.flac"
            path.write_bytes(audio_bytes(freq))
            originals[path.name] = path.read_bytes()
            files.append(path)
        parts[split] = Dataset.from_dict(
            {
                "audio": [str(f) for f in files],
                "file_name": [f.name for f in files],
                **{f"caption_{c}": [f"{f.stem} said {c} ways" for f in files] for c in range(1, 6)},
            }
        ).cast_column("audio", Audio())
    saved = tmp_path / "clotho"
    DatasetDict(parts).save_to_disk(saved)

    with pytest.raises(HFSourceError, match="'development'"):
        hf_rows(staging, str(saved), HFConfig(layout="audio_caption"))

    cfg = HFConfig(layout="audio_caption", split_names={"development": "train", "evaluation": "test"})
    rows = hf_rows(staging, str(saved), cfg)
    assert len(rows) == 4 * 5
    groups = Counter(r.group_id for r in rows)
    assert groups == {name: 5 for name in originals}
    splits = {r.group_id: r.split for r in rows}
    assert splits == {"clip_220.flac": "train", "clip_330.flac": "train", "clip_440.flac": "val",
                      "clip_550.flac": "test"}
    for row in rows:
        assert row.audio.endswith(".flac")
        assert (staging / row.audio).read_bytes() == originals[row.group_id]
        assert row.text.startswith(Path(row.group_id).stem)
    first = [r for r in rows if r.group_id == "clip_220.flac"]
    assert [r.text for r in first] == [f"clip_220 said {c} ways" for c in range(1, 6)]


def test_audiocaps_rows_of_one_clip_share_a_group(tmp_path, staging):
    from datasets import Audio, Dataset

    clips = {"yt_a": audio_bytes(300, "WAV"), "yt_b": audio_bytes(600, "WAV")}
    order = ["yt_a", "yt_b", "yt_a"]
    ds = Dataset.from_dict(
        {
            "audiocap_id": [1, 2, 3],
            "youtube_id": order,
            "start_time": [0, 10, 0],
            "caption": ["a dog barks", "rain falls", "a dog barks twice"],
            "audio": [{"bytes": clips[y], "path": f"{y}.wav"} for y in order],
        }
    ).cast_column("audio", Audio())
    path = tmp_path / "audiocaps.parquet"
    ds.to_parquet(path)

    rows = hf_rows(staging, "parquet", HFConfig(layout="audio_caption", data_files=(str(path),)))
    assert [(r.group_id, r.text) for r in rows] == [("yt_a", "a dog barks"), ("yt_b", "rain falls"),
                                                   ("yt_a", "a dog barks twice")]
    assert all(r.split is None for r in rows)  # one split: assigned later per group
    for row in rows:
        assert row.audio.endswith(".wav")
        assert (staging / row.audio).read_bytes() == clips[row.group_id]


def test_audiofolder_with_metadata_and_split_data_files(tmp_path, staging):
    folder = tmp_path / "sounds"
    originals = {}
    for split, names in {"train": ["a", "b"], "validation": ["c"]}.items():
        (folder / split).mkdir(parents=True)
        lines = ["file_name,caption,source"]
        for name in names:
            data = audio_bytes(200 + 100 * len(originals))
            (folder / split / f"{name}.flac").write_bytes(data)
            originals[name] = data
            lines.append(f"{name}.flac,the sound {name},field recording")
        (folder / split / "metadata.csv").write_text("\n".join(lines) + "\n")

    cfg = HFConfig(
        layout="audio_caption",
        data_files=(f"train={folder}/train/*", f"validation={folder}/validation/*"),
        hierarchy_columns=("source",),
    )
    rows = hf_rows(staging, "audiofolder", cfg)
    assert sorted((r.text, r.split) for r in rows) == [("the sound a", "train"), ("the sound b", "train"),
                                                       ("the sound c", "val")]
    for row in rows:
        assert row.hierarchy == ["field recording"]
        assert (staging / row.audio).read_bytes() == originals[row.text.rsplit(" ", 1)[1]]
        assert row.sample_id.startswith(("train-", "validation-"))


# ---------------------------------------------------------------------------------------------------------------------
# images from an imagefolder, with a hierarchy from metadata columns
# ---------------------------------------------------------------------------------------------------------------------


def test_imagefolder_path_with_hierarchy_columns(tmp_path, staging):
    folder = tmp_path / "birds"
    records = {
        "train": [
            ("robin.jpg", "a robin on a branch", "Turdidae", "Turdus"),
            ("wren.png", "a small wren", "Troglodytidae", ""),
        ],
        "test": [("crow.png", "a crow in snow", "Corvidae", "Corvus")],
    }
    originals = {}
    for split, items in records.items():
        (folder / split).mkdir(parents=True)
        lines = ["file_name,caption,family,genus"]
        for i, (name, caption, family, genus) in enumerate(items):
            data = image_bytes((50 * i, 100, 20), "JPEG" if name.endswith(".jpg") else "PNG")
            (folder / split / name).write_bytes(data)
            originals[caption] = (data, Path(name).suffix)
            lines.append(f"{name},{caption},{family},{genus}")
        (folder / split / "metadata.csv").write_text("\n".join(lines) + "\n")

    cfg = HFConfig(columns={"image": "image", "text": "caption"}, hierarchy_columns=("family", "genus"))
    rows = hf_rows(staging, str(folder), cfg)
    by_text = {r.text: r for r in rows}
    assert set(by_text) == set(originals)
    assert by_text["a robin on a branch"].hierarchy == ["Turdidae", "Turdus"]
    assert by_text["a small wren"].hierarchy == ["Troglodytidae"]  # a missing genus ends the hierarchy there
    assert by_text["a crow in snow"].split == "test" and by_text["a small wren"].split == "train"
    for text, (data, suffix) in originals.items():
        assert (staging / by_text[text].image).read_bytes() == data
        assert by_text[text].image.endswith(suffix)


def test_generic_arrays_are_encoded_and_class_labels_named(tmp_path, staging):
    from datasets import ClassLabel, Dataset, Features, List, Value

    pixels = np.zeros((2, 36, 36, 3), dtype=np.uint8)
    pixels[0, :, :, 0] = 255
    pixels[1, :, :, 2] = 255
    ds = Dataset.from_dict(
        {"pixels": pixels.tolist(), "family": [0, 1], "species": ["fox", "owl"], "note": ["orange", "blue"]},
        features=Features(
            {
                "pixels": List(List(List(Value("uint8")))),
                "family": ClassLabel(names=["canid", "strigid"]),
                "species": Value("string"),
                "note": Value("string"),
            }
        ),
    )
    saved = tmp_path / "animals"
    ds.save_to_disk(saved)

    cfg = HFConfig(columns={"image": "pixels", "text": "species, note"}, hierarchy_columns=("family",))
    rows = hf_rows(staging, str(saved), cfg)
    assert [(r.text, r.hierarchy) for r in rows] == [("fox", ["canid"]), ("orange", ["canid"]),
                                                    ("owl", ["strigid"]), ("blue", ["strigid"])]
    assert rows[0].group_id == rows[1].group_id != rows[2].group_id
    with PILImage.open(staging / rows[0].image) as image:
        assert image.format == "PNG" and image.size == (36, 36) and image.getpixel((3, 3)) == (255, 0, 0)


def test_unknown_column_is_an_error_that_lists_the_columns(tmp_path, staging):
    path, _ = flickr30k_parquet(tmp_path, ["train"])
    with pytest.raises(HFSourceError, match=r"data\.hf\.columns\.image.*'picture'.*'caption'"):
        hf_rows(staging, "parquet", HFConfig(columns={"image": "picture"}, data_files=(str(path),)))
    with pytest.raises(HFSourceError, match=r"data\.hf\.columns: unknown modality key\(s\) \['smell'\]"):
        hf_rows(staging, "parquet", HFConfig(columns={"smell": "image"}, data_files=(str(path),)))
    with pytest.raises(HFSourceError, match=r"layout 'code_docstring': no code and no text column.*columns\.code"):
        hf_rows(staging, "parquet", HFConfig(layout="code_docstring", data_files=(str(path),)))


# ---------------------------------------------------------------------------------------------------------------------
# code–docstring: CodeSearchNet style
# ---------------------------------------------------------------------------------------------------------------------


CSN_CODE = '''def add(a, b):
    """Add two numbers.

    Longer explanation that is not part of the caption.
    """

    return a + b
'''
PY2_CODE = 'def shout(x):\n    """Print loudly."""\n    print "%s!" % x\n'


def test_code_docstring_layout_strips_the_docstring_from_the_code(tmp_path, staging):
    records = [
        {
            "repository_name": "alice/maths",
            "func_path_in_repository": "maths/ops.py",
            "func_name": "add",
            "language": "python",
            "func_code_string": CSN_CODE,
            "func_documentation_string": "Add two numbers.\n\nLonger explanation that is not part of the caption.",
            "split_name": "valid",
        },
        {
            "repository_name": "bob/legacy",
            "func_path_in_repository": "legacy/io.py",
            "func_name": "shout",
            "language": "python",
            "func_code_string": PY2_CODE,
            "func_documentation_string": "Print loudly.",
            "split_name": "train",
        },
    ]
    path = tmp_path / "csn.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))

    rows = hf_rows(staging, "json", HFConfig(layout="code_docstring", data_files=(str(path),)))
    add, shout = rows
    assert add.text == "Add two numbers."
    assert add.split == "val" and shout.split == "train"
    assert add.hierarchy == ["alice/maths", "maths/ops.py"]
    code = (staging / add.code).read_text()
    assert add.code.endswith(".py")
    assert "Add two numbers" not in code and "return a + b" in code
    ast.parse(code)
    # not valid Python 3: kept as it is, for validation to judge
    assert (staging / shout.code).read_text() == PY2_CODE
    # the manifest derives the hierarchy's concepts as for any source
    frame = to_frame(rows, 0, SplitFractions())
    assert frame["hierarchy_concepts"][0] == [["L0:alice/maths"], ["L0:alice/maths", "L1:maths/ops.py"]]


# ---------------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------------


def test_row_quotas_spread_max_rows_over_the_splits():
    assert row_quotas([80, 10, 10], 0) == [80, 10, 10]
    assert row_quotas([80, 10, 10], 500) == [80, 10, 10]
    assert row_quotas([80, 10, 10], 10) == [8, 1, 1]
    assert sum(row_quotas([7, 5, 3], 4)) == 4


def test_a_loading_script_dataset_gets_a_hint(monkeypatch, staging):
    import datasets

    def script_dataset(*args, **kwargs):
        raise RuntimeError("Dataset scripts are no longer supported, but found flickr30k.py")

    monkeypatch.setattr(datasets, "load_dataset", script_dataset)
    with pytest.raises(HFSourceError, match=r"hf:nlphuji/flickr30k@refs/convert/parquet"):
        hf_rows(staging, "nlphuji/flickr30k", HFConfig(layout="flickr30k"))


def test_data_files_with_and_without_splits():
    assert hf_module._data_files(HFConfig(data_files=("a/*.parquet", "year=2020/b.parquet"))) == [
        "a/*.parquet", "year=2020/b.parquet"]
    assert hf_module._data_files(HFConfig(data_files=("train=a/*.csv", "test=b/*.csv"))) == {
        "train": ["a/*.csv"], "test": ["b/*.csv"]}
    with pytest.raises(HFSourceError, match="data.hf.data_files"):
        hf_module._data_files(HFConfig(data_files=("train=a/*.csv", "b/*.csv")))


def test_prepare_stage_reads_an_hf_source(tmp_path):
    from multigeometry.config import params_from_dict
    from multigeometry.data.manifest import MANIFEST, read_manifest
    from multigeometry.stages.prepare import prepare

    path, images = flickr30k_parquet(tmp_path, ["train", "val", "test"])
    params = params_from_dict(
        {"data": {"dataset": "f30k", "source": "hf:parquet", "hf": {"layout": "flickr30k", "data_files": [str(path)]}}}
    )
    out = prepare(params, tmp_path / "project")
    frame = read_manifest(out / MANIFEST)
    assert len(frame) == 15
    assert frame.groupby("group_id")["split"].first().to_dict() == {"0": "train", "1": "val", "2": "test"}
    first = frame[frame.group_id == "1"].iloc[0]
    assert (out / first["image"]).read_bytes() == images[1]


def test_media_helpers_name_and_sniff_files():
    from multigeometry.data.sources.media import audio_extension, image_extension, media_stem

    assert media_stem("train-0000001") == "train-0000001"
    assert media_stem("a/b") != media_stem("a_b") and "/" not in media_stem("a/b")
    assert image_extension(image_bytes((1, 2, 3), "JPEG")) == "jpg"
    assert image_extension(b"not an image") is None
    assert audio_extension(audio_bytes(440, "WAV")) == "wav"
    assert audio_extension(audio_bytes(440, "FLAC")) == "flac"
