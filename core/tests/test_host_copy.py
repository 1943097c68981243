"""Device-to-host copies of exported tensors: order, values, pass-through on CPU."""

import pytest
import torch

from bridge_core.conversion.host_copy import to_host


def _items(device: str) -> list[tuple[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(6, 8, generator=gen).to(torch.bfloat16)
    return [
        ("a", base.to(device)),
        ("b.view", base.to(device)[2:4]),  # a view: copied as its own values only
        ("c.transposed", base.to(device).t()),  # non-contiguous
        ("d.fp32", torch.arange(5, dtype=torch.float32, device=device)),
        ("e.empty", torch.empty(0, 3, device=device)),
    ]


def test_cpu_tensors_pass_through_in_order():
    items = _items("cpu")
    out = list(to_host(iter(items)))
    assert [n for n, _ in out] == [n for n, _ in items]
    for (_, got), (_, want) in zip(out, items):
        assert got.data_ptr() == want.data_ptr()  # no copy on the CPU path


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("pin", "in_flight"), [(True, None), (True, 0), (True, 100), (False, None)])
def test_cuda_tensors_arrive_on_host_bit_exact_in_order(pin, in_flight):
    items = _items("cuda")
    out = list(to_host(iter(items), pin_memory=pin, in_flight_bytes=in_flight))
    assert [n for n, _ in out] == [n for n, _ in items]
    for (_, got), (_, want) in zip(out, items):
        assert got.device.type == "cpu" and got.dtype == want.dtype and got.shape == want.shape
        if pin and got.numel():
            assert got.is_pinned()
        assert torch.equal(got, want.cpu())
