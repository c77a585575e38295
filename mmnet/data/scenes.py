"""Synthetic referring scenes: flat shapes on a plain background, and expressions that pick one out.

An image holds 3 to 6 shapes of a few colours, kinds and two sizes, apart from one another. A
shape is referred to only when one other shape shares its colour, a different one its kind, and
some other shape its size, so that no single word (colour, kind or size) finds it. Each
expression names at least two of colour, kind and size, and adds a position ("the leftmost ...")
or a relation to a landmark ("... left of the blue square") where the attributes alone would
still fit several shapes.

A generalized set (gRefCOCO's kind) also refers to groups and to nothing. `describe_groups` finds
the expressions that fit exactly two or three shapes and no other: a plural noun phrase ("the two
red squares", "both circles", "the big shapes"), or a plural noun phrase and a position where the
two or three shapes lie apart from the rest of the phrase's shapes ("the circles on the left").
`describe_absent` finds expressions that fit no shape and are near misses: every word names
something in the image, but not together ("the purple circle" beside purple shapes and circles).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product
from typing import Mapping, Optional

import numpy as np

from mmnet.data.masks import rasterize_polygons

COLOURS = {
    "red": (215, 45, 40),
    "green": (40, 160, 70),
    "blue": (40, 90, 215),
    "yellow": (240, 200, 35),
    "purple": (140, 65, 185),
}
KIND_WORDS = {"circle": ("circle", "disc"), "square": ("square", "box"), "triangle": ("triangle",), "diamond": ("diamond",)}
SIZE_WORDS = {"small": ("small", "little"), "big": ("big", "large")}
# Radius of a shape's bounding circle as a share of the image's shorter side; the ranges do not
# meet, so "big" and "small" are plain to see.
RADIUS_SHARE = {"small": (0.06, 0.085), "big": (0.13, 0.17)}
# Positions and relations hold only when centres differ by this share of the shorter side.
MARGIN_SHARE = 0.08
# (dimension, sign): the extreme a position word asks for, or the side of a relation's landmark.
POSITIONS = {"left": (0, -1), "right": (0, 1), "top": (1, -1), "bottom": (1, 1)}
POSITION_PHRASES = {
    "left": ("the {np} on the left", "the leftmost {np}"),
    "right": ("the {np} on the right", "the rightmost {np}"),
    "top": ("the {np} at the top", "the topmost {np}"),
    "bottom": ("the {np} at the bottom", "the lowest {np}"),
}
RELATION_PHRASES = {"left": "left of", "right": "right of", "top": "above", "bottom": "below"}
# The attribute sets a noun phrase may name: never one word alone unless a position or relation follows.
NOUN_PHRASES = (
    ("colour", "kind"),
    ("size", "colour", "kind"),
    ("size", "kind"),
    ("size", "colour"),
    ("colour",),
    ("kind",),
)
PLURAL_KIND_WORDS = {"circle": ("circles", "discs"), "square": ("squares", "boxes"), "triangle": ("triangles",), "diamond": ("diamonds",)}
# The attribute sets a plural noun phrase may name; none at all ("the shapes") only with a position.
GROUP_NOUN_PHRASES = NOUN_PHRASES + (("size",), ())
GROUP_PHRASES = {2: ("the {np}", "the two {np}", "both {np}"), 3: ("the {np}", "the three {np}", "all three {np}")}
GROUP_POSITION_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
COUNT_WORDS = {2: "two", 3: "three"}
# The attribute sets an expression for nothing names: never one word alone, which finds a shape
# whenever its value is in the image.
ABSENT_NOUN_PHRASES = (("colour", "kind"), ("size", "kind"), ("size", "colour"), ("size", "colour", "kind"))


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    size: str
    cx: float
    cy: float
    radius: float

    def centre(self, dimension: int) -> float:
        return self.cy if dimension else self.cx

    def polygon(self) -> list[float]:
        """Outline as a flat [x1, y1, x2, y2, ...] list, rounded to 0.01 px as written to instances.json."""
        if self.kind == "circle":
            angles = np.linspace(0, 2 * math.pi, 32, endpoint=False)
            points = [(math.cos(a), math.sin(a)) for a in angles]
        elif self.kind == "square":
            points = [(-0.75, -0.75), (0.75, -0.75), (0.75, 0.75), (-0.75, 0.75)]
        elif self.kind == "triangle":
            points = [(0.0, -1.0), (math.sqrt(3) / 2, 0.5), (-math.sqrt(3) / 2, 0.5)]
        else:
            points = [(0.0, -1.0), (0.8, 0.0), (0.0, 1.0), (-0.8, 0.0)]
        return [round(v, 2) for x, y in points for v in (self.cx + x * self.radius, self.cy + y * self.radius)]


def sample_scene(rng: np.random.Generator, *, width: int, height: int) -> list[Shape]:
    """3 to 6 shapes, apart from one another, among them a colour pair and a kind pair around one shape."""
    colours, kinds = list(COLOURS), list(KIND_WORDS)
    while True:
        colour, other_colour = rng.choice(colours, size=2, replace=False)
        kind, other_kind = rng.choice(kinds, size=2, replace=False)
        looks = [(colour, kind), (colour, other_kind), (other_colour, kind)]
        looks += [(rng.choice(colours), rng.choice(kinds)) for _ in range(rng.integers(0, 4))]
        shapes = _place(rng, looks, width=width, height=height)
        if shapes is not None:
            return shapes


def _place(rng: np.random.Generator, looks: list, *, width: int, height: int) -> Optional[list[Shape]]:
    short = min(width, height)
    gap = 0.02 * short
    shapes: list[Shape] = []
    for colour, kind in looks:
        size = str(rng.choice(list(RADIUS_SHARE)))
        radius = rng.uniform(*RADIUS_SHARE[size]) * short
        for _ in range(100):
            cx = rng.uniform(radius + gap, width - radius - gap)
            cy = rng.uniform(radius + gap, height - radius - gap)
            if all(math.hypot(cx - s.cx, cy - s.cy) > radius + s.radius + gap for s in shapes):
                shapes.append(Shape(str(kind), str(colour), size, float(cx), float(cy), float(radius)))
                break
        else:
            return None
    return shapes


def is_referable(target: Shape, shapes: list[Shape]) -> bool:
    """No single word finds the target: one other shape shares its colour and a different one its
    kind (a twin of the same colour and kind is not both), and another shape shares its size."""
    others = [s for s in shapes if s is not target]
    same_colour = [s for s in others if s.colour == target.colour]
    same_kind = [s for s in others if s.kind == target.kind]
    distractors = any(a is not b for a in same_colour for b in same_kind)
    return distractors and any(s.size == target.size for s in others)


def describe(target: Shape, shapes: list[Shape], rng: np.random.Generator, *, short_side: int) -> dict[str, list[str]]:
    """Every expression that fits the target and no other shape, by what finds it: attributes, position, relation."""
    margin = MARGIN_SHARE * short_side
    found: dict[str, list[str]] = {"attributes": [], "position": [], "relation": []}
    for attributes in NOUN_PHRASES:
        fitting = [s for s in shapes if all(getattr(s, a) == getattr(target, a) for a in attributes)]
        others = [s for s in fitting if s is not target]
        np_words = _noun_phrase(target, attributes, rng)
        if not others:
            if len(attributes) > 1:
                found["attributes"].append(str(rng.choice(["the {np}", "{np}"])).format(np=np_words))
            continue
        for position, direction in POSITIONS.items():
            if all(_beyond(target, s, direction) > margin for s in others):
                found["position"].append(str(rng.choice(POSITION_PHRASES[position])).format(np=np_words))
        for landmark in shapes:
            if landmark is target or sum(s.colour == landmark.colour and s.kind == landmark.kind for s in shapes) > 1:
                continue
            for position, direction in POSITIONS.items():
                if _beyond(target, landmark, direction) > margin and all(
                    _beyond(s, landmark, direction) < -margin for s in others if s is not landmark
                ):
                    landmark_words = _noun_phrase(landmark, ("colour", "kind"), rng)
                    found["relation"].append(f"the {np_words} {RELATION_PHRASES[position]} the {landmark_words}")
    return found


def describe_groups(shapes: list[Shape], rng: np.random.Generator, *, short_side: int) -> dict[tuple[int, ...], list[str]]:
    """Every expression that fits exactly two or three shapes and no other, by those shapes' indices.

    For each attribute set of GROUP_NOUN_PHRASES and each set of values it takes in the image, the
    shapes with those values form a group: named by a plural noun phrase when it holds two or three
    shapes ("the red squares", "both circles", "the three big shapes"), and, when it holds three or
    more, with a position for the two or three of them that lie at one side ("the circles on the
    left"): the group's shapes in order from that side up to the first gap of more than MARGIN_SHARE
    of the short side between the centres of neighbours, so that each of them lies beyond all the
    group's other shapes by the margin and no narrower cluster at that side could be meant instead.
    """
    margin = MARGIN_SHARE * short_side
    found: dict[tuple[int, ...], list[str]] = {}
    for attributes in GROUP_NOUN_PHRASES:
        seen: set[tuple[str, ...]] = set()
        for shape in shapes:
            values = tuple(getattr(shape, a) for a in attributes)
            if values in seen:
                continue
            seen.add(values)
            group = [k for k, s in enumerate(shapes) if all(getattr(s, a) == getattr(shape, a) for a in attributes)]
            if attributes and len(group) in COUNT_WORDS:
                text = str(rng.choice(GROUP_PHRASES[len(group)])).format(np=_noun_phrase(shape, attributes, rng, plural=True))
                found.setdefault(tuple(group), []).append(text)
            if len(group) < 3:
                continue
            for position, direction in POSITIONS.items():
                side = _side_cluster([shapes[k] for k in group], direction, margin)
                if len(side) in COUNT_WORDS and len(side) < len(group):
                    count = str(rng.choice(["", COUNT_WORDS[len(side)] + " "]))
                    text = f"the {count}{_noun_phrase(shape, attributes, rng, plural=True)} {GROUP_POSITION_PHRASES[position]}"
                    found.setdefault(tuple(sorted(group[j] for j in side)), []).append(text)
    return found


def _side_cluster(group: list[Shape], direction: tuple[int, int], margin: float) -> list[int]:
    """Indices into the group of its shapes at one side: from the furthest that way, up to the
    first gap of more than the margin between neighbouring centres; all of them when there is none."""
    dimension, sign = direction
    order = sorted(range(len(group)), key=lambda j: -sign * group[j].centre(dimension))
    for n in range(1, len(order)):
        if _beyond(group[order[n - 1]], group[order[n]], direction) > margin:
            return order[:n]
    return order


def describe_absent(shapes: list[Shape], rng: np.random.Generator) -> dict[str, list[str]]:
    """Expressions that fit no shape, by their form, as ``describe`` sorts those that fit one:
    attributes alone, with a position, or with a relation to a landmark.

    Each names two or three attributes of ABSENT_NOUN_PHRASES, each value present in the image on
    some shape but no shape with them all ("the purple circle" beside a purple square and a red
    circle); one that names three also has some shape with two of them ("the small red square"
    beside a big red square). The same near miss comes in every form ("the purple circle on the
    left", "the purple circle above the red square"), so that the form of an expression never says
    whether anything fits it: only the picture does.
    """
    found: dict[str, list[str]] = {"attributes": [], "position": [], "relation": []}
    # Landmarks as describe() takes them: shapes that colour and kind name alone.
    landmarks = [s for s in shapes if sum(o.colour == s.colour and o.kind == s.kind for o in shapes) == 1]
    for attributes in ABSENT_NOUN_PHRASES:
        present = [sorted({getattr(s, a) for s in shapes}) for a in attributes]
        for values in product(*present):
            wanted = dict(zip(attributes, values))
            fitting = [sum(getattr(s, a) == v for a, v in wanted.items()) for s in shapes]
            if max(fitting) == len(attributes) or (len(attributes) == 3 and max(fitting) < 2):
                continue
            np_words = _phrase(wanted, rng)
            found["attributes"].append(str(rng.choice(["the {np}", "{np}"])).format(np=np_words))
            position = str(rng.choice(list(POSITION_PHRASES)))
            found["position"].append(str(rng.choice(POSITION_PHRASES[position])).format(np=np_words))
            if landmarks:
                landmark = landmarks[int(rng.integers(len(landmarks)))]
                relation = RELATION_PHRASES[str(rng.choice(list(RELATION_PHRASES)))]
                found["relation"].append(f"the {np_words} {relation} the {_noun_phrase(landmark, ('colour', 'kind'), rng)}")
    return found


def _beyond(shape: Shape, reference: Shape, direction: tuple[int, int]) -> float:
    """How far the shape's centre lies past the reference's in a direction (dimension, sign) of POSITIONS."""
    dimension, sign = direction
    return sign * (shape.centre(dimension) - reference.centre(dimension))


def choose_expressions(described: Mapping[object, list[str]], rng: np.random.Generator, *, most: int = 3) -> list[str]:
    """Up to ``most`` different expressions, drawing from the kinds of description in turn so that none dominates."""
    pools = [list(rng.permutation(texts)) for texts in described.values() if texts]
    pools = [pools[i] for i in rng.permutation(len(pools))]
    chosen: list[str] = []
    while len(chosen) < most and any(pools):
        for pool in pools:
            if pool and len(chosen) < most and (text := str(pool.pop())) not in chosen:
                chosen.append(text)
    return chosen


def _noun_phrase(shape: Shape, attributes: tuple[str, ...], rng: np.random.Generator, *, plural: bool = False) -> str:
    return _phrase({a: getattr(shape, a) for a in attributes}, rng, plural=plural)


def _phrase(values: dict[str, str], rng: np.random.Generator, *, plural: bool = False) -> str:
    """The words for attribute values ({"size": "big", "kind": "circle"} -> "big circle"), in the
    order size, colour, kind; "shape" stands in for a kind not named."""
    words = []
    if "size" in values:
        words.append(str(rng.choice(SIZE_WORDS[values["size"]])))
    if "colour" in values:
        words.append(values["colour"])
    if "kind" in values:
        words.append(str(rng.choice((PLURAL_KIND_WORDS if plural else KIND_WORDS)[values["kind"]])))
    else:
        words.append("shapes" if plural else "shape")
    return " ".join(words)


def render(shapes: list[Shape], rng: np.random.Generator, *, width: int, height: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Paints the shapes flat on a plain grey background.

    Returns the image, uint8 height x width x 3, and each shape's mask, uint8 height x width,
    rasterised from its polygon exactly as the reader decodes it.
    """
    image = np.full((height, width, 3), rng.integers(200, 246), dtype=np.uint8)
    masks = []
    for shape in shapes:
        mask = rasterize_polygons([shape.polygon()], height=height, width=width)
        colour = np.clip(np.array(COLOURS[shape.colour]) + rng.integers(-12, 13, size=3), 0, 255)
        image[mask.astype(bool)] = colour
        masks.append(mask)
    return image, masks
