"""Synthetic: procedurally drawn scenes of coloured shapes with exact, compositional captions (grammar v1).

A stream whose difficulty grows with the stage, so that binding attributes to objects takes capacity:

    stage 1  one object, colour + shape                       "a red circle"
    stage 2  + size and position, one or two objects          "a small red circle on the left and a large
                                                               blue square at the top"
    stage 3  + fills (striped, outlined), relations, counts   "a small striped red circle left of a large blue
                                                               square", "three small outlined green stars and
                                                               a large pink heart"

Sample i of (split, stage, seed) is a pure function of those four values (and GRAMMAR_VERSION): its RNG is
`random.Random("synthetic:v1:{split}:{stage}:{seed}:{i}")` (string seeds are hashed with SHA-512, so no
PYTHONHASHSEED dependence). The RNG first draws the scene's composition (what the caption states), then the
caption's wording, then the layout and drawing (jitter, rotation, exact colours, background), so `captions`
gives the captions `samples` writes without drawing anything.

The held-out split is disjoint from training by composition: a scene's canonical caption (fixed wording and
order, `canonical`) is held out iff its blake2b hash modulo 100 is below HELDOUT_PERCENT (`split_of`); each
split draws compositions until one of its own comes up (and from its own seed space, as the split is part of
the RNG seed). The rule ignores stage and seed, so no held-out caption of any stage or seed is a training
caption of any stage or seed.
"""
from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from . import Sample

GRAMMAR_VERSION = 1
STAGES = (1, 2, 3)
SPLITS = ("train", "heldout")
IMAGE_SIZES = (28, 32, 64)
DEFAULT_IMAGE_SIZE = 32
DEFAULT_SAMPLES = {"train": {1: 20_000, 2: 40_000, 3: 80_000}, "heldout": {1: 1_000, 2: 2_000, 3: 2_000}}
HELDOUT_PERCENT = 10
SPLIT_RULE = (f"heldout iff int(blake2b(canonical caption, digest_size=8)) % 100 < {HELDOUT_PERCENT}, else train "
              "(by composition: disjoint captions across splits, stages and seeds)")

COLOURS = {  # name -> RGB; every object's colour is jittered by up to COLOUR_JITTER per channel
    "red": (225, 35, 35), "orange": (255, 140, 0), "yellow": (240, 225, 30), "green": (30, 185, 55),
    "cyan": (30, 215, 225), "blue": (45, 85, 255), "purple": (150, 55, 215), "pink": (255, 125, 200),
    "white": (240, 240, 240),
}
COLOUR_JITTER = 15
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star", "heart", "crescent")
PLURALS = {s: s + "es" if s.endswith("s") else s + "s" for s in SHAPES}
SIZES = {"small": (0.10, 0.13), "large": (0.16, 0.19)}  # half-extent (radius) as a fraction of the side
STAGE1_RADIUS = (0.10, 0.22)  # stage 1 does not name the size
FILLS = ("solid", "striped", "outlined")  # "solid" is never said
FILL_WEIGHTS = (2, 1, 1)
POSITIONS = {  # anchor (x, y), fraction of the side, and its phrase
    "left": ((0.22, 0.5), "on the left"), "right": ((0.78, 0.5), "on the right"),
    "top": ((0.5, 0.22), "at the top"), "bottom": ((0.5, 0.78), "at the bottom"),
    "centre": ((0.5, 0.5), "in the centre"),
}
RELATIONS = {"left of": "right of", "above": "below"}  # canonical (subject left of / above object) -> inverse
COUNTS = {2: "two", 3: "three", 4: "four"}
PREFIXES = ("", "", "a picture of ", "an image of ", "a drawing of ", "a rendering of ")  # <= 20 words in all
GAP = 0.01  # least space between two objects' radii, fraction of the side
MARGIN = 0.02  # least space between an object's radius and the image border
JITTER = 0.03  # of positioned objects around their anchor
SUPERSAMPLE = 4  # drawn at 4x and box-filtered down: anti-aliased edges
OUTLINE = 1 / 32  # outline width, fraction of the side: one pixel at 32x32
STRIPE_PERIOD = 1 / 8  # fraction of the side: 2 pixels on, 2 off at 32x32
STRIPE_SHADE = 0.5  # the dark stripes' brightness, times the object's colour


