"""Run by test_olmo_norms.py under torchrun (2 ranks, gloo): ``FullWidthQKNorm`` on half the heads per
rank equals the whole norm on one process, forward and backward (input and weight gradients).

Rank 0 writes ``{"out": max |Δ|, "x_grad": ..., "w_grad": ...}`` over both ranks to ``argv[1]``.
"""

from __future__ import annotations

import json
import sys


def main(out_path: str) -> int:
    import torch
    import torch.distributed as dist

    from bridge_olmo.modeling_olmo.norms import FullWidthQKNorm

    dist.init_process_group("gloo")
    rank, heads, d = dist.get_rank(), 4, 8
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 2, heads, d, generator=gen)
    weight = 1 + 0.1 * torch.randn(heads * d, generator=gen)
    upstream = torch.randn(5, 2, heads, d, generator=gen)

    full = FullWidthQKNorm(heads, heads, d, 1e-6, None)
    full.weight.data.copy_(weight)
    xf = x.clone().requires_grad_()
    (full(xf) * upstream).sum().backward()

    half, rows = heads // 2, slice(rank * heads // 2 * d, (rank + 1) * heads // 2 * d)
    local = FullWidthQKNorm(heads, half, d, 1e-6, dist.group.WORLD)
    local.weight.data.copy_(weight[rows])
    xl = x[:, :, rank * half : (rank + 1) * half].clone().requires_grad_()
    yl = local(xl)
    (yl * upstream[:, :, rank * half : (rank + 1) * half]).sum().backward()

    diffs = torch.tensor(
        [
            (yl - full(x)[:, :, rank * half : (rank + 1) * half]).abs().max().item(),
            (xl.grad - xf.grad[:, :, rank * half : (rank + 1) * half]).abs().max().item(),
            (local.weight.grad - full.weight.grad[rows]).abs().max().item(),
        ]
    )
    dist.all_reduce(diffs, op=dist.ReduceOp.MAX)
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(dict(zip(("out", "x_grad", "w_grad"), diffs.tolist(), strict=True)), f)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
