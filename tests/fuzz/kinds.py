"""The input kinds, in the order cases cycle through them: name -> make(rng, root, fixtures) -> Case."""
from .checkpoints import checkpoint_case, eval_task_case
from .configs import config_case, ds_case
from .data import manifest_case, shard_case

KINDS = {"config": config_case, "ds": ds_case, "manifest": manifest_case, "shard": shard_case,
         "checkpoint": checkpoint_case, "eval_task": eval_task_case}