class Obj(NamedTuple):
    shape: str
    colour: str
    size: str | None = None  # None: stage 1 (unnamed)
    fill: str = "solid"
    position: str | None = None  # named position (stage >= 2 "positions" scenes)


class Scene(NamedTuple):
    kind: str  # "single" (stage 1), "positions", "relation", "count"
    objects: tuple[Obj, ...]  # in canonical order (positions: POSITIONS order; relation: subject, object)
    counts: tuple[int, ...]  # how many of each object (count scenes; else all 1)
    relation: str | None = None  # "left of" or "above": objects[0] REL objects[1]


# ---------------------------------------------------------------------------------------------------- captions

def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def noun_phrase(obj: Obj, n: int = 1, one: bool = False) -> str:
    """"a small striped red circle", "three large blue stars" ("one ..." for n=1 if one)."""
    words = [w for w in (obj.size, None if obj.fill == "solid" else obj.fill, obj.colour) if w]
    words.append(obj.shape if n == 1 else PLURALS[obj.shape])
    det = COUNTS[n] if n > 1 else "one" if one else _article(words[0])
    return " ".join([det, *words])


def describe(scene: Scene, rng: random.Random | None = None) -> str:
    """The caption: canonical without rng, else with the rng's prefix, order and phrasing."""
    if scene.kind == "single":
        body = noun_phrase(scene.objects[0])
    elif scene.kind == "positions":
        parts = [f"{noun_phrase(o)} {POSITIONS[o.position][1]}" for o in scene.objects]
        if rng is not None:
            rng.shuffle(parts)
        body = " and ".join(parts)
    elif scene.kind == "relation":
        a, b = scene.objects
        if rng is not None and rng.random() < 0.5:
            body = f"{noun_phrase(b)} {RELATIONS[scene.relation]} {noun_phrase(a)}"
        else:
            body = f"{noun_phrase(a)} {scene.relation} {noun_phrase(b)}"
    elif scene.kind == "count":
        one = rng is not None and rng.random() < 0.3
        parts = [noun_phrase(o, n, one) for o, n in zip(scene.objects, scene.counts, strict=True)]
        if rng is not None and len(parts) == 2 and rng.random() < 0.5:
            parts.reverse()
        body = " and ".join(parts)
    else:
        raise ValueError(f"unknown scene kind {scene.kind!r}")
    if rng is None:
        return body
    return rng.choice(PREFIXES) + body


def canonical(scene: Scene) -> str:
    return describe(scene)


def split_of(scene: Scene) -> str:
    h = int.from_bytes(hashlib.blake2b(canonical(scene).encode(), digest_size=8).digest(), "big")
    return "heldout" if h % 100 < HELDOUT_PERCENT else "train"


def vocabulary() -> list[str]:
    """Every word a caption can contain (sorted): for tokenizer training or checks."""
    words = {"a", "an", "one", "and", *COLOURS, *SHAPES, *PLURALS.values(), *SIZES, *FILLS, *COUNTS.values()}
    for phrase in itertools.chain(PREFIXES, (p for _, p in POSITIONS.values()), RELATIONS, RELATIONS.values()):
        words.update(phrase.split())
    words.discard("solid")
    return sorted(words)


# ------------------------------------------------------------------------------------------------ compositions

def _obj(rng: random.Random, size: str | None, fill: bool) -> Obj:
    shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
    return Obj(shape, colour, size, rng.choices(FILLS, FILL_WEIGHTS)[0] if fill else "solid")


def _fits(p: str, s: str, q: str, t: str) -> bool:
    """Two objects of sizes s, t at anchors p, q never touch (largest radii, no jitter)."""
    (x1, y1), (x2, y2) = POSITIONS[p][0], POSITIONS[q][0]
    return math.hypot(x1 - x2, y1 - y2) >= SIZES[s][1] + SIZES[t][1] + GAP


def _positions_scene(rng: random.Random, n: int, fill: bool) -> Scene:
    names = list(POSITIONS)
    while True:
        places, sizes = rng.sample(names, n), [rng.choice(list(SIZES)) for _ in range(n)]
        if n == 1 or _fits(places[0], sizes[0], places[1], sizes[1]):
            break
    objs = [_obj(rng, s, fill)._replace(position=p) for p, s in zip(places, sizes, strict=True)]
    return Scene("positions", tuple(sorted(objs, key=lambda o: names.index(o.position))), (1,) * n)


