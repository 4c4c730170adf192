"""Rendering a scene to an image, and the placement that the image and the scene's drawing program share."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from multigeometry.data.world.scene import COLORS, Scene, SceneObject

_RADIUS = {"small": 0.1, "large": 0.18}  # fraction of the image side
_ANCHOR = {"left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73), "centre": (0.5, 0.5)}
_PAIR = {"left of": ((0.27, 0.5), (0.73, 0.5)), "above": ((0.5, 0.27), (0.5, 0.73))}
_PAIR["right of"] = (_PAIR["left of"][1], _PAIR["left of"][0])
_PAIR["below"] = (_PAIR["above"][1], _PAIR["above"][0])


@dataclass(frozen=True)
class Placement:
    obj: SceneObject
    x: int
    y: int
    radius: int
    angle: float  # degrees


def place(scene: Scene, size: int, rng: np.random.Generator) -> list[Placement]:
    """Pixel centres, radii and rotations with jitter; no two images are alike."""
    if scene.position is not None:
        anchors = [_ANCHOR[scene.position]]
    else:
        anchors = list(_PAIR[scene.relation or "left of"])
    placements = []
    for obj, (ax, ay) in zip(scene.objects, anchors, strict=True):
        radius = _RADIUS[obj.size] * size * float(rng.uniform(0.85, 1.15))
        jitter = 0.06 * size
        placements.append(
            Placement(
                obj=obj,
                x=round(ax * size + float(rng.uniform(-jitter, jitter))),
                y=round(ay * size + float(rng.uniform(-jitter, jitter))),
                radius=max(3, round(radius)),
                angle=round(float(rng.uniform(-20, 20)), 1),
            )
        )
    return placements


def polygon(shape: str, x: float, y: float, r: float, angle: float) -> list[tuple[float, float]] | None:
    """The outline of a polygonal shape; None for shapes drawn otherwise (circle)."""

    def ring(n: int, radius: float, offset: float) -> list[tuple[float, float]]:
        return [
            (
                x + radius * math.cos(math.radians(offset + angle + 360 * i / n)),
                y + radius * math.sin(math.radians(offset + angle + 360 * i / n)),
            )
            for i in range(n)
        ]

    if shape == "circle":
        return None
    if shape == "square":
        return ring(4, r * 1.2, 45)
    if shape == "diamond":
        return ring(4, r * 1.2, 0)
    if shape == "triangle":
        return ring(3, r * 1.25, -90)
    if shape == "pentagon":
        return ring(5, r * 1.1, -90)
    if shape == "hexagon":
        return ring(6, r * 1.1, 0)
    if shape == "star":
        outer, inner = ring(5, r * 1.3, -90), ring(5, r * 0.55, -54)
        return [p for pair in zip(outer, inner, strict=True) for p in pair]
    if shape == "cross":
        w = r * 0.4
        pts = [
            (-w, -r),
            (w, -r),
            (w, -w),
            (r, -w),
            (r, w),
            (w, w),
            (w, r),
            (-w, r),
            (-w, w),
            (-r, w),
            (-r, -w),
            (-w, -w),
        ]
        c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        return [(x + px * c - py * s, y + px * s + py * c) for px, py in pts]
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, placements: list[Placement], size: int, noise: float, rng: np.random.Generator) -> Image.Image:
    base = np.array([rng.uniform(185, 250) for _ in range(3)])
    tilt = rng.uniform(-30, 30, size=3)
    ramp = (
        np.linspace(-0.5, 0.5, size)[None, :, None]
        if rng.random() < 0.5
        else np.linspace(-0.5, 0.5, size)[:, None, None]
    )
    background = np.broadcast_to(base + ramp * tilt, (size, size, 3))
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for p in placements:
        rgb = tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in COLORS[p.obj.color])
        outline = polygon(p.obj.shape, p.x, p.y, p.radius, p.angle)
        if outline is None:
            draw.ellipse((p.x - p.radius, p.y - p.radius, p.x + p.radius, p.y + p.radius), fill=rgb)
        else:
            draw.polygon(outline, fill=rgb)
    pixels = np.asarray(image).astype(np.float32)
    if noise > 0:
        pixels += rng.normal(0.0, noise, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
