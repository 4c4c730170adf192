"""The real benchmark sets' builders, on small planted package trees (no download: the pinned packages are fetched
only by `python -m benchmarks.realsets.build`)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from benchmarks.realsets import build as realsets
from benchmarks.realsets.debian import DebPackage, PackageError, fetch
from benchmarks.realsets.folder_set import split_for
from multigeometry.data.sources.folder import folder_rows


def _sound(path, seconds=0.3):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(16000 * seconds)) / 16000
    sf.write(path, 0.3 * np.sin(2 * np.pi * 440 * t), 16000, format="OGG", subtype="VORBIS")


def _stamp(stamps, rel, text, *, png=True, svg=False, sound=False, spoken=False):
    base = stamps / rel
    base.parent.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".txt").write_text(text, encoding="utf-8")
    if png:
        Image.new("RGBA", (40, 30), (10, 200, 10, 255)).save(base.with_suffix(".png"))
    if svg:
        base.with_suffix(".svg").write_text("<svg/>")
    if sound:
        _sound(base.with_suffix(".ogg"))
    if spoken:
        _sound(base.with_name(base.name + "_desc.ogg"))


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    root = tmp_path_factory.mktemp("packages")
    tux = root / "tux"
    stamps = tux / "usr/share/tuxpaint/stamps"
    _stamp(stamps, "animals/birds/robin", "A robin.\nfr.utf8=Un rouge-gorge.\n", sound=True, spoken=True)
    _stamp(stamps, "animals/birds/cartoon/robin", "A robin.\n")
    _stamp(stamps, "animals/mammals/big_cat", "A lion.\n", sound=True)
    _stamp(stamps, "vehicles/toy_truck", "A toy truck.\n")
    _stamp(stamps, "animals/birds/owl", "An owl.\n", png=False, svg=True)
    _stamp(stamps, "symbols/none", "fr.utf8=Rien.\n", png=True)
    _stamp(stamps, "symbols/math/7", "7\n")
    _sound(stamps / "symbols/math/7_en_GB.ogg")
    hw = root / "hw"
    voices = hw / "usr/share/games/hedgewars/Data/Sounds/voices"
    for voice in ("British", "Pirate"):
        _sound(voices / voice / "Hello.ogg")
        _sound(voices / voice / "Comeonthen.ogg")
    _sound(voices / "British" / "Laugh.ogg")
    _sound(voices / "Default_es" / "Hello.ogg")  # not an English pack
    kt = root / "kt"
    sounds = kt / "usr/share/ktuberling/sounds"
    _sound(sounds / "en" / "moon_fallingstar.ogg")
    _sound(sounds / "en" / "hat.ogg")
    (sounds / "en.soundtheme").write_text(
        '<language code="en">\n<sound name="hat" file="en/hat.ogg" />\n'
        '<sound name="moon_fallingstar" file="en/moon_fallingstar.ogg" />\n</language>\n'
    )
    return {realsets.TUXPAINT.name: tux, realsets.HEDGEWARS.name: hw, realsets.KTUBERLING.name: kt}


def _rows(folder):
    return [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]


def test_image_set_has_descriptions_folder_hierarchy_and_shared_groups(roots, tmp_path):
    out = realsets.build_set(realsets.SETS["tuxpaint-images"], roots, tmp_path / "images")
    rows = {r["sample_id"]: r for r in _rows(out)}
    assert set(rows) == {"tp-animals-birds-robin", "tp-animals-birds-cartoon-robin", "tp-animals-mammals-big_cat",
                         "tp-vehicles-toy_truck", "tp-symbols-math-7"}
    robin = rows["tp-animals-birds-robin"]
    assert robin["text"] == "A robin." and robin["hierarchy"] == ["animals", "birds"]
    assert rows["tp-animals-birds-cartoon-robin"]["group_id"] == robin["group_id"] == "a robin"
    assert rows["tp-vehicles-toy_truck"]["hierarchy"] == ["vehicles"]
    assert (out / robin["image"]).read_bytes() == (roots["tuxpaint-stamps-default"] / "usr/share/tuxpaint/stamps"
                                                   / "animals/birds/robin.png").read_bytes()
    assert all(r["split"] == split_for(r["group_id"], "tuxpaint-images") for r in rows.values())
    source = json.loads((out / "SOURCE.json").read_text())
    assert source["rows"] == 5 and source["skipped"] == {"no English description": 1, "svg only": 1}
    assert source["sources"][0]["sha256"] == realsets.TUXPAINT.sha256
    project_rows = folder_rows(tmp_path / "staging", out)  # the project's `folder:` source reads it as it is
    assert sorted(r.sample_id for r in project_rows) == sorted(rows)
    assert next(r for r in project_rows if r.sample_id == "tp-animals-birds-robin").hierarchy == ["animals", "birds"]


def test_sound_and_speech_sets(roots, tmp_path):
    sounds = _rows(realsets.build_set(realsets.SETS["tuxpaint-sounds"], roots, tmp_path / "sounds"))
    assert {r["text"] for r in sounds} == {"A robin.", "A lion."}
    assert all(r["audio"].startswith("audio/") and r["hierarchy"][0] == "animals" for r in sounds)
    words = {r["sample_id"]: r for r in _rows(realsets.build_set(realsets.SETS["spoken-words"], roots,
                                                                    tmp_path / "words"))}
    assert words["kt-moon_fallingstar"]["text"] == "falling star" and words["kt-hat"]["text"] == "hat"
    assert words["tpd-animals-birds-robin_desc"]["text"] == "A robin."
    assert words["tpd-symbols-math-7_en_GB"]["text"] == "7"
    out = realsets.build_set(realsets.SETS["spoken-phrases"], roots, tmp_path / "phrases")
    phrases = {r["sample_id"]: r for r in _rows(out)}
    assert phrases["hw-British-Comeonthen"]["text"] == "come on then"
    assert phrases["hw-Pirate-Hello"]["group_id"] == phrases["hw-British-Hello"]["group_id"] == "hello"
    assert not any("Default_es" in sid or "Laugh" in sid for sid in phrases)
    skipped = json.loads((out / "SOURCE.json").read_text())["skipped"]
    assert skipped["non-verbal clip"] == 1 and skipped["voice pack Surfer missing"] == 1
    for row in [*words.values(), *phrases.values()]:
        wave, rate = sf.read((tmp_path / ("words" if row["sample_id"] in words else "phrases")) / row["audio"])
        assert rate == 16000 and len(wave) > 0


def test_a_rebuild_gives_the_same_bytes(roots, tmp_path):
    digests = []
    for name in ("a", "b"):
        out = realsets.build_set(realsets.SETS["spoken-phrases"], roots, tmp_path / name)
        digests.append(sorted((p.relative_to(out).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest())
                              for p in out.rglob("*") if p.is_file()))
    assert digests[0] == digests[1]


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_packages_are_used_only_with_the_pinned_sha256(tmp_path):
    tree = tmp_path / "pkg"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        "Package: tiny-data\nVersion: 1.0-1\nArchitecture: all\nMaintainer: t <t@t>\nDescription: t\n"
    )
    (tree / "usr/share/tiny").mkdir(parents=True)
    (tree / "usr/share/tiny/a.txt").write_text("hello")
    cache = tmp_path / "cache"
    (cache / "debs").mkdir(parents=True)
    deb = cache / "debs" / "tiny-data_1.0-1_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(tree), str(deb)], check=True,
                   capture_output=True)
    digest = hashlib.sha256(deb.read_bytes()).hexdigest()
    with pytest.raises(PackageError, match="expected the pinned"):
        fetch(DebPackage("tiny-data", "1.0-1", "0" * 64), cache)
    root = fetch(DebPackage("tiny-data", "1.0-1", digest), cache)
    assert (root / "usr/share/tiny/a.txt").read_text() == "hello"
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no staging folder left behind