def _scene(rng: random.Random, stage: int) -> Scene:
    if stage == 1:
        return Scene("single", (_obj(rng, None, False),), (1,))
    if stage == 2:
        return _positions_scene(rng, 1 if rng.random() < 0.35 else 2, fill=False)
    kind = rng.random()
    if kind < 0.35:
        a, b = (_obj(rng, rng.choice(list(SIZES)), True) for _ in range(2))
        return Scene("relation", (a, b), (1, 1), rng.choice(list(RELATIONS)))
    if kind < 0.7:
        n = rng.choice(list(COUNTS))
        group = _obj(rng, rng.choice(list(SIZES)), True)
        if n < 4 and rng.random() < 0.5:
            other = _obj(rng, rng.choice(list(SIZES)), True)
            if other != group:  # else it would be one more of the group
                return Scene("count", (group, other), (n, 1))
        return Scene("count", (group,), (n,))
    return _positions_scene(rng, 1 if rng.random() < 0.35 else 2, fill=True)


def _rng(split: str, stage: int, seed: int, index: int) -> random.Random:
    return random.Random(f"synthetic:v{GRAMMAR_VERSION}:{split}:{stage}:{seed}:{index}")


def compose(split: str, stage: int, seed: int, index: int) -> tuple[Scene, str, random.Random]:
    """(scene, caption, rng positioned after them) of sample `index`; the scene is one of split's compositions."""
    check(split, stage)
    rng = _rng(split, stage, seed, index)
    for _ in range(10_000):
        scene = _scene(rng, stage)
        if split_of(scene) == split:
            return scene, describe(scene, rng), rng
    raise RuntimeError(f"no {split} composition found for stage {stage}")  # cannot happen with grammar v1


def captions(split: str = "train", stage: int = 3, seed: int = 0, count: int | None = None) -> Iterator[str]:
    """The captions `samples` writes for (split, stage, seed), in order, without drawing: tokenizer text."""
    n = DEFAULT_SAMPLES[split][stage] if count is None else count
    for i in range(n):
        yield compose(split, stage, seed, i)[1]


# ------------------------------------------------------------------------------------------------------ layout

def _clamp(v: float, r: float) -> float:
    return min(max(v, r + MARGIN), 1 - r - MARGIN)


def _apart(items: list[tuple[float, float, float]]) -> bool:
    return all(math.hypot(x1 - x2, y1 - y2) >= r1 + r2 + GAP
               for (x1, y1, r1), (x2, y2, r2) in itertools.combinations(items, 2))


def _radius(rng: random.Random, obj: Obj) -> float:
    return rng.uniform(*(SIZES[obj.size] if obj.size else STAGE1_RADIUS))


def layout(scene: Scene, rng: random.Random) -> list[tuple[Obj, float, float, float]]:
    """(object, x, y, radius) per drawn object, fractions of the side."""
    objs = [o for o, n in zip(scene.objects, scene.counts, strict=True) for _ in range(n)]
    radii = [_radius(rng, o) for o in objs]
    if scene.kind == "single":
        r = radii[0]
        centre = [_clamp(0.5 + rng.uniform(-0.12, 0.12), r) for _ in range(2)]
        return [(objs[0], centre[0], centre[1], r)]
    if scene.kind == "positions":
        anchors = [POSITIONS[o.position][0] for o in objs]
        items = [(_clamp(x + rng.uniform(-JITTER, JITTER), r), _clamp(y + rng.uniform(-JITTER, JITTER), r), r)
                 for (x, y), r in zip(anchors, radii, strict=True)]
        if not _apart(items):  # the anchors fit the largest radii: without jitter they never touch
            items = [(x, y, r) for (x, y), r in zip(anchors, radii, strict=True)]
        return [(o, x, y, r) for o, (x, y, r) in zip(objs, items, strict=True)]
    if scene.kind == "relation":  # objects[0] left of / above objects[1], side by side along one axis
        (r1, r2), sep = radii, radii[0] + radii[1] + GAP + rng.uniform(0.03, 0.15)
        start = rng.uniform(r1 + MARGIN, 1 - MARGIN - r2 - sep)
        across = rng.uniform(max(radii) + MARGIN + 0.03, 1 - max(radii) - MARGIN - 0.03)
        skew = rng.uniform(-0.03, 0.03)
        along = [(start, across - skew), (start + sep, across + skew)]
        if scene.relation == "above":
            along = [(y, x) for x, y in along]
        return [(o, x, y, r) for o, (x, y), r in zip(objs, along, radii, strict=True)]
    for _ in range(50):  # count: scattered, retried until apart
        items = [(rng.uniform(r + MARGIN, 1 - r - MARGIN), rng.uniform(r + MARGIN, 1 - r - MARGIN), r)
                 for r in radii]
        if _apart(items):
            return [(o, x, y, r) for o, (x, y, r) in zip(objs, items, strict=True)]
    slots = [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)]  # at most 4 objects, radius <= 0.19:
    rng.shuffle(slots)  # 0.5 - 2 * 0.04 apart >= 2 * 0.19 + GAP
    return [(o, _clamp(x + rng.uniform(-0.04, 0.04), r), _clamp(y + rng.uniform(-0.04, 0.04), r), r)
            for o, (x, y), r in zip(objs, slots, radii, strict=False)]


