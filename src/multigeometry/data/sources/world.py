"""The embedded default dataset: a generated multimodal world, deterministic from the seed.

Every item is one scene with an image, captions at four levels of generality, the most specific caption spoken by
eSpeak NG, and a program that draws it. The most specific caption is the row's text; the three more general ones are
its hierarchy. With `data.world.video`, the scene's objects move (its motion joins every caption, the concepts, the
speech and the program), and the item has a clip of them moving (`data/video.py`: H.264 in MP4 or VP9 in WebM, bit
for bit the same for the same seed); a row whose motion has an opposite also carries the caption of the clip played
backwards (`temporal_contrasts`). The motion, the clip and its ambiguity draw from streams of their own, so the image,
the voice and the other draws of an item are those of the world without video.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from multigeometry.config import WorldConfig
from multigeometry.data.manifest import ManifestRow
from multigeometry.data.video import encode_clip
from multigeometry.data.world.ambiguity import (
    corrupt_audio,
    corrupt_clip,
    corrupt_image,
    dropped_attributes,
    record,
    severities,
    video_severity,
)
from multigeometry.data.world.program import program
from multigeometry.data.world.render import place, render, render_clip
from multigeometry.data.world.scene import (
    COMPOUND_LEVEL,
    LEVELS,
    MOTION_PHRASES,
    Scene,
    caption,
    level_concepts,
    near_duplicate,
    parts,
    sample_motion,
    sample_scene,
    temporal_contrasts,
    vague_caption,
    with_motion,
)
from multigeometry.data.world.speech import LANGUAGES, VOICE_VARIANTS, Voice, speak

log = logging.getLogger(__name__)


def item_id(index: int) -> str:
    return f"w{index:06d}"


def random_voice(rng: np.random.Generator) -> Voice:
    return Voice(
        language=LANGUAGES[int(rng.integers(len(LANGUAGES)))],
        variant=VOICE_VARIANTS[int(rng.integers(len(VOICE_VARIANTS)))],
        rate=int(rng.integers(130, 211)),
        pitch=int(rng.integers(25, 76)),
        pitch_range=int(rng.integers(30, 81)),
    )


def _is_near_duplicate(cfg: WorldConfig, seed: int, index: int) -> bool:
    near = cfg.near_duplicates
    return index > 0 and near > 0 and np.random.default_rng([seed, index, 3]).random() < near


def scene_of(cfg: WorldConfig, seed: int, index: int) -> Scene:
    """Item `index`'s scene: its own draw, or (data.world.near_duplicates) the previous item's scene with one thing
    changed, a confusable neighbour; a run of neighbours starts from the last item drawn afresh."""
    start = index
    while _is_near_duplicate(cfg, seed, start):
        start -= 1
    scene = sample_scene(np.random.default_rng([seed, start]), cfg.max_objects, cfg.textures)
    if cfg.video:
        scene = sample_motion(scene, np.random.default_rng([seed, start, 5]))
    for i in range(start + 1, index + 1):
        scene = near_duplicate(scene, np.random.default_rng([seed, i, 2]))
    return scene


def make_item(staging: Path, cfg: WorldConfig, seed: int, index: int) -> list[ManifestRow]:
    """Write one item's media under `staging` and return its rows (one per caption paraphrase)."""
    rng = np.random.default_rng([seed, index])
    motion_rng = np.random.default_rng([seed, index, 5])  # the motion and its phrasing: a stream of their own
    gid = item_id(index)
    scene = sample_scene(rng, cfg.max_objects, cfg.textures)
    if cfg.video:
        scene = sample_motion(scene, motion_rng)
    if _is_near_duplicate(cfg, seed, index):
        scene = scene_of(cfg, seed, index)
    phrasing = int(motion_rng.integers(len(MOTION_PHRASES["left"])))
    placements = place(scene, cfg.image_size, rng)

    image = render(scene, placements, cfg.image_size, cfg.noise, rng, cfg.clutter)
    # ambiguity draws from a stream of its own: a world without it is byte for byte the one before
    amb_rng = np.random.default_rng([seed, index, 4])
    severity = severities(cfg.ambiguity, amb_rng)
    image, image_levels = corrupt_image(image, severity["image"], cfg.ambiguity, amb_rng)
    image_path = f"image/{gid}.{cfg.image_format}"
    buf = io.BytesIO()
    image.save(buf, format="PNG" if cfg.image_format == "png" else "JPEG", quality=92)
    (staging / image_path).write_bytes(buf.getvalue())

    code_path = f"code/{gid}.py"
    clip = (cfg.video_frames, cfg.video_fps) if cfg.video else None
    (staging / code_path).write_text(program(scene, placements, cfg.image_size, rng, clip))

    captions = [caption(scene, LEVELS - 1, rng) for _ in range(cfg.captions_per_item)]
    dropped = dropped_attributes(scene, severity["text"], cfg.ambiguity, amb_rng)
    if dropped:
        captions = [vague_caption(scene, dropped, amb_rng) for _ in captions]
    contrasts = [temporal_contrasts(c, scene, LEVELS - 1, phrasing) for c in captions]
    captions = [with_motion(c, scene, LEVELS - 1, phrasing) for c in captions]
    hierarchy = [with_motion(caption(scene, level, rng), scene, level, phrasing) for level in range(LEVELS - 1)]
    hierarchy_concepts = [level_concepts(scene, level) for level in range(LEVELS - 1)]
    concepts = level_concepts(scene, LEVELS - 1)
    # a stream of its own, so that adding parts changed none of the other media of an item
    compound_parts = parts(scene, np.random.default_rng([seed, index, 1]))

    audio_path, audio_levels, samples = None, {}, None
    if cfg.audio:
        audio_path = f"audio/{gid}.flac"
        samples = speak(captions[0], random_voice(rng), cfg.audio_sample_rate)
        if severity["audio"] > 0:
            babble = None
            if cfg.ambiguity.babble > 0:  # another scene's caption said by another voice
                other = sample_scene(amb_rng, cfg.max_objects, cfg.textures)
                babble = speak(caption(other, LEVELS - 1, amb_rng), random_voice(amb_rng), cfg.audio_sample_rate)
            samples, audio_levels = corrupt_audio(samples, severity["audio"], cfg.ambiguity, amb_rng, babble)
        if not cfg.video_audio:
            sf.write(staging / audio_path, samples, cfg.audio_sample_rate, format="FLAC", subtype="PCM_16")

    video_path, video_levels = None, {}
    if cfg.video:
        video_path = f"video/{gid}.{cfg.video_format}"
        frames = render_clip(scene, placements, cfg.image_size, cfg.video_size, cfg.video_frames, cfg.noise,
                             np.random.default_rng([seed, index, 6]))
        severity["video"] = video_severity(severity, np.random.default_rng([seed, index, 7]))
        frames, video_levels = corrupt_clip(frames, severity["video"], cfg.ambiguity, [seed, index, 8])
        track = samples if cfg.video_audio else None
        (staging / video_path).write_bytes(encode_clip(frames, cfg.video_fps, cfg.video_format, track,
                                                       cfg.audio_sample_rate))
        if cfg.video_audio:  # the row's audio is the clip's own track, read through the audio path
            audio_path = video_path

    return [
        ManifestRow(
            sample_id=gid if cfg.captions_per_item == 1 else f"{gid}-{c}",
            group_id=gid,
            image=image_path,
            text=text,
            audio=audio_path,
            code=code_path,
            video=video_path,
            hierarchy=list(hierarchy),
            concepts=list(concepts),
            hierarchy_concepts=[list(c) for c in hierarchy_concepts],
            parts=list(compound_parts),
            compound_level=COMPOUND_LEVEL,
            ambiguity=record(severity, {"image": image_levels, "audio": audio_levels, "video": video_levels,
                                        "text": {"dropped": list(dropped)} if dropped else {}}),
            temporal_contrasts=list(contrasts[c]),
        )
        for c, text in enumerate(captions)
    ]


