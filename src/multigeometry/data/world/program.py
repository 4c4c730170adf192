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


def program(scene: Scene, placements: list[Placement], size: int, rng: np.random.Generator) -> str:
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
    lines.append(f"{name}.save({_pick(rng, ('out.png', 'scene.png', 'picture.png'))!r})")
    return "\n".join(lines) + "\n"