# ----------------------------------------------------------------------------------------------------- drawing

def _unit(points: list[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    """Centre the polygon's bounding box on 0 and scale its larger half-side to 1 (y points down)."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    cx, cy = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
    half = max(max(xs) - min(xs), max(ys) - min(ys)) / 2
    return tuple(((x - cx) / half, (y - cy) / half) for x, y in points)


def _ring(n: int, radius: float = 1.0, start: float = -90.0) -> list[tuple[float, float]]:
    return [(radius * math.cos(math.radians(start + 360 * k / n)), radius * math.sin(math.radians(start + 360 * k / n)))
            for k in range(n)]


def _crescent() -> list[tuple[float, float]]:
    d, big = 0.5, 0.85  # the unit disc minus a disc of radius 0.85 centred at (0.5, 0): opens to the right
    x = (1 - big**2 + d**2) / (2 * d)
    a0, b0 = math.degrees(math.atan2(math.sqrt(1 - x**2), x)), math.degrees(math.atan2(math.sqrt(1 - x**2), x - d))
    outer = [(math.cos(math.radians(a)), math.sin(math.radians(a))) for a in np.linspace(a0, 360 - a0, 28)]
    inner = [(d + big * math.cos(math.radians(a)), big * math.sin(math.radians(a)))
             for a in np.linspace(360 - b0, b0, 20)[1:-1]]
    return outer + inner


def _heart() -> list[tuple[float, float]]:
    ts = np.linspace(0, 2 * math.pi, 40, endpoint=False)
    return [(16 * math.sin(t) ** 3, -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)))
            for t in ts]


POLYGONS = {  # unit shapes: bounding box centred on 0, larger half-side 1 (times a per-shape scale)
    "circle": _unit(_ring(40)),
    "square": tuple((0.85 * x, 0.85 * y) for x, y in _unit([(-1, -1), (1, -1), (1, 1), (-1, 1)])),
    "triangle": _unit(_ring(3)),
    "diamond": _unit([(0, -1), (0.75, 0), (0, 1), (-0.75, 0)]),
    "cross": _unit([(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1),
                    (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)]),
    "star": _unit([p for k in range(5) for p in (_ring(5, 1.0)[k], _ring(5, 0.42, -54)[k])]),
    "heart": _unit(_heart()),
    "crescent": _unit(_crescent()),
}
ROTATE = {"circle": 0.0, "square": 10.0, "triangle": 12.0, "diamond": 10.0, "cross": 12.0, "star": 15.0,
          "heart": 12.0, "crescent": 20.0}  # largest rotation in degrees (a diamond stays a diamond)


@lru_cache(maxsize=8)
def _stripes(side: int, period: int) -> Image.Image:
    """Diagonal stripes, half on, as an L mask side x side."""
    y, x = np.mgrid[0:side, 0:side]
    return Image.fromarray(np.where((x + y) % period < period // 2, 255, 0).astype(np.uint8))


def _erode(mask: Image.Image, k: int) -> Image.Image:
    """Grey erosion by a (2k+1) square, as ImageFilter.MinFilter(2k+1) (zero outside), separably: ~10x faster."""
    a = np.pad(np.asarray(mask), k)
    h, w = mask.height, mask.width
    rows = np.minimum.reduce([a[:, i : i + w] for i in range(2 * k + 1)])
    return Image.fromarray(np.minimum.reduce([rows[i : i + h] for i in range(2 * k + 1)]))


def draw(items: list[tuple[Obj, float, float, float]], image_size: int, rng: random.Random) -> Image.Image:
    """The scene as an RGB image_size x image_size image: objects on a dark, slightly tinted background."""
    side = image_size * SUPERSAMPLE
    level = rng.randint(0, 40)
    background = tuple(min(max(level + rng.randint(-8, 8), 0), 255) for _ in range(3))
    canvas = Image.new("RGB", (side, side), background)
    outline = max(1, round(OUTLINE * side))
    period = max(2, round(STRIPE_PERIOD * side))
    for obj, x, y, r in items:
        angle = math.radians(rng.uniform(-ROTATE[obj.shape], ROTATE[obj.shape]))
        cos, sin = math.cos(angle), math.sin(angle)
        colour = tuple(min(max(c + rng.randint(-COLOUR_JITTER, COLOUR_JITTER), 0), 255) for c in COLOURS[obj.colour])
        half = math.ceil(r * side * 1.45) + outline + 2  # a box around the rotated shape
        left, top = round(x * side) - half, round(y * side) - half
        cx, cy = x * side - left, y * side - top
        points = [(cx + r * side * (px * cos - py * sin), cy + r * side * (px * sin + py * cos))
                  for px, py in POLYGONS[obj.shape]]
        box = (left, top, left + 2 * half, top + 2 * half)
        mask = Image.new("L", (2 * half, 2 * half), 0)
        ImageDraw.Draw(mask).polygon(points, fill=255)
        if obj.fill == "outlined":
            mask = ImageChops.subtract(mask, _erode(mask, outline))
        elif obj.fill == "striped":  # stripes of the colour and a dark shade of it: the silhouette stays whole
            canvas.paste(tuple(round(STRIPE_SHADE * c) for c in colour), box, mask)
            phase = (left % period, top % period, left % period + 2 * half, top % period + 2 * half)
            mask = ImageChops.multiply(mask, _stripes(2 * half + period, period).crop(phase))
        canvas.paste(colour, box, mask)
    return canvas.reduce(SUPERSAMPLE)


# ----------------------------------------------------------------------------------------------------- samples

def check(split: str, stage: int, image_size: int = DEFAULT_IMAGE_SIZE) -> None:
    if split not in SPLITS:
        raise ValueError(f"synthetic split must be one of {list(SPLITS)}, got {split!r}")
    if stage not in STAGES:
        raise ValueError(f"synthetic stage must be one of {list(STAGES)}, got {stage!r}")
    if image_size not in IMAGE_SIZES:
        raise ValueError(f"synthetic image size must be one of {list(IMAGE_SIZES)}, got {image_size!r}")


def make_sample(split: str, stage: int, seed: int, index: int, image_size: int = DEFAULT_IMAGE_SIZE) -> Sample:
    check(split, stage, image_size)
    scene, caption, rng = compose(split, stage, seed, index)
    items = layout(scene, rng)
    image = draw(items, image_size, rng)
    meta = {
        "source": "synthetic", "synthetic": True, "split": split, "stage": stage, "seed": seed, "index": index,
        "grammar_version": GRAMMAR_VERSION, "kind": scene.kind, "composition": canonical(scene),
        "relation": scene.relation,
        "objects": [{**o._asdict(), "x": round(x, 4), "y": round(y, 4), "r": round(r, 4)} for o, x, y, r in items],
    }
    return Sample(f"synthetic_{split}_s{stage}_r{seed}_{index:07d}", image, caption, meta)


def samples(split: str, *, raw: Path, input: str | None, seed: int, skipped: Counter, stage: int = 1,
            image_size: int = DEFAULT_IMAGE_SIZE, count: int | None = None) -> Iterator[Sample]:
    """`count` samples (default DEFAULT_SAMPLES[split][stage]); raw, input and skipped are unused."""
    check(split, stage, image_size)
    n = DEFAULT_SAMPLES[split][stage] if count is None else count
    for i in range(n):
        yield make_sample(split, stage, seed, i, image_size)


def manifest_fields(stage: int, seed: int, image_size: int) -> dict:
    """Keys prepare adds to this source's manifest.json."""
    return {"synthetic": True, "grammar_version": GRAMMAR_VERSION, "stage": stage, "seed": seed,
            "image_size": image_size, "heldout_percent": HELDOUT_PERCENT}
