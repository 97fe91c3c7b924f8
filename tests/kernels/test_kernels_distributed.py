"""Two gloo processes, features all-gathered with grad: the ranks' kernel losses and gradients
recombine into the single-process loss and gradients of the concatenated batch (x W for the
summed feature gradients, see kernels_dist_worker.run)."""
import socket
import sys
from pathlib import Path

import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernels_dist_worker  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_match_single_process():
    world = 2
    mp.spawn(kernels_dist_worker.run, args=(world, _free_port(), 2 * 37, 32), nprocs=world,
             join=True)
