"""The architecture value object: the only way to describe a GrowCLIP model.

Every checkpoint stores it (as a plain dict). Growth maps one Architecture to another. Field names follow
../docs/growclip-method.md: vision, text, shared towers plus the joint embedding width.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path


class ArchitectureError(ValueError):
    """An architecture that cannot be built; the message names the offending field."""


class Attention:
    """Attention sizes shared by the three tower types. `head_dim` (Megatron's kv_channels) is None when it is
    tied to the width (width / heads, OpenCLIP's blocks): a width move then widens the heads too. Set, the
    attention inner dim heads·head_dim is its own axis: it may differ from the residual width, and a width move
    leaves it alone. The two build the same network when head_dim == width / heads, but grow differently, so
    they are different architectures."""

    @property
    def attn_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.width // self.heads

    @property
    def attn_width(self) -> int:
        """The attention inner dim: rows of q, k and v each, columns of the out-projection."""
        return self.heads * self.attn_head_dim


@dataclass(frozen=True)
class VisionTower(Attention):
    layers: int = 12
    width: int = 768
    heads: int = 12
    mlp_ratio: float = 4.0
    patch: int = 32
    image_size: int = 224
    head_dim: int | None = None

    @property
    def grid(self) -> int:
        return self.image_size // self.patch

    @property
    def tokens(self) -> int:
        return self.grid * self.grid + 1  # patches + class token


@dataclass(frozen=True)
class TextTower(Attention):
    layers: int = 12
    width: int = 512
    heads: int = 8
    mlp_ratio: float = 4.0
    vocab: int = 49408
    context: int = 77
    head_dim: int | None = None


@dataclass(frozen=True)
class SharedEncoder(Attention):
    """Blocks with one set of weights, applied after each tower. layers = 0 means plain CLIP."""
    layers: int = 0
    width: int = 512
    heads: int = 8
    mlp_ratio: float = 4.0
    head_dim: int | None = None


def mlp_hidden(width: int, mlp_ratio: float) -> int:
    return int(width * mlp_ratio)


def block_flops(t: Attention, tokens: int, causal: bool = False) -> float:
    """Forward FLOPs (multiply-add = 2) of one pre-LN block of tower `t` on one sample: QKV, out, MLP, and
    attention scores + values (half of them under a causal mask)."""
    width, inner = t.width, t.attn_width
    per_token = 2 * (4 * width * inner + 2 * width * mlp_hidden(width, t.mlp_ratio))
    return tokens * per_token + 2 * 2 * tokens * tokens * inner * (0.5 if causal else 1.0)


@dataclass(frozen=True)
class Architecture:
    vision: VisionTower = field(default_factory=VisionTower)
    text: TextTower = field(default_factory=TextTower)
    shared: SharedEncoder = field(default_factory=SharedEncoder)
    embed_dim: int = 512

    def __post_init__(self):
        self.validate()

    # ---- validation -------------------------------------------------------------------------------
    def validate(self) -> None:
        def positive(prefix, obj, names, least=1):
            """Sizes are integers >= least; mlp_ratio a finite number > 0."""
            for n in names:
                v = getattr(obj, n) if obj is not None else self.embed_dim
                name = f"{prefix}.{n}" if prefix else n
                if n == "mlp_ratio":
                    if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v < math.inf:
                        raise ArchitectureError(f"{name} must be a positive finite number, got {v!r:.80}")
                elif not isinstance(v, int) or isinstance(v, bool) or v < least:
                    raise ArchitectureError(f"{name} must be an integer >= {least}, got {v!r:.80}")

        positive("vision", self.vision, ("layers", "width", "heads", "mlp_ratio", "patch", "image_size"))
        positive("text", self.text, ("layers", "width", "heads", "mlp_ratio", "vocab", "context"))
        positive("shared", self.shared, ("width", "heads", "mlp_ratio"))
        positive("shared", self.shared, ("layers",), least=0)
        positive("", None, ("embed_dim",))
        for name, t in (("vision", self.vision), ("text", self.text), ("shared", self.shared)):
            if t.head_dim is not None and (not isinstance(t.head_dim, int) or isinstance(t.head_dim, bool)
                                           or t.head_dim <= 0):
                raise ArchitectureError(f"{name}.head_dim must be a positive integer or null, got {t.head_dim!r}")
            if t.head_dim is None and t.width % t.heads:
                raise ArchitectureError(f"{name}.width={t.width} is not divisible by {name}.heads={t.heads} "
                                        f"(or set {name}.head_dim)")
            if mlp_hidden(t.width, t.mlp_ratio) < 1:
                raise ArchitectureError(f"{name}.mlp_ratio={t.mlp_ratio} gives an empty MLP")
        if self.vision.image_size % self.vision.patch:
            raise ArchitectureError(
                f"vision.patch={self.vision.patch} does not divide vision.image_size={self.vision.image_size}")

    # ---- derived sizes ----------------------------------------------------------------------------
    @property
    def vision_out_width(self) -> int:
        """Width of the image tokens that ln_post/proj see (shared width when a shared encoder runs)."""
        return self.shared.width if self.shared.layers else self.vision.width

    @property
    def text_out_width(self) -> int:
        return self.shared.width if self.shared.layers else self.text.width

    def flops_per_sample(self) -> float:
        """Forward FLOPs (multiply-add = 2) of one image-text pair; training is about 3x this."""
        v, t, s = self.vision, self.text, self.shared
        f = v.layers * block_flops(v, v.tokens) + self.patch_embed_flops()
        f += t.layers * block_flops(t, t.context, causal=True)
        f += s.layers * self.shared_block_flops() + self.adapter_flops()
        return float(f + self.head_flops())

    def patch_embed_flops(self) -> float:
        v = self.vision
        return 2.0 * (v.grid ** 2) * (3 * v.patch * v.patch) * v.width

    def shared_block_flops(self) -> float:
        """One shared block, run on the image tokens and on the text tokens."""
        s = self.shared
        return block_flops(s, self.vision.tokens) + block_flops(s, self.text.context, causal=True)

    def adapter_flops(self) -> float:
        s, v, t = self.shared, self.vision, self.text
        if not s.layers:
            return 0.0
        return 2.0 * (v.tokens * v.width * s.width * (v.width != s.width)
                      + t.context * t.width * s.width * (t.width != s.width))

    def head_flops(self) -> float:
        return 2.0 * (self.vision_out_width + self.text_out_width) * self.embed_dim

    # ---- (de)serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "architecture") -> "Architecture":
        if not isinstance(d, dict):
            raise ArchitectureError(f"{source}: expected a mapping, got {type(d).__name__}")
        parts = {"vision": VisionTower, "text": TextTower, "shared": SharedEncoder}
        unknown = set(d) - set(parts) - {"embed_dim"}
        if unknown:
            raise ArchitectureError(f"{source}: unknown key(s) {sorted(unknown)}; expected {sorted(parts)} + embed_dim")
        kwargs = {}
        for key, typ in parts.items():
            sub = d.get(key, {})
            if not isinstance(sub, dict):
                raise ArchitectureError(f"{source}: '{key}' must be a mapping")
            allowed = {f.name for f in dataclasses.fields(typ)}
            bad = set(sub) - allowed
            if bad:
                raise ArchitectureError(f"{source}: unknown key(s) {sorted(f'{key}.{b}' for b in bad)}")
            kwargs[key] = typ(**sub)
        if "embed_dim" in d:
            kwargs["embed_dim"] = d["embed_dim"]
        try:
            return cls(**kwargs)
        except ArchitectureError as e:  # validate() names the field; say whose architecture it is
            raise ArchitectureError(f"{source}: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> "Architecture":
        """Load from YAML or JSON. A run config with a top-level 'model' key is accepted too."""
        path = Path(path)
        if not path.is_file():
            raise ArchitectureError(f"{path}: no such architecture file")
        d = load_mapping(path)
        if "model" in d and "vision" not in d:
            d = d["model"]
        return cls.from_dict(d, source=str(path))

    def save(self, path: str | Path) -> None:
        path = Path(path)
        text = (json.dumps(self.to_dict(), indent=2) if path.suffix == ".json"
                else _yaml().safe_dump(self.to_dict(), sort_keys=False))
        path.write_text(text)

    def replace(self, **changes) -> "Architecture":
        return dataclasses.replace(self, **changes)


def _yaml():
    import yaml
    return yaml


def load_mapping(path: Path) -> dict:
    """Read a YAML/JSON file into a dict, with an error that names the file."""
    try:
        text = path.read_text()
        d = json.loads(text) if path.suffix == ".json" else _yaml().safe_load(text)
    except Exception as e:  # noqa: BLE001 - reported with the file name, on one line (YAML's errors span several)
        why = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise ArchitectureError(f"{path}: cannot parse ({e.__class__.__name__}: {why[:300]})") from None
    if not isinstance(d, dict):
        raise ArchitectureError(f"{path}: expected a mapping at the top level")
    return d


LOG_100 = math.log(100.0)
