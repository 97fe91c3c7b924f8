"""The one layout object: (tp, pp, dp), validated once against the world size and the architecture.

`Layout.validate` is pure (no process groups), so growth and config checks can call it before any rank works.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..arch import Architecture, mlp_hidden


class LayoutError(ValueError):
    """A layout that cannot run; the message names the numbers."""


@dataclass(frozen=True)
class Layout:
    tp: int = 1
    pp: int = 1
    dp: int = 1

    @property
    def world(self) -> int:
        return self.tp * self.pp * self.dp

    @classmethod
    def for_world(cls, world: int, tp: int = 1, pp: int = 1) -> "Layout":
        if tp < 1 or pp < 1:
            raise LayoutError(f"tp={tp} and pp={pp} must be >= 1")
        if world % (tp * pp):
            raise LayoutError(f"world size {world} is not divisible by tp*pp = {tp}*{pp} = {tp * pp}")
        return cls(tp, pp, world // (tp * pp))

    def validate(self, arch: Architecture, zero_stage: int = 0) -> None:
        problems = []
        for name, t in (("vision", arch.vision), ("text", arch.text), ("shared", arch.shared)):
            if name == "shared" and not t.layers:
                continue
            if t.heads % self.tp:
                problems.append(f"{name}.heads={t.heads} is not divisible by tp={self.tp}")
            hidden = mlp_hidden(t.width, t.mlp_ratio)
            if hidden % self.tp:
                problems.append(f"{name} MLP hidden {hidden} (width {t.width} x mlp_ratio {t.mlp_ratio}) "
                                f"is not divisible by tp={self.tp}")
        if self.pp > 1:
            for name, layers in (("vision", arch.vision.layers), ("text", arch.text.layers)):
                if layers < self.pp:
                    problems.append(f"{name}.layers={layers} is fewer than pp={self.pp} pipeline stages "
                                    f"(every stage holds blocks of both towers)")
            if zero_stage > 1:
                problems.append(f"ZeRO stage {zero_stage} with pp={self.pp}: DeepSpeed's pipeline engine "
                                f"supports ZeRO stage 0 or 1 only; use ds_configs/zero1.json")
        if problems:
            raise LayoutError(f"layout (tp={self.tp}, pp={self.pp}, dp={self.dp}) is invalid for this model: "
                              + "; ".join(problems))


def padded_vocab(vocab: int, tp: int) -> int:
    """Vocabulary padded to a multiple of tp (VocabParallelEmbedding splits rows evenly)."""
    return -(-vocab // tp) * tp
