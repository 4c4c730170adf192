"""The world's scenes: objects with a shape, colour, size and position, their captions at four levels of generality,
and the concept sets that make "A is more general than B" (`concepts(A) ⊆ concepts(B)`) and composition derivable
from the manifest alone.

Concept atoms are bound to one object: `obj(color=red,shape=circle)` means "some object is a red circle", so a caption
about a red circle is not contained in a scene of a red square beside a blue circle. Every caption's concept set is
downward closed (it holds every sub-description of each object it names), so containment is plain set inclusion.

With video (`data.world.video`), a scene also has a motion, shared by its objects (`MOTIONS`: moving left, right, up
or down, growing, shrinking, spinning, or staying still). It joins every level: "a moving shape" ⊃ "a circle moving
left" ⊃ "a red circle moving left" ⊃ "a small red circle on the left, moving left", with the atoms `motion(moving)`
(or `motion(still)`) from level 0 and `motion(left)` from level 1, so the sets stay nested.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "pentagon")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 90, 200),
    "yellow": (240, 200, 20),
    "orange": (255, 127, 14),
    "purple": (128, 50, 170),
    "pink": (240, 120, 190),
    "brown": (140, 86, 55),
    "black": (20, 20, 20),
}
SIZES = ("small", "large")
TEXTURES = ("plain", "striped", "dotted", "checked")  # data.world.textures: a fourth attribute, named at the last level
POSITIONS = ("left", "right", "top", "bottom", "centre")
RELATIONS = ("left of", "right of", "above", "below")
_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_POSITION_PHRASES = {
    "left": ("on the left", "at the left", "in the left half"),
    "right": ("on the right", "at the right", "in the right half"),
    "top": ("at the top", "near the top", "in the upper part"),
    "bottom": ("at the bottom", "near the bottom", "in the lower part"),
    "centre": ("in the centre", "in the middle", "at the centre"),
}
LEVELS = 4  # 0: "a shape" ... 3: the full scene
MOTIONS = ("left", "right", "up", "down", "grows", "shrinks", "spins", "still")
OPPOSITE_MOTION = {"left": "right", "right": "left", "up": "down", "down": "up", "grows": "shrinks", "shrinks": "grows"}
# parallel phrases: an opposite motion's phrase at the same index says the opposite (the temporal contrasts)
MOTION_PHRASES = {
    "left": ("moving left", "sliding to the left", "drifting left"),
    "right": ("moving right", "sliding to the right", "drifting right"),
    "up": ("moving up", "rising", "drifting upwards"),
    "down": ("moving down", "sinking", "drifting downwards"),
    "grows": ("growing", "getting bigger", "expanding"),
    "shrinks": ("shrinking", "getting smaller", "contracting"),
    "spins": ("spinning", "turning round", "rotating"),
    "still": ("staying still", "not moving", "standing still"),
}
_MOTION_LEVEL0 = {
    (False, True): ("a moving shape", "a shape in motion", "a moving object"),
    (True, True): ("two moving shapes", "two shapes in motion", "a pair of moving shapes"),
    (False, False): ("a still shape", "a motionless shape", "a shape that does not move"),
    (True, False): ("two still shapes", "two motionless shapes", "a pair of still shapes"),
}


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    size: str
    texture: str = ""  # "": the world has no textures (data.world.textures: false)

    def attributes(self) -> dict[str, str]:
        found = {"shape": self.shape, "color": self.color, "size": self.size}
        return found | ({"texture": self.texture} if self.texture else {})


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    position: str | None = None  # single object: where it is
    relation: str | None = None  # two objects: objects[0] <relation> objects[1]
    motion: str | None = None  # with video: how its objects move (MOTIONS); None: a still world without clips


def sample_motion(scene: Scene, rng: np.random.Generator) -> Scene:
    """`scene` with a motion: any of MOTIONS, but not spinning when every object is a circle (it would not show)."""
    options = MOTIONS if any(o.shape != "circle" for o in scene.objects) else tuple(m for m in MOTIONS if m != "spins")
    return dataclasses.replace(scene, motion=options[int(rng.integers(len(options)))])


def sample_scene(rng: np.random.Generator, max_objects: int, textures: bool = False) -> Scene:
    n = int(rng.integers(1, max_objects + 1))
    objects = tuple(
        SceneObject(
            shape=SHAPES[int(rng.integers(len(SHAPES)))],
            color=list(COLORS)[int(rng.integers(len(COLORS)))],
            size=SIZES[int(rng.integers(len(SIZES)))],
            texture=TEXTURES[int(rng.integers(len(TEXTURES)))] if textures else "",
        )
        for _ in range(n)
    )
    return _settle(objects, rng)


def _settle(objects: tuple[SceneObject, ...], rng: np.random.Generator) -> Scene:
    """The scene of `objects`: a position for one, a relation for two (never two identical objects)."""
    n = len(objects)
    if n == 1:
        return Scene(objects, position=POSITIONS[int(rng.integers(len(POSITIONS)))])
    if objects[0] == objects[1]:  # two identical objects cannot be told apart by a relation
        other = [c for c in COLORS if c != objects[0].color]
        objects = (objects[0], SceneObject(objects[1].shape, other[int(rng.integers(len(other)))], objects[1].size))
    return Scene(objects, relation=RELATIONS[int(rng.integers(len(RELATIONS)))])


def near_duplicate(scene: Scene, rng: np.random.Generator) -> Scene:
    """`scene` with exactly one thing changed: one object's colour, shape, size or texture, or the position or
    relation: a confusable neighbour whose captions differ in one word or phrase."""
    i = int(rng.integers(len(scene.objects)))
    obj = scene.objects[i]
    choices = {"color": tuple(COLORS), "shape": SHAPES, "size": SIZES} | ({"texture": TEXTURES} if obj.texture else {})
    where = "position" if scene.position is not None else "relation"
    keys = (*choices, where, *(("motion",) if scene.motion is not None else ()))
    key = keys[int(rng.integers(len(keys)))]
    if key == "position":
        return Scene(scene.objects, position=_other(POSITIONS, scene.position, rng), motion=scene.motion)
    if key == "relation":
        return Scene(scene.objects, relation=_other(RELATIONS, scene.relation, rng), motion=scene.motion)
    if key == "motion":  # the same objects moving otherwise: a neighbour only time tells apart
        return sample_motion_other(scene, rng)
    changed = SceneObject(**(obj.attributes() | {key: _other(choices[key], getattr(obj, key), rng)}))
    objects = tuple(changed if j == i else o for j, o in enumerate(scene.objects))
    if len(objects) == 2 and objects[0] == objects[1]:
        return Scene(scene.objects, relation=_other(RELATIONS, scene.relation, rng), motion=scene.motion)
    return Scene(objects, position=scene.position, relation=scene.relation, motion=scene.motion)


def sample_motion_other(scene: Scene, rng: np.random.Generator) -> Scene:
    """`scene` with another motion: the opposite one where there is one, else any other that shows."""
    current = scene.motion or "still"
    if current in OPPOSITE_MOTION:
        return dataclasses.replace(scene, motion=OPPOSITE_MOTION[current])
    options = tuple(m for m in MOTIONS if m != current
                    and (m != "spins" or any(o.shape != "circle" for o in scene.objects)))
    return dataclasses.replace(scene, motion=options[int(rng.integers(len(options)))])


def _other(options: tuple[str, ...], current: str | None, rng: np.random.Generator) -> str:
    rest = [o for o in options if o != current]
    return rest[int(rng.integers(len(rest)))]


# ---------------------------------------------------------------------------------------------------------------------
# concepts
# ---------------------------------------------------------------------------------------------------------------------


def atom(**attributes: str) -> str:
    return "obj(" + ",".join(f"{k}={v}" for k, v in sorted(attributes.items())) + ")"


def closure(attributes: dict[str, str]) -> set[str]:
    """Every sub-description of one object, the empty one ("a shape") included."""
    keys = sorted(attributes)
    return {
        atom(**{k: attributes[k] for k in subset})
        for r in range(len(keys) + 1)
        for subset in itertools.combinations(keys, r)
    }


_LEVEL_KEYS = ((), ("shape",), ("color", "shape"), ("color", "shape", "size"))


def _level_keys(obj: SceneObject, level: int) -> tuple[str, ...]:
    """The attributes named at `level`; the last level names them all (a texture too, where the world has them)."""
    return tuple(sorted(obj.attributes())) if level == LEVELS - 1 else _LEVEL_KEYS[level]


def level_concepts(scene: Scene, level: int) -> list[str]:
    """The concept set of the scene's caption at `level` (0 = most general)."""
    concepts: set[str] = set()
    for obj in scene.objects:
        concepts |= closure({k: obj.attributes()[k] for k in _level_keys(obj, level)})
    if len(scene.objects) == 2:
        concepts.add("count=2")
    if scene.motion is not None:
        concepts.add(f"motion({'still' if scene.motion == 'still' else 'moving'})")
        if level > 0:
            concepts.add(f"motion({scene.motion})")
    if level == LEVELS - 1:
        full = [atom(**o.attributes()) for o in scene.objects]
        if scene.position is not None:
            concepts.add(f"at({full[0]},{scene.position})")
        else:
            concepts.add(_relation_atom(scene.relation or "", full[0], full[1]))
    return sorted(concepts)


