"""The `folder:` source: media files plus pairs.jsonl or pairs.csv."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from multigeometry.config import SplitFractions
from multigeometry.data.manifest import to_frame
from multigeometry.data.sources.folder import PairsFileError, folder_rows


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    out = tmp_path / "staging"
    out.mkdir()
    return out


def png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), color).save(buf, format="PNG")
    return buf.getvalue()


def flac() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, 0.1 * np.sin(np.arange(8000) / 5.0), 16000, format="FLAC")
    return buf.getvalue()


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture
def animals(tmp_path: Path) -> Path:
    """A folder with images, a sound, code and a pairs.jsonl with hierarchies (one media file missing)."""
    folder = tmp_path / "animals"
    (folder / "img" / "cats").mkdir(parents=True)
    (folder / "sounds").mkdir()
    (folder / "img" / "cats" / "tabby.png").write_bytes(png((200, 120, 40)))
    (folder / "img" / "fox.png").write_bytes(png((230, 90, 10)))
    (folder / "sounds" / "meow.flac").write_bytes(flac())
    (folder / "draw.py").write_text("def draw():\n    return 'cat'\n")
    write_jsonl(
        folder / "pairs.jsonl",
        [
            {"sample_id": "tabby-1", "group_id": "tabby", "split": "train", "image": "img/cats/tabby.png",
             "text": "a tabby cat asleep", "hierarchy": ["animal", "mammal", "cat"]},
            {"sample_id": "tabby-2", "group_id": "tabby", "split": "train", "image": "./img/cats/tabby.png",
             "audio": "sounds/meow.flac", "text": "a cat meowing", "hierarchy": ["animal", "mammal", "cat"]},
            {"sample_id": "fox", "image": "img/fox.png", "code": "draw.py", "text": "a red fox",
             "hierarchy": ["animal", "mammal"]},
            {"sample_id": "ghost", "image": "img/missing.png", "text": "nothing here"},
        ],
    )
    return folder


def test_jsonl_rows_with_hierarchy_and_copied_media(animals, staging):
    rows = folder_rows(staging, animals)
    by_id = {r.sample_id: r for r in rows}
    assert list(by_id) == ["tabby-1", "tabby-2", "fox", "ghost"]

    tabby = by_id["tabby-2"]
    assert (tabby.group_id, tabby.split, tabby.text) == ("tabby", "train", "a cat meowing")
    assert tabby.image == "img/cats/tabby.png" == by_id["tabby-1"].image  # normalised
    assert tabby.hierarchy == ["animal", "mammal", "cat"]
    assert (staging / tabby.image).read_bytes() == (animals / "img/cats/tabby.png").read_bytes()
    assert (staging / tabby.audio).read_bytes() == (animals / "sounds/meow.flac").read_bytes()

    fox = by_id["fox"]
    assert (fox.group_id, fox.split, fox.hierarchy) == ("fox", None, ["animal", "mammal"])
    assert (staging / fox.code).read_text() == "def draw():\n    return 'cat'\n"

    # a missing media file is validation's business: the path stays, nothing is copied
    assert by_id["ghost"].image == "img/missing.png"
    assert not (staging / "img/missing.png").exists()

    frame = to_frame(rows, 0, SplitFractions())
    assert frame.loc[frame.sample_id == "tabby-1", "hierarchy_concepts"].item() == [
        ["L0:animal"], ["L0:animal", "L1:mammal"], ["L0:animal", "L1:mammal", "L2:cat"]]


def test_csv_with_level_columns_and_default_ids(tmp_path, staging):
    folder = tmp_path / "birds"
    folder.mkdir()
    (folder / "robin.png").write_bytes(png((180, 40, 30)))
    (folder / "pairs.csv").write_text(
        "image,text,split,level_0,level_1,level_2\n"
        "robin.png,a robin,test,Aves,Turdidae,Turdus\n"
        'robin.png,"a robin, singing",,Aves,Turdidae,\n'
        ",a bird with no picture,val,Aves,,\n"
    )
    rows = folder_rows(staging, folder)
    assert [r.sample_id for r in rows] == ["row000002", "row000003", "row000004"]
    assert [r.group_id for r in rows] == [r.sample_id for r in rows]
    assert [r.hierarchy for r in rows] == [["Aves", "Turdidae", "Turdus"], ["Aves", "Turdidae"], ["Aves"]]
    assert [r.split for r in rows] == ["test", None, "val"]
    assert [r.image for r in rows] == ["robin.png", "robin.png", None]
    assert rows[1].text == "a robin, singing"
    assert (staging / "robin.png").read_bytes() == (folder / "robin.png").read_bytes()


def test_csv_hierarchy_as_a_json_list(tmp_path, staging):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "pairs.csv").write_text('text,hierarchy\nhello,"[""greeting"", ""hello""]"\nbye,\n')
    rows = folder_rows(staging, folder)
    assert [r.hierarchy for r in rows] == [["greeting", "hello"], []]


@pytest.mark.parametrize(
    ("records", "pattern"),
    [
        ([{"text": "a", "colour": "red"}], r"pairs\.jsonl, line 1: unknown column\(s\) \['colour'\]"),
        ([{"text": "a"}, {"image": "../outside.png"}], r"line 2, column 'image': path '\.\./outside\.png' must be"),
        ([{"image": "/etc/passwd"}], r"line 1, column 'image': path '/etc/passwd' must be relative"),
        ([{"text": "a", "split": "training"}], r"line 1, column 'split': 'training' is not one of train, val, test"),
        ([{"sample_id": "x", "text": "a"}, {"sample_id": "x", "text": "b"}], r"line 2, column 'sample_id'.*line 1"),
        ([{"text": "a", "level_0": "x", "level_2": "z"}], r"line 1: level columns \['level_0', 'level_2'\]"),
        ([{"text": "a", "level_0": "", "level_1": "y"}], r"line 1, column 'level_0': empty, but a deeper level"),
        ([{"text": "a", "hierarchy": "animal"}], r"line 1, column 'hierarchy': expected a list"),
        ([{"text": "a", "hierarchy": ["x"], "level_0": "x"}], r"line 1: give the hierarchy either"),
        ([{"text": 3}], r"line 1, column 'text': expected a string, got int"),
        ([{"sample_id": "only-an-id"}], r"line 1: the row has none of image, text, audio, code"),
        ([{"image": "manifest.parquet"}], r"line 1, column 'image': 'manifest.parquet' is not a media file"),
    ],
)
def test_pairs_errors_name_file_line_and_column(tmp_path, staging, records, pattern):
    folder = tmp_path / "bad"
    folder.mkdir()
    write_jsonl(folder / "pairs.jsonl", records)
    with pytest.raises(PairsFileError, match=pattern) as caught:
        folder_rows(staging, folder)
    assert str(folder / "pairs.jsonl") in str(caught.value)


def test_a_link_out_of_the_folder_is_an_error(tmp_path, staging):
    folder = tmp_path / "linked"
    folder.mkdir()
    (tmp_path / "secret.png").write_bytes(png((0, 0, 0)))
    (folder / "inside.png").symlink_to(tmp_path / "secret.png")
    write_jsonl(folder / "pairs.jsonl", [{"image": "inside.png", "text": "x"}])
    with pytest.raises(PairsFileError, match=r"line 1, column 'image': path 'inside\.png' leads outside"):
        folder_rows(staging, folder)


def test_bad_json_line_and_missing_or_double_pairs_file(tmp_path, staging):
    folder = tmp_path / "f"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match=r"has no pairs file; expected one of pairs\.jsonl, pairs\.csv"):
        folder_rows(staging, folder)
    (folder / "pairs.jsonl").write_text('{"text": "fine"}\n\n{"text": oops}\n')
    with pytest.raises(PairsFileError, match=r"pairs\.jsonl, line 3: not valid JSON"):
        folder_rows(staging, folder)
    (folder / "pairs.csv").write_text("text\nx\n")
    with pytest.raises(PairsFileError, match="has both pairs.jsonl and pairs.csv"):
        folder_rows(staging, folder)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        folder_rows(staging, tmp_path / "nowhere")


def test_csv_unknown_column_and_extra_cells(tmp_path, staging):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "pairs.csv").write_text("text,caption\nx,y\n")
    with pytest.raises(PairsFileError, match=r"pairs\.csv, line 2: unknown column\(s\) \['caption'\]"):
        folder_rows(staging, folder)
    (folder / "pairs.csv").write_text("text\nx\ny,z\n")
    with pytest.raises(PairsFileError, match=r"pairs\.csv, line 3: more cells than header columns"):
        folder_rows(staging, folder)


def test_prepare_stage_reads_a_folder_source(animals, tmp_path):
    from multigeometry.config import params_from_dict
    from multigeometry.data.manifest import MANIFEST, read_manifest
    from multigeometry.stages.prepare import prepare

    params = params_from_dict({"data": {"dataset": "animals", "source": f"folder:{animals}"}})
    out = prepare(params, tmp_path / "project")
    frame = read_manifest(out / MANIFEST).set_index("sample_id")
    assert list(frame.index) == ["tabby-1", "tabby-2", "fox", "ghost"]
    assert frame.loc["tabby-1", "hierarchy"] == ["animal", "mammal", "cat"]
    assert frame.loc["tabby-1", "split"] == frame.loc["tabby-2", "split"] == "train"
    assert frame.loc["fox", "split"] in ("train", "val", "test")
    assert (out / frame.loc["fox", "image"]).read_bytes() == (animals / "img/fox.png").read_bytes()
