"""The growth space: typed moves on the Architecture value object, and the checks a target must pass.

A move is `tower.field OP value` with tower in vision|text|shared, field in layers|width|heads|head_dim|mlp_ratio
and OP one of `+=`, `*=`, `=`. A compound move is a comma-separated list, applied left to right. The growth
operators are built from the (source, target) architectures alone, so the order inside a compound move does not
matter.

- `heads` adds heads at a fixed width and head_dim (growclip-method.md): the attention inner dim heads·head_dim
  grows, the new heads get fresh Q/K/V and zero out-projection columns, and the residual stream is unchanged.
  The grown tower therefore records head_dim explicitly (Megatron's kv_channels), and cannot be exported to
  OpenCLIP, whose attention ties the inner dim to the width.
- `width` widens the residual stream. Where head_dim is tied to the width (not set), head_dim grows with it;
  where it is set, the attention inner dim stays as it is.
- `head_dim` widens every head (queries rescaled so the attention scores are unchanged).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from pretrain.arch import Architecture, ArchitectureError, mlp_hidden
from pretrain.parallel.layout import Layout, LayoutError

from .errors import GrowthError

TOWERS = ("vision", "text", "shared")
FIELDS = ("layers", "heads", "head_dim", "width", "mlp_ratio")  # Moves.between records them in this order
FIXED = {"vision": ("patch", "image_size"), "text": ("vocab", "context")}
_MOVE = re.compile(r"^\s*(\w+)\.(\w+)\s*(\+=|\*=|=)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Move:
    tower: str
    field: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> "Move":
        m = _MOVE.match(text)
        if not m:
            raise GrowthError(f"move {text!r} must look like tower.field+=N, tower.field*=N or tower.field=N "
                              f"(towers {', '.join(TOWERS)}; fields {', '.join(FIELDS)})")
        tower, field, op, value = m.groups()
        if tower not in TOWERS or field not in FIELDS:
            raise GrowthError(f"move {text!r}: unknown {'tower' if tower not in TOWERS else 'field'}; "
                              f"towers are {', '.join(TOWERS)}, fields {', '.join(FIELDS)}")
        return cls(tower, field, op, float(value))

    def __str__(self) -> str:
        return f"{self.tower}.{self.field}{self.op}{self.value:g}"

    def _new_value(self, old):
        new = {"+=": old + self.value, "*=": old * self.value, "=": self.value}[self.op]
        if self.field == "mlp_ratio":
            return float(new)
        if new != int(new):
            raise GrowthError(f"move {self}: {self.tower}.{self.field} would be {new:g}, not an integer")
        return int(new)

    def apply(self, arch: Architecture) -> Architecture:
        tower = getattr(arch, self.tower)
        changes = {self.field: self._new_value(_value(tower, self.field))}
        if self.field == "heads":  # keep width and head_dim: the attention inner dim grows with the heads
            changes["head_dim"] = tower.attn_head_dim
        try:
            return arch.replace(**{self.tower: dataclasses.replace(tower, **changes)})
        except ArchitectureError as e:
            raise GrowthError(f"move {self} gives an invalid architecture: {e}") from e


def _value(tower, field: str):
    """A field's value, with head_dim resolved (None means width / heads)."""
    return tower.attn_head_dim if field == "head_dim" else getattr(tower, field)


@dataclass(frozen=True)
class Moves:
    """A compound move: several single moves applied in order."""
    moves: tuple[Move, ...]

    @classmethod
    def parse(cls, text: str) -> "Moves":
        parts = [p for p in text.split(",") if p.strip()]
        if not parts:
            raise GrowthError("empty move; example: --move 'vision.layers+=2,text.width*=2'")
        return cls(tuple(Move.parse(p) for p in parts))

    @classmethod
    def between(cls, src: Architecture, dst: Architecture) -> "Moves":
        """The assignments that turn src into dst (how a `--to ARCH.yaml` target is recorded). Each is checked
        against src with the earlier ones applied; heads and head_dim come before width, and a head_dim tied to
        the width in both is left to the width move. The text records sizes: replayed, it gives dst's sizes,
        though after a heads change a head_dim tied in dst comes back set (the history's `to` holds dst)."""
        moves, arch = [], src
        for t in TOWERS:
            for f in FIELDS:
                want = _value(getattr(dst, t), f)
                tied = getattr(dst, t).head_dim is None, getattr(arch, t).head_dim is None
                if f == "head_dim" and tied == (True, True):
                    continue  # tied in both: the width move carries it
                if _value(getattr(arch, t), f) != want or (f == "head_dim" and tied == (False, True)):  # pin it
                    moves.append(Move(t, f, "=", want))
                    try:
                        arch = moves[-1].apply(arch)
                    except GrowthError:
                        pass  # an intermediate size the later moves repair: the recorded text stays complete
        return cls(tuple(moves))

    def apply(self, arch: Architecture) -> Architecture:
        for move in self.moves:
            arch = move.apply(arch)
        return arch

    def __str__(self) -> str:
        return ",".join(map(str, self.moves))


