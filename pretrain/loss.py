"""The contrastive loss with OpenCLIP's `gather_with_grad=True, local_loss=True` semantics.

Each data-parallel rank compares its local rows against the features gathered from every rank, with labels
offset by its rank. The gather keeps the gradient (backward is a reduce-scatter), so after DeepSpeed averages
gradients over ranks they equal the gradient of the single-process loss on the concatenated batch.
"""
import torch
import torch.distributed as dist
import torch.nn.functional as F


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for this rank's rows. Written here because
    torch.distributed.nn.all_gather's backward scatters with group ranks as global ranks, which fails on any
    subgroup (our data-parallel group under tensor or pipeline parallelism) with gloo."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group, ctx.rank, ctx.rows = group, dist.get_rank(group), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows], None


def gather_with_grad(x: torch.Tensor, group=None) -> torch.Tensor:
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return x
    return _GatherWithGrad.apply(x, group)


def clip_loss_torch(image_local, text_local, image_all, text_all, scale, offset: int = 0) -> torch.Tensor:
    """(CE(s I Tᵀ) + CE(s T Iᵀ)) / 2 over the local rows; the torch reference path."""
    labels = torch.arange(image_local.shape[0], device=image_local.device) + offset
    logits_i = scale * image_local @ text_all.T
    logits_t = scale * text_local @ image_all.T
    return (F.cross_entropy(logits_i, labels) + F.cross_entropy(logits_t, labels)) / 2


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, group=None,
                     use_triton: bool = False) -> torch.Tensor:
    """Loss of this rank's normalised features against all ranks' features in `group`."""
    rank = dist.get_rank(group) if dist.is_initialized() else 0
    image_all, text_all = gather_with_grad(image, group), gather_with_grad(text, group)
    offset = rank * image.shape[0]
    if use_triton:
        from kernels import contrastive_loss as fused
        return fused(image, text, image_all, text_all, scale, offset=offset)
    return clip_loss_torch(image, text, image_all, text_all, scale, offset)


class ContrastiveLoss:
    """`contrastive_loss` in fp32 over a data-parallel group, as a callable on the model's output
    (image features, text features, scale). The trainer calls it at pp = 1; at pp > 1 it is the pipeline's
    loss_fn on the last stage (DeepSpeed passes labels, which it ignores)."""

    def __init__(self, group, use_triton: bool):
        self.group, self.use_triton = group, use_triton

    def __call__(self, outputs, _labels=None) -> torch.Tensor:
        image, text, scale = outputs
        return contrastive_loss(image.float(), text.float(), scale.float(), group=self.group,
                                use_triton=self.use_triton)