# eSpeak NG keeps state across utterances that no call resets (its pitch flutter runs on a process-wide clock), so
# an item's audio depends on what its process said before. Items are therefore made in fixed blocks, each in a fresh
# process: the bytes of item i depend on the seed and i alone, not on the number of workers or their scheduling.
BLOCK = 50


def _make_block(args: tuple[Path, WorldConfig, int, int, int]) -> list[list[ManifestRow]]:
    staging, cfg, seed, start, stop = args
    return [make_item(staging, cfg, seed, i) for i in range(start, stop)]


def world_rows(staging: Path, cfg: WorldConfig, seed: int) -> list[ManifestRow]:
    for sub in ("image", "code", "audio", *(("video",) if cfg.video else ())):
        (staging / sub).mkdir(parents=True, exist_ok=True)
    blocks = [(staging, cfg, seed, i, min(i + BLOCK, cfg.n_items)) for i in range(0, cfg.n_items, BLOCK)]
    rows: list[ManifestRow] = []
    # spawn, not fork: the parent may hold torch's threads, and fork with threads can deadlock
    context = multiprocessing.get_context("spawn")
    with (
        context.Pool(min(cfg.workers, len(blocks)), maxtasksperchild=1) as pool,
        tqdm(total=cfg.n_items, desc="world", unit="item", disable=None) as progress,
    ):
        for block in pool.imap(_make_block, blocks):
            for item_rows in block:
                rows.extend(item_rows)
            progress.update(len(block))
    log.info("world: %d items, %d rows", cfg.n_items, len(rows))
    return rows
