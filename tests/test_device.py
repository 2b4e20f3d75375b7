"""--device cuda gives the same certified intervals as the CPU; skipped where torch sees no CUDA GPU."""

from __future__ import annotations

import math

import pytest
import torch

from lipcheck.model import ConvGeometry
from lipcheck.spectral import conv as conv_module
from lipcheck.spectral.dense import certify
from tests.reference import exact_sigma

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CASES = [
    # (C_out, C_in, kernel, stride, input side, groups): explicit operators small enough for float64 SVD
    (8, 4, 3, 1, 9, 1),
    (6, 6, 3, 2, 10, 2),
    (4, 3, 5, 1, 8, 1),
]


@pytest.mark.parametrize("case", CASES)
def test_conv_interval_on_cuda_contains_the_norm_and_matches_the_cpu(case: tuple[int, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    c_out, c_in, k, s, side, groups = case
    g = torch.Generator().manual_seed(sum(case))
    weight = torch.randn(c_out, c_in // groups, k, k, generator=g, dtype=torch.float64)
    geometry = ConvGeometry((s, s), (k // 2,) * 4, (1, 1), groups)
    exact = exact_sigma(conv_module.explicit_matrix(weight, conv_module.resolve(weight, geometry, (side, side), False), (side, side), False))
    monkeypatch.setattr(conv_module, "EXPLICIT_MAX_SIDE", 0)  # the Fourier path, not the explicit matrix
    found = {d: conv_module.operator_interval(weight, geometry, (side, side), False, tol=1e-6, max_iter=300, seed=0, device=d) for d in ("cpu", "cuda")}
    for interval in found.values():
        assert interval.lower <= exact * (1 + 1e-12) and interval.upper >= exact * (1 - 1e-12)
    assert math.isclose(found["cuda"].upper, found["cpu"].upper, rel_tol=1e-6)


def test_dense_certificate_on_cuda_contains_the_svd_value() -> None:
    g = torch.Generator().manual_seed(3)
    w = torch.randn(300, 200, generator=g, dtype=torch.float64)
    est = certify(w, tol=1e-6, max_iter=300, seed=0, device="cuda")
    exact = exact_sigma(w)
    assert est.sigma <= exact <= est.upper
    assert est.upper - est.sigma <= 1e-6 * est.upper


def test_lower_bound_of_a_module_on_cuda_is_attained_and_near_the_norm() -> None:
    from lipcheck.graph.lower import torch_lower

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8, bias=False), torch.nn.Linear(8, 3, bias=False)).cuda()
    exact = exact_sigma((net[1].weight.double() @ net[0].weight.double()).detach().cpu())
    lower = torch_lower(net, ((1, 6),), seed=0)
    assert lower is not None and 0.99 * exact <= lower <= exact * (1 + 1e-9)
    assert next(net.parameters()).device.type == "cuda" and next(net.parameters()).dtype == torch.float32


def test_inspect_with_device_cuda_matches_the_cpu_on_the_sample_cnn() -> None:
    from lipcheck.api import inspect
    from lipcheck.settings import Settings

    on = {d: inspect("sample_models/cnn.onnx", settings=Settings(device=d, lower=False)) for d in ("cpu", "cuda")}
    for a, b in zip(on["cpu"].layers, on["cuda"].layers):
        assert a.lipschitz is not None and b.lipschitz is not None
        assert math.isclose(a.lipschitz.upper, b.lipschitz.upper, rel_tol=1e-5)
    assert on["cpu"].bound.upper is not None and on["cuda"].bound.upper is not None
    assert math.isclose(on["cpu"].bound.upper, on["cuda"].bound.upper, rel_tol=1e-5)