def _relation_atom(relation: str, a: str, b: str) -> str:
    # "B right of A" says the same as "A left of B": keep one canonical form
    if relation in ("right of", "below"):
        relation, a, b = _INVERSE[relation], b, a
    return f"rel({relation.replace(' ', '_')},{a},{b})"


# ---------------------------------------------------------------------------------------------------------------------
# captions
# ---------------------------------------------------------------------------------------------------------------------


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _noun_phrase(obj: SceneObject, keys: tuple[str, ...], rng: np.random.Generator) -> str:
    if keys == ("shape",):
        return _a(obj.shape)
    if keys == ("color", "shape"):
        return _choose(rng, (_a(f"{obj.color} {obj.shape}"), f"{_a(obj.shape)} that is {obj.color}"))
    if obj.texture:
        return _choose(rng, (_a(f"{obj.size} {obj.texture} {obj.color} {obj.shape}"),
                             f"{_a(f'{obj.size} {obj.texture} {obj.shape}')} coloured {obj.color}"))
    return _choose(
        rng, (_a(f"{obj.size} {obj.color} {obj.shape}"), f"{_a(f'{obj.size} {obj.shape}')} coloured {obj.color}")
    )


def _choose(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


COMPOUND_LEVEL = 2  # "a red circle", "a red circle and a blue square": the description the parts compose


def parts(scene: Scene, rng: np.random.Generator) -> list[str]:
    """Phrases whose composition is the scene's description at COMPOUND_LEVEL: an attribute and a noun for one object
    ("red", "a circle" -> "a red circle"), the objects' phrases for two ("a red circle", "a blue square" -> "a red
    circle and a blue square"), and with video the motion ("moving left"). Order carries no meaning, so the composer
    sees a set."""
    if len(scene.objects) == 1:
        obj = scene.objects[0]
        colour = _choose(rng, (obj.color, f"something {obj.color}", f"{obj.color} coloured"))
        shape = _choose(rng, (_a(obj.shape), obj.shape, f"{_a(obj.shape)} shape"))
        found = [colour, shape]
    else:
        found = [_noun_phrase(o, ("color", "shape"), rng) for o in scene.objects]
    if scene.motion is not None:  # the motion is a part of its own ("moving left")
        found.append(_choose(rng, MOTION_PHRASES[scene.motion]))
    return found


def with_motion(text: str, scene: Scene, level: int, choice: int) -> str:
    """A caption of `scene` at `level` without its motion, made to say it; `choice` picks the phrasing (the same
    choice for the opposite motion says the opposite). Level 0 has its own phrasings ("a moving shape")."""
    if scene.motion is None:
        return text
    two = len(scene.objects) == 2
    if level == 0:
        options = _MOTION_LEVEL0[(two, scene.motion != "still")]
        return options[choice % len(options)]
    phrases = MOTION_PHRASES[scene.motion]
    phrase = phrases[choice % len(phrases)]
    if two:
        return f"{text}, both {phrase}"
    return f"{text} {phrase}" if level < LEVELS - 1 else f"{text}, {phrase}"


def temporal_contrasts(text: str, scene: Scene, level: int, choice: int) -> list[str]:
    """What a caption with motion would say of the clip played backwards: the opposite motion, phrased alike ([]
    for motions that have none: spinning, staying still)."""
    if scene.motion not in OPPOSITE_MOTION:
        return []
    return [with_motion(text, dataclasses.replace(scene, motion=OPPOSITE_MOTION[scene.motion]), level, choice)]


def caption(scene: Scene, level: int, rng: np.random.Generator) -> str:
    """One paraphrase of the scene's caption at `level`, without its motion (`with_motion` adds it); `rng` picks the
    template."""
    two = len(scene.objects) == 2
    if level == 0:
        if two:
            return _choose(rng, ("two shapes", "two objects", "a pair of shapes", "a picture of two shapes"))
        return _choose(rng, ("a shape", "an object", "a picture of a shape", "a single shape"))
    phrases = [_noun_phrase(o, _LEVEL_KEYS[level], rng) for o in scene.objects]
    if level < LEVELS - 1:
        if two:
            first, second = phrases if rng.random() < 0.5 else phrases[::-1]
            return _choose(rng, (f"{first} and {second}", f"a picture of {first} and {second}"))
        return _choose(rng, (phrases[0], f"a picture of {phrases[0]}", f"an image showing {phrases[0]}"))
    if two:
        relation = scene.relation or ""
        if rng.random() < 0.5:
            return f"{phrases[0]} {relation} {phrases[1]}"
        return f"{phrases[1]} {_INVERSE[relation]} {phrases[0]}"
    where = _choose(rng, _POSITION_PHRASES[scene.position or "centre"])
    return _choose(rng, (f"{phrases[0]} {where}", f"{where}, {phrases[0]}"))


VAGUE_ATTRIBUTES = ("size", "color", "texture", "place")  # what a vague caption may leave out (the shape stays)


def vague_caption(scene: Scene, dropped: tuple[str, ...], rng: np.random.Generator) -> str:
    """The most specific caption without the `dropped` attributes (data.world.ambiguity.vagueness): "a circle left of
    a blue square" can describe several scenes."""
    def phrase(obj: SceneObject) -> str:
        words = [getattr(obj, k) for k in ("size", "texture", "color") if k not in dropped and getattr(obj, k)]
        return _a(" ".join([*words, obj.shape]))

    phrases = [phrase(o) for o in scene.objects]
    if len(phrases) == 2:
        if "place" in dropped:
            return f"{phrases[0]} and {phrases[1]}"
        relation = scene.relation or ""
        return f"{phrases[0]} {relation} {phrases[1]}"
    if "place" in dropped:
        return phrases[0]
    return f"{phrases[0]} {_choose(rng, _POSITION_PHRASES[scene.position or 'centre'])}"
