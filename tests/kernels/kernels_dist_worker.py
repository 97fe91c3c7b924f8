"""Worker of test_kernels_distributed (a module of its own so spawned processes can import it)."""
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F

from kernels import contrastive_loss, contrastive_loss_reference

TOL = dict(atol=1e-5, rtol=1e-4)


def batch(B, D):
    """The global batch, identical on every rank."""
    g = torch.Generator().manual_seed(1234)
    image, text = (F.normalize(torch.randn(B, D, generator=g), dim=-1) for _ in range(2))
    return image, text, torch.tensor(25.0)


def single_process_reference(B, D):
    """float64 loss and gradients of the whole batch in one process."""
    image, text, scale = (x.double().requires_grad_() for x in batch(B, D))
    loss = contrastive_loss_reference(image, text, image, text, scale)
    return loss, torch.autograd.grad(loss, (image, text, scale))


def run(rank: int, world: int, port: int, B: int, D: int):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        b = B // world
        image, text, scale = batch(B, D)
        image_local = image[rank * b:(rank + 1) * b].clone().requires_grad_()
        text_local = text[rank * b:(rank + 1) * b].clone().requires_grad_()
        scale.requires_grad_()
        image_all = torch.cat(dist_nn.all_gather(image_local))
        text_all = torch.cat(dist_nn.all_gather(text_local))
        loss = contrastive_loss(image_local, text_local, image_all, text_all, scale, rank * b)
        loss.backward()

        ref_loss, (d_image, d_text, d_scale) = single_process_reference(B, D)
        rows = slice(rank * b, (rank + 1) * b)
        # all_gather's backward sums the ranks' gradients: each rank holds W x the single-process
        # gradient of its rows; the mean over ranks (DDP) of the loss and of d(scale) is exact.
        torch.testing.assert_close(image_local.grad.double(), world * d_image[rows], **TOL)
        torch.testing.assert_close(text_local.grad.double(), world * d_text[rows], **TOL)
        mean = torch.stack([loss.detach(), scale.grad]).double()
        dist.all_reduce(mean)
        mean /= world
        torch.testing.assert_close(mean[0], ref_loss.detach(), **TOL)
        torch.testing.assert_close(mean[1], d_scale, **TOL)
    finally:
        dist.destroy_process_group()
