"""The contrastive loss with OpenCLIP's `gather_with_grad=True, local_loss=True` semantics.

Each data-parallel rank compares its local rows against the features gathered from every rank, with labels
offset by its rank. The gather keeps the gradient (backward is a reduce-scatter), so after DeepSpeed averages
gradients over ranks they equal the gradient of the single-process loss on the concatenated batch.

Dtypes: the features arrive in the training dtype (fp32, bf16 or fp16) and are gathered in it (gloo and NCCL both
take 16-bit tensors); their gradients go back in it. The logits, softmax and log-sum-exp are always fp32, and so is
the loss. fp32 features run exactly as before. 16-bit features: the Triton loss runs 16-bit tensor-core dots with
fp32 accumulation; the torch path computes fp32 logits from the 16-bit features (`_Fp32Logits`: on CUDA a 16-bit
GEMM with an fp32 output, elsewhere the features upcast, whose products are exact) and rounds the logit gradient to
the feature dtype for its two GEMMs, as autocast and the Triton kernel do.
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
        # 16-bit gradients are summed in fp32 (one rounding, not one per rank), then returned in their dtype
        summed = grad.contiguous().to(torch.promote_types(grad.dtype, torch.float32), copy=True)
        dist.all_reduce(summed, group=ctx.group)
        return summed[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows].to(grad.dtype), None


def gather_with_grad(x: torch.Tensor, group=None) -> torch.Tensor:
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return x
    return _GatherWithGrad.apply(x, group)


class _Fp32Logits(torch.autograd.Function):
    """x @ y.T as fp32 for 16-bit x, y; the gradients come back in their dtype. torch.mm's out_dtype (a 16-bit
    tensor-core GEMM writing fp32) exists on CUDA only, and has no autograd formula: hence this Function."""

    @staticmethod
    def forward(ctx, x, y):
        ctx.save_for_backward(x, y)
        if x.is_cuda:
            return torch.mm(x, y.T, out_dtype=torch.float32)
        return x.float() @ y.float().T

    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        grad = grad.to(x.dtype)
        return grad @ y, grad.T @ x


def clip_loss_torch(image_local, text_local, image_all, text_all, scale, offset: int = 0) -> torch.Tensor:
    """(CE(s I Tᵀ) + CE(s T Iᵀ)) / 2 over the local rows; the torch reference path. fp32 logits for any feature
    dtype; `scale` is fp32."""
    labels = torch.arange(image_local.shape[0], device=image_local.device) + offset
    if image_local.dtype == torch.float32:
        logits_i = scale * image_local @ text_all.T
        logits_t = scale * text_local @ image_all.T
    else:
        logits_i = scale * _Fp32Logits.apply(image_local, text_all)
        logits_t = scale * _Fp32Logits.apply(text_local, image_all)
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
    """`contrastive_loss` over a data-parallel group, as a callable on the model's output (image features, text
    features, scale). The features stay in the training dtype (see the module's docstring), the scale and the loss
    are fp32. The trainer calls it at pp = 1; at pp > 1 it is the pipeline's loss_fn on the last stage (DeepSpeed
    passes labels, which it ignores)."""

    def __init__(self, group, use_triton: bool):
        self.group, self.use_triton = group, use_triton

    def __call__(self, outputs, _labels=None) -> torch.Tensor:
        image, text, scale = outputs
        return contrastive_loss(image, text, scale.float(), group=self.group, use_triton=self.use_triton)
