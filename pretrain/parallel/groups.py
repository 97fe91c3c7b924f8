"""Process groups for a layout: megatron-core parallel_state, checked rank by rank against a DeepSpeed
pipeline topology, and the `mpu` object that `deepspeed.initialize` takes.

Rank order is tp fastest, then dp, then pp, in both megatron-core ("tp-cp-ep-dp-pp") and DeepSpeed's
PipeModelDataParallelTopology (axes pipe, data, model). `init_groups` asserts they agree on every rank.

`destroy_groups` undoes it between two trainers of one process (a growth): megatron-core's
`destroy_model_parallel` only drops its references, and torch keeps every group alive in its own map, each gloo
group with its sockets and threads (2 ranks: 17 groups, 74 descriptors and 51 threads per trainer).
"""
from __future__ import annotations

import torch.distributed as dist
from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology
from megatron.core import parallel_state as ps

from .layout import Layout


class MegatronMPU:
    """DeepSpeed's mpu interface: 'model parallel' means tensor parallel here, as in Megatron-DeepSpeed."""

    get_model_parallel_rank = staticmethod(ps.get_tensor_model_parallel_rank)
    get_model_parallel_world_size = staticmethod(ps.get_tensor_model_parallel_world_size)
    get_model_parallel_group = staticmethod(ps.get_tensor_model_parallel_group)
    get_tensor_model_parallel_rank = staticmethod(ps.get_tensor_model_parallel_rank)
    get_tensor_model_parallel_world_size = staticmethod(ps.get_tensor_model_parallel_world_size)
    get_tensor_model_parallel_group = staticmethod(ps.get_tensor_model_parallel_group)
    get_tensor_model_parallel_src_rank = staticmethod(ps.get_tensor_model_parallel_src_rank)
    get_data_parallel_rank = staticmethod(ps.get_data_parallel_rank)
    get_data_parallel_world_size = staticmethod(ps.get_data_parallel_world_size)
    get_data_parallel_group = staticmethod(ps.get_data_parallel_group)
    get_pipeline_model_parallel_rank = staticmethod(ps.get_pipeline_model_parallel_rank)
    get_pipeline_model_parallel_world_size = staticmethod(ps.get_pipeline_model_parallel_world_size)
    get_pipeline_model_parallel_group = staticmethod(ps.get_pipeline_model_parallel_group)

    @staticmethod
    def get_data_parallel_group_ranks():
        return dist.get_process_group_ranks(ps.get_data_parallel_group())


def init_distributed() -> None:
    """deepspeed.init_distributed (nccl on CUDA, gloo on the CPU), without DeepSpeed's CPU shared-memory
    all-reduce op. DeepSpeed JIT-builds that op on a CPU backend's first use (1-2 min of compiling), uses it only
    for `inference_all_reduce` (never in training), and leaves a 69 MB file per rank per run in /dev/shm that
    nothing unlinks: a test suite of 50 launches filled 20 GB of RAM that way. Marking it incompatible makes
    DeepSpeed skip it (its `__compatible_ops__` dict is cached and edits to it persist)."""
    import deepspeed
    import torch

    if not torch.cuda.is_available():
        import deepspeed.ops
        from deepspeed.ops.op_builder.cpu.comm import ShareMemCommBuilder
        deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")


def live_groups() -> int:
    """The process groups this process holds, the default one included (torch has no public count)."""
    return len(dist.distributed_c10d._world.pg_map) if dist.is_initialized() else 0


def destroy_groups() -> None:
    """Destroy every process group but the default one, and forget megatron-core's and DeepSpeed's references to
    them, so that the next `init_groups` starts from the process as `init_distributed` left it. Only the default
    group exists before the first `init_groups`; every later one is megatron-core's, DeepSpeed's (clones of the
    world group it caches, pipeline grids) or ours. Every rank calls it at the same point, after a barrier and
    after the engine that used the groups is gone."""
    from deepspeed.utils import groups as ds_groups

    ps.destroy_model_parallel()  # destroys its gloo groups itself, and drops the rest
    doomed = [g for g in dist.distributed_c10d._world.pg_map if g is not dist.GroupMember.WORLD]
    ds_groups.mpu = None
    for name, value in list(vars(ds_groups).items()):  # DeepSpeed caches some groups in module globals
        if isinstance(value, dist.ProcessGroup) and value in doomed:
            setattr(ds_groups, name, None)
        elif isinstance(value, dict) and any(isinstance(v, dist.ProcessGroup) for v in value.values()):
            value.clear()
    for group in doomed:
        dist.destroy_process_group(group)


def init_groups(layout: Layout) -> tuple[MegatronMPU, PipeModelDataParallelTopology]:
    if dist.get_world_size() != layout.world:
        raise RuntimeError(f"layout {layout} needs {layout.world} ranks, the job has {dist.get_world_size()}")
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(tensor_model_parallel_size=layout.tp, pipeline_model_parallel_size=layout.pp)
    topo = PipeModelDataParallelTopology(num_pp=layout.pp, num_mp=layout.tp, num_dp=layout.dp)
    coord = topo.get_coord(dist.get_rank())
    ours = (ps.get_pipeline_model_parallel_rank(), ps.get_data_parallel_rank(), ps.get_tensor_model_parallel_rank())
    if (coord.pipe, coord.data, coord.model) != ours:
        raise RuntimeError(f"rank {dist.get_rank()}: DeepSpeed topology {coord} disagrees with megatron-core "
                           f"(pipe, data, tensor) = {ours}")
    return MegatronMPU(), topo
