from __future__ import annotations

import ast
import hashlib

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from PIL import Image

from multigeometry.config import WorldConfig
from multigeometry.data.sources.world import world_rows
from multigeometry.data.world.scene import COLORS, LEVELS, SHAPES, Scene, SceneObject, caption, level_concepts


def _digest(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("w")
    rows = world_rows(root, WorldConfig(video=False, n_items=24, workers=2, image_size=64), seed=3)
    return root, rows


def test_world_has_the_required_variety():
    assert len(SHAPES) >= 6
    assert len(COLORS) >= 8
    assert LEVELS >= 4


def test_every_item_has_four_modalities_and_a_hierarchy(world):
    root, rows = world
    assert len(rows) == 24
    for row in rows:
        for rel in (row.image, row.audio, row.code):
            assert (root / rel).is_file()
        assert row.text
        assert len(row.hierarchy) == LEVELS - 1
        image = Image.open(root / row.image)
        assert image.size == (64, 64)
        ast.parse((root / row.code).read_text())
        info = sf.info(root / row.audio)
        assert info.samplerate == 16000 and info.channels == 1
        assert 0.5 < info.duration < 10


def test_concepts_nest_from_general_to_specific(world):
    _root, rows = world
    for row in rows:
        levels = [set(c) for c in row.hierarchy_concepts] + [set(row.concepts)]
        for general, specific in zip(levels, levels[1:], strict=False):
            assert general < specific, (row.sample_id, general - specific)


def test_containment_across_items_is_bound_to_one_object():
    red_circle_blue_square = Scene((SceneObject("circle", "red", "small"), SceneObject("square", "blue", "large")),
                                   relation="left of")
    red_square_blue_circle = Scene((SceneObject("square", "red", "small"), SceneObject("circle", "blue", "large")),
                                   relation="left of")
    a_red_circle = set(level_concepts(Scene((SceneObject("circle", "red", "large"),), position="left"), 2))
    assert a_red_circle <= set(level_concepts(red_circle_blue_square, LEVELS - 1))
    assert not a_red_circle <= set(level_concepts(red_square_blue_circle, LEVELS - 1))


def test_relation_concept_is_the_same_for_either_phrasing():
    a, b = SceneObject("circle", "red", "small"), SceneObject("square", "blue", "large")
    assert level_concepts(Scene((a, b), relation="left of"), 3) == level_concepts(Scene((b, a), relation="right of"), 3)


def test_captions_have_several_paraphrases_per_level():
    scene = Scene((SceneObject("circle", "red", "small"),), position="left")
    rng = np.random.default_rng(0)
    for level in range(LEVELS):
        assert len({caption(scene, level, rng) for _ in range(60)}) >= 2, level
    assert "circle" in caption(scene, 1, rng) and "red" in caption(scene, 2, rng)


def test_no_two_images_alike_and_voices_vary(world):
    root, rows = world
    images = {hashlib.sha256((root / r.image).read_bytes()).hexdigest() for r in rows}
    assert len(images) == len(rows)
    lengths = {sf.info(root / r.audio).frames for r in rows}
    assert len(lengths) > len(rows) // 2


def test_deterministic_from_seed(tmp_path, world):
    root, rows = world
    again = tmp_path / "again"
    again.mkdir()
    rows_again = world_rows(again, WorldConfig(video=False, n_items=24, workers=1, image_size=64), seed=3)
    assert _digest(root) == _digest(again)
    assert [r.__dict__ for r in rows] == [r.__dict__ for r in rows_again]
    other = tmp_path / "other"
    other.mkdir()
    world_rows(other, WorldConfig(video=False, n_items=4, workers=1, image_size=64, audio=False), seed=4)
    assert _digest(other)["image/w000000.png"] != _digest(root)["image/w000000.png"]


def test_code_mentions_what_it_draws(world):
    root, rows = world
    frame = pd.DataFrame([r.__dict__ for r in rows])
    for _, row in frame.iterrows():
        code = (root / row["code"]).read_text()
        for concept in row["concepts"]:
            if concept.startswith("obj(color=") and concept.count("=") == 3:
                attrs = dict(kv.split("=") for kv in concept[4:-1].split(","))
                assert f".{attrs['shape']}(" in code and repr(attrs["color"]) in code


def test_resample_matches_scipy_and_removes_what_aliases():
    from scipy.signal import resample_poly

    from multigeometry.data.world.speech import resample

    rate = 22050
    t = np.arange(rate * 2) / rate
    x = (np.sin(2 * np.pi * 440 * t) + 0.3 * np.sin(2 * np.pi * 10000 * t)).astype(np.float32)
    y = resample(x, rate, 16000)
    reference = resample_poly(x, 320, 441)
    assert len(y) == len(reference) == 32000
    assert np.abs(y[64:-64] - reference[64:-64]).max() < 0.02
    spectrum = np.abs(np.fft.rfft(y))
    freqs = np.fft.rfftfreq(len(y), 1 / 16000)
    assert spectrum[np.argmin(abs(freqs - 6000))] < 1e-2 * spectrum[np.argmin(abs(freqs - 440))]


def test_a_harder_world_has_textures_clutter_and_near_duplicates(tmp_path, world):
    """data.world.textures, clutter and near_duplicates (presets/world-hard.yaml): a fourth attribute drawn and named
    at the most specific level, undescribed background, and items that repeat the previous scene with one thing
    changed; a default world's bytes do not change."""
    from multigeometry.data.world.render import place, render
    from multigeometry.data.world.scene import TEXTURES, near_duplicate, sample_scene

    cfg = WorldConfig(video=False, n_items=30, workers=1, image_size=64, audio=False, textures=True, clutter=8,
                      near_duplicates=0.5)
    rows = world_rows(tmp_path, cfg, seed=3)
    assert all(any(t in r.text for t in TEXTURES) for r in rows)
    assert all(any(f"texture={t}" in c for c in r.concepts for t in TEXTURES) for r in rows)
    # the texture is named at the last level only: the general descriptions are the world's usual ones
    assert not any(t in h for r in rows for h in r.hierarchy for t in TEXTURES)
    code = (tmp_path / rows[0].code).read_text()
    assert "texture=" in code
    rng = np.random.default_rng(0)
    for _ in range(50):
        scene = sample_scene(rng, 2, textures=True)
        other = near_duplicate(scene, rng)
        changed = [(a, b) for a, b in zip(scene.objects, other.objects, strict=True) if a != b]
        moved = scene.position != other.position or scene.relation != other.relation
        assert len(changed) + int(moved) == 1
        if changed:
            (a, b), = changed
            assert sum(a.attributes()[k] != b.attributes()[k] for k in a.attributes()) == 1
    from multigeometry.data.sources.world import _is_near_duplicate

    for i in range(1, len(rows)):  # a neighbour shares most of the previous item's concepts
        shared = len(set(rows[i].concepts) & set(rows[i - 1].concepts))
        if _is_near_duplicate(cfg, 3, i):
            assert shared >= 4 and rows[i].text != rows[i - 1].text
    assert sum(_is_near_duplicate(cfg, 3, i) for i in range(len(rows))) >= 8
    scene = sample_scene(np.random.default_rng(1), 1)
    plain = render(scene, place(scene, 64, np.random.default_rng(2)), 64, 0.0, np.random.default_rng(3))
    busy = render(scene, place(scene, 64, np.random.default_rng(2)), 64, 0.0, np.random.default_rng(3), clutter=20)
    assert np.abs(np.asarray(plain, dtype=int) - np.asarray(busy, dtype=int)).sum() > 0
    default_root, _rows = world
    assert _digest(default_root)  # the default world of the fixture is the one the determinism test pins


def test_injected_ambiguity_is_recorded_per_sample_and_modality(tmp_path, world):
    """data.world.ambiguity: items not left clean get a severity per modality that scales their corruption (image
    occlusion, noise, blur, downscaling; audio noise or babble and truncation; caption vagueness), recorded in the
    manifest as the uncertainty metrics' ground truth."""
    import json

    from multigeometry.config import AmbiguityConfig
    from multigeometry.data.manifest import ambiguity_problem

    cfg = WorldConfig(video=False, n_items=16, workers=1, image_size=64, ambiguity=AmbiguityConfig(clean_fraction=0.25))
    rows = world_rows(tmp_path, cfg, seed=3)
    clean_root, clean_rows = world
    records = [json.loads(r.ambiguity) for r in rows]
    assert all(ambiguity_problem(r.ambiguity) is None for r in rows)
    corrupted = [i for i, rec in enumerate(records) if rec["image"]["severity"] > 0]
    assert 8 <= len(corrupted) <= 16 and all(set(rec) == {"image", "audio", "text"} for rec in records)
    clean = [i for i in range(16) if i not in corrupted]
    assert all(records[i][m]["severity"] == 0 for i in clean for m in ("image", "audio", "text"))
    for i in corrupted:
        image = records[i]["image"]
        assert {"occlusion", "noise", "blur", "downscale"} <= set(image) and image["noise"] > 0
        # the same item of the clean world: same scene, now corrupted
        a = np.asarray(Image.open(tmp_path / rows[i].image), dtype=int)
        b = np.asarray(Image.open(clean_root / clean_rows[i].image), dtype=int)
        assert np.abs(a - b).mean() > 1
        audio = records[i]["audio"]
        assert audio["snr_db"] < 40 and 0 <= audio["truncation"] < 0.5
        dropped = records[i]["text"].get("dropped", [])
        assert len(dropped) == round(records[i]["text"]["severity"] * 3)
        if "color" in dropped:
            assert not any(c in rows[i].text.split() for c in COLORS)
    for i in clean:  # a clean item is the clean world's
        assert rows[i].text == clean_rows[i].text
    assert [json.loads(r.ambiguity)["image"]["severity"] for r in clean_rows] == [0.0] * len(clean_rows)


def test_a_vague_caption_leaves_out_what_it_drops():
    from multigeometry.data.world.scene import vague_caption

    scene = Scene((SceneObject("circle", "red", "small", "striped"),), position="left")
    rng = np.random.default_rng(0)
    assert vague_caption(scene, ("color", "place"), rng) == "a small striped circle"
    assert vague_caption(scene, ("size", "texture"), rng).startswith("a red circle")
    two = Scene((SceneObject("circle", "red", "small"), SceneObject("square", "blue", "large")), relation="above")
    assert vague_caption(two, ("size", "place"), rng) == "a red circle and a blue square"