def target_architecture(src: Architecture, target: "Moves | Architecture | str") -> tuple[Architecture, str]:
    """(target architecture, move text for the growth history) from moves, their text, or an architecture."""
    if isinstance(target, str):
        target = Moves.parse(target)
    if isinstance(target, Architecture):
        return target, str(Moves.between(src, target))
    return target.apply(src), str(target)


def check_growth(src: Architecture, dst: Architecture) -> list[str]:
    """Raise GrowthError if dst is not a growth of src; return the notes on inexact (approximate) parts."""
    problems, notes = [], []
    for tower, fields in FIXED.items():
        for f in fields:
            a, b = getattr(getattr(src, tower), f), getattr(getattr(dst, tower), f)
            if a != b:
                problems.append(f"{tower}.{f} {a} -> {b} is not part of the growth space")
    if src.embed_dim != dst.embed_dim:
        problems.append(f"embed_dim {src.embed_dim} -> {dst.embed_dim} is not part of the growth space")
    if dst.shared.layers < src.shared.layers:
        problems.append(f"shared.layers shrinks {src.shared.layers} -> {dst.shared.layers}")
    for name in TOWERS:
        a, b = getattr(src, name), getattr(dst, name)
        if name == "shared" and not src.shared.layers:
            continue  # no shared weights yet: any shared shape is new
        problems += _tower_problems(name, a, b)
        if b.width % a.width and b.width >= a.width:
            notes.append(f"{name}.width {a.width} -> {b.width} is not an integer multiple: LayerNorm statistics "
                         f"change, so the grown model is approximate")
    if dst.shared.layers:
        for name in ("vision", "text"):
            problems += _adapter_problems(name, src, dst, notes)
    if problems:
        raise GrowthError("not a growth of the source architecture: " + "; ".join(problems))
    return notes


def _tower_problems(name, a, b) -> list[str]:
    out = []
    if b.layers < a.layers:
        out.append(f"{name}.layers shrinks {a.layers} -> {b.layers}")
    if b.width < a.width:
        out.append(f"{name}.width shrinks {a.width} -> {b.width}")
    if b.heads < a.heads:
        out.append(f"{name}.heads shrinks {a.heads} -> {b.heads}")
    if b.attn_head_dim < a.attn_head_dim:
        out.append(f"{name}.head_dim shrinks {a.attn_head_dim} -> {b.attn_head_dim} (grow heads with "
                   f"`{name}.heads*=k`, which keeps head_dim)")
    if mlp_hidden(b.width, b.mlp_ratio) < mlp_hidden(b.width, a.mlp_ratio):
        out.append(f"{name}.mlp_ratio shrinks {a.mlp_ratio} -> {b.mlp_ratio}")
    return out


def _adapter_problems(name: str, src: Architecture, dst: Architecture, notes: list[str]) -> list[str]:
    """The tokens of a tower enter the shared space of dst; the source space must embed into it."""
    src_space = getattr(src, f"{name}_out_width")
    tower_src, tower_dst = getattr(src, name).width, getattr(dst, name).width
    if dst.shared.width < src_space:
        return [f"shared.width {dst.shared.width} is smaller than the {name} features it receives ({src_space}); "
                f"set shared.width >= {src_space}"]
    if src.shared.layers and tower_src != src.shared.width and tower_dst == dst.shared.width:
        return [f"{name}.width == shared.width in the target, so it has no {name} adapter, but the source has a "
                f"trained adapter that would be dropped"]
    if not src.shared.layers and dst.shared.width % src_space:
        notes.append(f"shared.width {dst.shared.width} is not an integer multiple of {name} width {src_space}: "
                     f"LayerNorm statistics change, so the grown model is approximate")
    return []


def validate_layout(arch: Architecture, layout: Layout, zero_stage: int = 0) -> None:
    try:
        layout.validate(arch, zero_stage)
    except LayoutError as e:
        raise GrowthError(f"the target architecture cannot run on the requested layout: {e}") from e
