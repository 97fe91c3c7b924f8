"""Function-preserving growth of a GrowCLIP checkpoint: moves, operators (index maps), PIM, and the universal
checkpoint writer. Uses the model and checkpoint code of pretrain/; in pretrain/ only the in-training driver
(pretrain/growth_loop.py) and the config's move-syntax check import growth."""
from .errors import GrowthError
from .hook import grow_checkpoint
from .index_map import IndexMap, TensorMap
from .pim import PIM, fresh_init
from .plan import plan_growth
from .space import Move, Moves, check_growth, target_architecture, validate_layout
from .transform import grow_parameter, grow_weights

__all__ = ["GrowthError", "IndexMap", "Move", "Moves", "PIM", "TensorMap", "check_growth", "fresh_init",
           "grow_checkpoint", "grow_parameter", "grow_weights", "plan_growth", "target_architecture",
           "validate_layout"]
