"""The world's code modality: a short Python program that draws the scene with a tiny drawing API.

Names, statement order, argument style and comments vary per item; what is drawn does not.
"""

from __future__ import annotations

import numpy as np

from multigeometry.data.world.render import Placement
from multigeometry.data.world.scene import Scene

_CANVAS_NAMES = ("canvas", "c", "img", "board", "scene", "pic")
_METHOD = {
    "circle": "circle",
    "square": "square",
    "triangle": "triangle",
    "star": "star",
    "hexagon": "hexagon",
    "diamond": "diamond",
    "cross": "cross",
    "pentagon": "pentagon",
}


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


_MOTION_CALLS = {
    "left": "move(dx=-{d})", "right": "move(dx={d})", "up": "move(dy=-{d})", "down": "move(dy={d})",
    "grows": "scale(1.35, start=0.65)", "shrinks": "scale(0.65, start=1.35)", "spins": "rotate(45)", "still": "hold()",
}


def program(scene: Scene, placements: list[Placement], size: int, rng: np.random.Generator,
            clip: tuple[int, int] | None = None) -> str:
    """The program that draws the scene; with `clip` (frames, fps) and a scene with a motion, it animates it too."""
    name = _pick(rng, _CANVAS_NAMES)
    keyword = rng.random() < 0.6
    comments = rng.random() < 0.5
    lines = []
    if rng.random() < 0.5:
        lines.append("from shapes import Canvas")
        lines.append("")
    if comments:
        lines.append(_pick(rng, ("# draw the scene", "# build the picture", "# a small drawing")))
    lines.append(f"{name} = Canvas({size}, {size})")
    order = list(range(len(placements)))
    if rng.random() < 0.5:
        order.reverse()
    for i in order:
        p = placements[i]
        if comments:
            lines.append(f"# {p.obj.size} {p.obj.texture + ' ' if p.obj.texture else ''}{p.obj.color} {p.obj.shape}")
        if keyword:
            args = f"x={p.x}, y={p.y}, r={p.radius}, color={p.obj.color!r}"
            if p.angle:
                args += f", angle={p.angle}"
        else:
            args = f"{p.x}, {p.y}, {p.radius}, {p.obj.color!r}"
        if p.obj.texture:
            args += f", texture={p.obj.texture!r}"
        lines.append(f"{name}.{_METHOD[p.obj.shape]}({args})")
    out = _pick(rng, ("out.png", "scene.png", "picture.png"))
    if clip is not None and scene.motion is not None:
        frames, fps = clip
        call = _MOTION_CALLS[scene.motion].format(d=round(0.25 * size))
        lines.append(f"{name}.animate(frames={frames}, fps={fps}).{call}")
        out = out.replace(".png", ".mp4")
    lines.append(f"{name}.save({out!r})")
    return "\n".join(lines) + "\n"
