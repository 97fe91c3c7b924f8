"""Grow a checkpoint: `python -m growth.grow --from CKPT (--to ARCH.yaml | --move "vision.layers+=2,text.width*=2")
--tp T --pp P --out NEW [--pim-m 0.9 --pim-source ema] [--pim-seed 0] [--split 0.5] [--depth-init copy|fresh]
[--reset-moments] [--tokenizer PATH]`.

CKPT: a run folder, a checkpoints folder, or a tag folder, DeepSpeed (converted to universal first) or universal.
NEW: a folder that must not exist; it receives a universal checkpoint of the grown model, which
`deepspeed pretrain/main.py --resume NEW ...` continues from. Errors print one line and exit with status 2,
having written nothing.
"""
import argparse
import sys

from pretrain.arch import Architecture, ArchitectureError
from pretrain.checkpoint import CheckpointError
from pretrain.parallel.layout import Layout, LayoutError

from .errors import GrowthError
from .hook import grow_checkpoint
from .pim import PIM


def parse_args(argv=None):
    defaults = PIM()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source", required=True, help="checkpoint to grow (never modified)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--to", help="target architecture YAML/JSON")
    target.add_argument("--move", help="compound move, e.g. 'vision.layers+=2,text.width*=2'")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size the grown model must run at")
    p.add_argument("--pp", type=int, default=1, help="pipeline stages the grown model must run at")
    p.add_argument("--out", required=True, help="new folder for the grown universal checkpoint")
    p.add_argument("--pim-m", type=float, default=defaults.m, help="PIM momentum m in (0, 1]; 1 = exact")
    p.add_argument("--pim-source", choices=("ema", "last"), default=defaults.source, help="weights to inherit")
    p.add_argument("--pim-seed", type=int, default=defaults.seed, help="seed of the fresh initialisation")
    p.add_argument("--split", type=float, default=defaults.split,
                   help="symmetry breaking in [0, 1): the copies of a duplicated unit share the weights that read "
                        "it unequally (0 = plain tiling, whose copies never separate); exact for any value")
    p.add_argument("--noise", type=float, default=defaults.noise,
                   help="antithetic symmetry-breaking noise on duplicated units, x each tensor's RMS (first-order "
                        "exact; 0 = none)")
    p.add_argument("--depth-init", choices=("copy", "fresh"), default=defaults.depth_init,
                   help="new blocks copy the old block each follows, or start fresh (residual outputs zero)")
    p.add_argument("--reset-moments", action="store_true", help="zero the Adam state (and its step) instead "
                                                                "of mapping it")
    p.add_argument("--tokenizer", help="tokenizer.model, when a universal source lacks it")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        target = Architecture.load(args.to) if args.to else args.move
        layout = Layout.for_world(args.tp * args.pp, args.tp, args.pp)
        pim = PIM(args.pim_m, args.pim_source, args.pim_seed, split=args.split, depth_init=args.depth_init,
                  noise=args.noise)
        grow_checkpoint(args.source, target, args.out, layout=layout, pim=pim, reset_moments=args.reset_moments,
                        tokenizer=args.tokenizer, progress=True)
    except (GrowthError, CheckpointError, ArchitectureError, LayoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
