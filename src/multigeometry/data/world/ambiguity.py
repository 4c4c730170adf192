"""Ambiguity injected into the world (data.world.ambiguity), with the ground truth the uncertainty metrics need.

An item not left clean gets a severity in (0, 1] per modality, drawn independently; the severity scales every
corruption of that modality up to its configured limit:
- image: a grey box over `occlusion` x severity of the area, extra Gaussian noise, a Gaussian blur, and a shrink by
  up to `downscale` and back (detail lost);
- audio: noise at a signal-to-noise ratio falling from 40 dB to `snr_db`, `babble` of it another utterance of the
  world, and the end of the clip cut (`truncation`);
- text: round(severity x `vagueness`) of size, colour, texture and place dropped from the caption, which then fits
  several scenes;
- video (`video_severity`, a stream of its own so the other modalities' draws stay as they were): the image's
  corruptions at its own severity, the same on every frame (a grey box, noise, blur and loss of detail that stay put
  while things move).
`record` is what the manifest's `ambiguity` column holds (JSON): per modality the severity and the levels applied.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from multigeometry.config import AmbiguityConfig
from multigeometry.data.world.scene import VAGUE_ATTRIBUTES, Scene

MODALITIES = ("image", "audio", "text")
CLEAN_SNR_DB = 40.0


def severities(cfg: AmbiguityConfig, rng: np.random.Generator) -> dict[str, float]:
    """0 for every modality of a clean item, else an independent severity in (0, 1] per modality."""
    if rng.random() < cfg.clean_fraction:
        return dict.fromkeys(MODALITIES, 0.0)
    return {m: float(1.0 - rng.random()) for m in MODALITIES}


def corrupt_image(image: Image.Image, severity: float, cfg: AmbiguityConfig,
                  rng: np.random.Generator) -> tuple[Image.Image, dict[str, float]]:
    if severity <= 0:
        return image, {}
    w, h = image.size
    levels = {"occlusion": severity * cfg.occlusion, "noise": severity * cfg.image_noise,
              "blur": severity * cfg.blur, "downscale": 1.0 + severity * (cfg.downscale - 1.0)}
    out = image.copy()
    if levels["occlusion"] > 0:
        side_w = max(1, round(w * np.sqrt(levels["occlusion"]) * float(rng.uniform(0.7, 1.3))))
        side_h = max(1, min(h, round(levels["occlusion"] * w * h / side_w)))
        side_w = min(side_w, w)
        x0, y0 = int(rng.integers(0, w - side_w + 1)), int(rng.integers(0, h - side_h + 1))
        ImageDraw.Draw(out).rectangle((x0, y0, x0 + side_w - 1, y0 + side_h - 1), fill=(128, 128, 128))
    if levels["downscale"] > 1.0:
        small = (max(1, round(w / levels["downscale"])), max(1, round(h / levels["downscale"])))
        out = out.resize(small, Image.Resampling.BILINEAR).resize((w, h), Image.Resampling.BILINEAR)
    if levels["blur"] > 0:
        out = out.filter(ImageFilter.GaussianBlur(levels["blur"]))
    if levels["noise"] > 0:
        pixels = np.asarray(out).astype(np.float32) + rng.normal(0.0, levels["noise"], size=(h, w, 3))
        out = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return out, {k: round(v, 6) for k, v in levels.items()}


def video_severity(severity: dict[str, float], rng: np.random.Generator) -> float:
    """The clip's severity: 0 for a clean item (every other modality 0), else its own draw in (0, 1]."""
    if not any(severity.values()):
        return 0.0
    return float(1.0 - rng.random())


def corrupt_clip(frames: np.ndarray, severity: float, cfg: AmbiguityConfig,
                 seed: list[int]) -> tuple[np.ndarray, dict[str, float]]:
    """Every frame corrupted as `corrupt_image` does at `severity`, with the same draws (`seed` restarts the stream
    for each frame): the occlusion, noise and blur stay put over the clip."""
    if severity <= 0:
        return frames, {}
    out, levels = [], {}
    for pixels in frames:
        image, levels = corrupt_image(Image.fromarray(pixels), severity, cfg, np.random.default_rng(seed))
        out.append(np.asarray(image))
    return np.stack(out), levels


def corrupt_audio(wave: np.ndarray, severity: float, cfg: AmbiguityConfig, rng: np.random.Generator,
                  babble: np.ndarray | None) -> tuple[np.ndarray, dict[str, float]]:
    if severity <= 0 or wave.size == 0:
        return wave, {}
    keep = max(1, round(len(wave) * (1.0 - severity * cfg.truncation)))
    out = wave[:keep].astype(np.float32)
    snr_db = CLEAN_SNR_DB + severity * (cfg.snr_db - CLEAN_SNR_DB)
    power = float(np.mean(out**2)) or 1e-8
    white = rng.normal(0.0, 1.0, size=out.shape).astype(np.float32)
    other = np.zeros_like(out)
    if babble is not None and babble.size:
        other = np.resize(babble.astype(np.float32), out.shape)
    noise = (1.0 - cfg.babble) * white / (np.sqrt(np.mean(white**2)) or 1.0)
    if cfg.babble > 0 and np.any(other):
        noise = noise + cfg.babble * other / (np.sqrt(np.mean(other**2)) or 1.0)
    noise_power = float(np.mean(noise**2)) or 1e-8
    out = out + noise * np.sqrt(power / noise_power / 10 ** (snr_db / 10))
    peak = float(np.max(np.abs(out)))
    if peak > 0.99:
        out = out * (0.99 / peak)
    return out.astype(np.float32), {"snr_db": round(snr_db, 3), "truncation": round(1 - keep / len(wave), 6),
                                    "babble": cfg.babble}


def dropped_attributes(scene: Scene, severity: float, cfg: AmbiguityConfig,
                       rng: np.random.Generator) -> tuple[str, ...]:
    """Which of size, colour, texture and place a caption of this severity leaves out."""
    available = [a for a in VAGUE_ATTRIBUTES if a != "texture" or any(o.texture for o in scene.objects)]
    count = min(len(available), round(severity * cfg.vagueness))
    if count <= 0:
        return ()
    picked = rng.choice(len(available), size=count, replace=False)
    return tuple(available[int(i)] for i in sorted(picked))


def record(sev: dict[str, float], levels: dict[str, dict[str, Any]]) -> str:
    """The manifest's `ambiguity` cell: {"image": {"severity": s, ...levels}, "audio": ..., "text": ...}, and
    "video" where the item has a clip."""
    kept = (*MODALITIES, *(("video",) if "video" in sev else ()))
    return json.dumps({m: {"severity": round(sev[m], 6), **levels.get(m, {})} for m in kept}, sort_keys=True)
