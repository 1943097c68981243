"""The arrangements megatron-core needs to build and run models on a machine without CUDA.

megatron-core assumes CUDA in a few places that are harmless to redirect on a CPU-only machine:
RoPE and pipeline buffers ask ``torch.cuda.current_device()`` for a device, dist-checkpointing calls
``torch.cuda.synchronize()``, attention forks the CUDA RNG tracker, and the tied output layer of the
last pipeline stage is moved with ``.cuda()``. ``apply_cpu_patches`` points those at the CPU; it does
nothing when CUDA is available, and is idempotent. One fix applies everywhere: megatron-core 0.16's
MoE router refers to ``te_general_gemm`` even when Transformer Engine is absent.
"""

from __future__ import annotations

import contextlib

import torch

_applied = False


def cuda_available() -> bool:
    """True when this process can use a CUDA device."""
    return torch.cuda.is_available()


def fix_megatron_without_te() -> None:
    """megatron-core 0.16 defines ``moe_utils.te_general_gemm`` only when Transformer Engine imports."""
    from megatron.core.transformer.moe import moe_utils

    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None


class _HostStream:
    """The stream megatron-core 0.19's DDP asks for before reducing gradients: on the CPU, nothing to wait on."""

    def wait_event(self, event: object) -> None:
        pass

    def wait_stream(self, stream: object) -> None:
        pass


def apply_cpu_patches() -> None:
    """Make megatron-core's CUDA assumptions harmless on a CPU-only machine (no-op with CUDA)."""
    global _applied
    fix_megatron_without_te()
    if _applied or cuda_available():
        return
    from megatron.core.tensor_parallel.random import initialize_rng_tracker

    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.synchronize = lambda *args, **kwargs: None
    torch.cuda.current_stream = lambda *args, **kwargs: _HostStream()  # 0.19's grad sync waits on it
    initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)  # fork() is a null context
    _applied = True


@contextlib.contextmanager
def tensor_cuda_is_identity():
    """While building models on CPU, ``Tensor.cuda()`` returns the tensor itself (tied PP embeddings)."""
    if cuda_available():
        yield
        return
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = original


def causal_mask(seq_len: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The explicit causal mask megatron-core's local attention expects: bool [1, 1, s, s], True = masked."""
    return torch.triu(torch.ones(seq_len, seq_len, dtype=torch.bool, device=device), diagonal=1)[None, None]


def _is_cuda(value: object) -> bool:
    if isinstance(value, torch.device):
        return value.type == "cuda"
    return isinstance(value, str) and (value == "cuda" or value.startswith("cuda:"))


class _CudaOnCpu(torch.overrides.TorchFunctionMode):
    """Tensors megatron-core's optimizer, grad clipping and schedules create with ``device='cuda'`` go
    to the CPU, ``Tensor.cuda()`` is the tensor itself, and ``Tensor.type()`` names the CUDA type that
    ``clip_grads`` asserts and the mixed-precision/distributed optimizers branch on."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name if name.startswith("torch.cuda.") else name.replace("torch.", "torch.cuda.", 1)
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        if func is torch.Tensor.to and any(_is_cuda(a) for a in args[1:]):
            args = (args[0], *("cpu" if _is_cuda(a) else a for a in args[1:]))
        return func(*args, **kwargs)


@contextlib.contextmanager
def cuda_on_cpu():
    """While training on a CPU-only machine, megatron-core's hard-coded CUDA tensors live on the CPU.

    megatron-core 0.16-0.19 create some tensors with ``device='cuda'`` (optimizer found-inf and
    scale buffers, grad-norm and zero counts in ``clip_grads``, token counts of the pipeline
    schedules, attention masks) and assert CUDA tensor types. No-op with CUDA.
    """
    if cuda_available():
        yield
        return
    apply_cpu_patches()
    with _CudaOnCpu():
        yield
