"""Tests of the KeOps kernel against dense references, and of its fallback.

KeOps compiles each formula with g++ on first use, about 10 s per formula, and
caches it on disk. These tests use 23 formulas (two kernels, two dtypes,
gradients). On two busy CPU cores a first run took 4.5 minutes, and a run with
a filled cache 15 to 35 seconds.

Tests that need a working KeOps are skipped where it cannot compile. The
fallback tests run everywhere.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sinkshape import (
    DenseKernel,
    DiffusionOperator,
    SparseKernel,
    diffusion,
    keops,
    make_kernel,
)
from sinkshape.keops import (
    KeOpsKernel,
    KeOpsUnavailableWarning,
    keops_available,
    keops_kernel_or_fallback,
)

KEOPS_FAILURE = keops._keops_failure_reason("cpu")
requires_keops = pytest.mark.skipif(
    KEOPS_FAILURE is not None, reason=f"KeOps does not work on the CPU: {KEOPS_FAILURE}"
)

KINDS = ["gaussian", "exponential"]
DTYPES = [torch.float64, torch.float32]

#: Bandwidth in mm for clouds from :func:`ct_like_cloud`: about 40 neighbours
#: within sigma at 2,000 points.
SIGMA = 5.0

#: Largest relative difference allowed between a KeOps product and its dense reference.
RELATIVE_TOLERANCE = 1e-5


def ct_like_cloud(n_points: int, dtype: torch.dtype, *, seed: int = 0) -> torch.Tensor:
    """Return points uniform in a 30 mm cube centred near (220, 150, 100) mm.

    The coordinates lie far from the origin, as CT scanners give them.
    """
    generator = torch.Generator().manual_seed(seed)
    offset = torch.tensor([220.0, 150.0, 100.0], dtype=torch.float64)
    cube = 30.0 * torch.rand(n_points, 3, generator=generator, dtype=torch.float64)
    return (offset + cube).to(dtype)


def smooth_signal(points: torch.Tensor, n_channels: int | None = None) -> torch.Tensor:
    """Return a signal of shape (N,), or (N, C), that varies over a few sigma."""
    centered = points.double() - points.double().mean(dim=0)
    channels = [torch.sin(centered[:, 0] / 7.0) + torch.cos(centered[:, 1] / 5.0)]
    for channel in range(1, n_channels or 1):
        channels.append(torch.sin(centered[:, channel % 3] / (3.0 + channel)))
    signal = torch.stack(channels, dim=1) if n_channels else channels[0]
    return signal.to(points.dtype)


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    difference = (value.double() - reference.double()).norm()
    return float(difference / reference.double().norm())


def dense_marginal_error(operator: DiffusionOperator) -> float:
    """Recompute an operator's marginal error from its dense matrix, in float64."""
    scaling = operator.scaling.detach().double()
    masses = operator.masses.double()
    kernel = operator.kernel.to_dense().detach().double()
    row_sums = scaling * (kernel @ (masses * scaling))
    return float((masses * (row_sums - 1.0).abs()).sum() / masses.sum())


@requires_keops
@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("kind", KINDS)
def test_kernel_products_match_to_dense(kind, dtype):
    points = ct_like_cloud(1000, dtype)
    kernel = KeOpsKernel.from_points(points, SIGMA, kind=kind)
    dense = DenseKernel.from_points(points.double(), SIGMA, kind=kind).to_dense()
    generator = torch.Generator().manual_seed(1)
    v = torch.rand(1000, generator=generator, dtype=torch.float64)

    product = kernel.matvec(v.to(dtype))
    assert product.shape == (1000,)
    assert relative_error(product, dense @ v) <= RELATIVE_TOLERANCE

    log_v = torch.log(v)
    log_product = kernel.log_matvec(log_v.to(dtype))
    log_reference = torch.logsumexp(torch.log(dense) + log_v[None, :], dim=1)
    assert log_product.shape == (1000,)
    assert relative_error(log_product, log_reference) <= RELATIVE_TOLERANCE

    assert relative_error(kernel.to_dense(), dense) <= RELATIVE_TOLERANCE


@requires_keops
def test_float32_product_far_from_origin():
    # 100 m from the origin, float32 coordinates in mm are spaced by 8e-3 mm.
    # Without centring, the product was off by 1.8e-4 relative (measured), far
    # above the tolerance. Centring first keeps the differences exact.
    points = (ct_like_cloud(1000, torch.float64) + 1e5).float()
    kernel = KeOpsKernel.from_points(points, SIGMA)
    dense = DenseKernel.from_points(points.double(), SIGMA).to_dense()
    v = torch.linspace(0.5, 1.5, 1000, dtype=torch.float64)

    product = kernel.matvec(v.float())

    assert relative_error(product, dense @ v) <= RELATIVE_TOLERANCE


@requires_keops
@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("kind", KINDS)
def test_operator_matches_dense_reference(kind, dtype):
    points = ct_like_cloud(2000, dtype)
    operator = DiffusionOperator(KeOpsKernel.from_points(points, SIGMA, kind=kind))
    reference = DiffusionOperator(DenseKernel.from_points(points, SIGMA, kind=kind))
    signal = smooth_signal(points)

    assert relative_error(operator @ signal, reference @ signal) <= RELATIVE_TOLERANCE
    assert relative_error(operator.scaling, reference.scaling) <= RELATIVE_TOLERANCE


@requires_keops
@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("kind", KINDS)
def test_operator_marginal_error_reaches_tol(kind, dtype):
    points = ct_like_cloud(2000, dtype)
    operator = DiffusionOperator(KeOpsKernel.from_points(points, SIGMA, kind=kind))
    tol = operator.result.tol

    assert operator.result.converged
    assert operator.marginal_error <= tol
    # The dense recomputation differs from the solver's own figure by rounding,
    # about 1e-7 in float32.
    assert dense_marginal_error(operator) <= tol + 1e-6


@requires_keops
def test_operator_applies_multichannel_signal():
    points = ct_like_cloud(1000, torch.float64)
    operator = DiffusionOperator(KeOpsKernel.from_points(points, SIGMA))
    signal = smooth_signal(points, n_channels=3)

    smoothed = operator @ signal
    reference = operator.to_dense() @ signal

    assert smoothed.shape == (1000, 3)
    assert relative_error(smoothed, reference) <= RELATIVE_TOLERANCE


@requires_keops
@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("kind", KINDS)
def test_tiny_sigma_gives_identity(kind, dtype):
    # The 8 x 8 x 8 grid has spacing 2 mm and lies far from the origin. sigma is
    # 1e-4 times the spacing, so every kernel value off the diagonal underflows.
    axis = 2.0 * torch.arange(8, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis, axis)
    points = (grid + torch.tensor([220.0, 150.0, 100.0], dtype=torch.float64)).to(dtype)
    operator = DiffusionOperator(KeOpsKernel.from_points(points, 1e-4 * 2.0, kind=kind))
    signal = smooth_signal(points)

    smoothed = operator @ signal

    assert torch.isfinite(operator.scaling).all()
    assert torch.isfinite(smoothed).all()
    assert operator.result.converged
    assert relative_error(smoothed, signal) <= 1e-6


@requires_keops
def test_exponential_gradient_at_duplicate_points():
    # |x_i - x_j| has no derivative at x_i = x_j. The dense kernel uses 0 there,
    # on the diagonal and for duplicated points, and KeOps must agree.
    points = ct_like_cloud(300, torch.float64)
    points = torch.cat([points, points[:5]]).requires_grad_(True)
    log_v = torch.linspace(-1.0, 1.0, 305, dtype=torch.float64)
    kernel = KeOpsKernel.from_points(points, SIGMA, kind="exponential")
    reference = DenseKernel.from_points(points, SIGMA, kind="exponential")

    loss = kernel.log_matvec(log_v).square().sum()
    reference_loss = reference.log_matvec(log_v).square().sum()

    (gradient,) = torch.autograd.grad(loss, points)
    (expected,) = torch.autograd.grad(reference_loss, points)

    assert torch.isfinite(gradient).all()
    assert relative_error(gradient, expected) <= RELATIVE_TOLERANCE


@requires_keops
def test_exponential_double_backward_matches_dense():
    points = ct_like_cloud(300, torch.float64)
    points = torch.cat([points, points[:5]]).requires_grad_(True)
    log_v = torch.linspace(-1.0, 1.0, 305, dtype=torch.float64)
    kernel = KeOpsKernel.from_points(points, SIGMA, kind="exponential")
    reference = DenseKernel.from_points(points, SIGMA, kind="exponential")

    loss = kernel.log_matvec(log_v).square().sum()
    (gradient,) = torch.autograd.grad(loss, points, create_graph=True)
    (hessian_product,) = torch.autograd.grad(gradient.square().sum(), points)

    reference_loss = reference.log_matvec(log_v).square().sum()
    (reference_gradient,) = torch.autograd.grad(
        reference_loss, points, create_graph=True
    )
    (expected,) = torch.autograd.grad(reference_gradient.square().sum(), points)

    assert torch.isfinite(hessian_product).all()
    assert relative_error(hessian_product, expected) <= RELATIVE_TOLERANCE


@requires_keops
def test_operator_gradient_matches_dense():
    # The loss depends on the points through the Sinkhorn loop (log-sum-exp
    # reductions) and through Q f (sum reductions).
    points = ct_like_cloud(300, torch.float64).requires_grad_(True)
    signal = smooth_signal(points.detach())

    operator = DiffusionOperator(KeOpsKernel.from_points(points, SIGMA), tol=1e-10)
    (gradient,) = torch.autograd.grad((operator @ signal).square().sum(), points)

    reference = DiffusionOperator(DenseKernel.from_points(points, SIGMA), tol=1e-10)
    (expected,) = torch.autograd.grad((reference @ signal).square().sum(), points)

    assert relative_error(gradient, expected) <= RELATIVE_TOLERANCE


@pytest.fixture
def without_pykeops(monkeypatch):
    """Make pykeops unimportable and forget the cached KeOps check."""
    monkeypatch.setitem(sys.modules, "pykeops", None)
    monkeypatch.setitem(sys.modules, "pykeops.torch", None)
    monkeypatch.setattr(keops, "_check_results", {})


def test_fallback_without_pykeops_is_dense(without_pykeops):
    points = ct_like_cloud(50, torch.float64)

    with pytest.warns(
        KeOpsUnavailableWarning, match="pykeops cannot be imported"
    ) as record:
        kernel = keops_kernel_or_fallback(points, SIGMA, kind="gaussian")

    assert len(record) == 1
    assert isinstance(kernel, DenseKernel)
    assert kernel.has_log


def test_fallback_above_dense_limit_is_sparse(without_pykeops, monkeypatch):
    monkeypatch.setattr(diffusion, "AUTO_DENSE_MAX_POINTS", 10)
    points = ct_like_cloud(50, torch.float64)

    with pytest.warns(KeOpsUnavailableWarning, match="sparse backend") as record:
        kernel = keops_kernel_or_fallback(
            points, SIGMA, kind="exponential", truncation=1e-6
        )

    assert len(record) == 1
    assert isinstance(kernel, SparseKernel)


def test_make_kernel_keops_falls_back(without_pykeops):
    points = ct_like_cloud(50, torch.float64)

    with pytest.warns(KeOpsUnavailableWarning):
        kernel = make_kernel(points, SIGMA, backend="keops")

    assert isinstance(kernel, DenseKernel)


def test_keops_available_false_without_pykeops(without_pykeops):
    assert keops_available() is False


def test_keops_kernel_without_pykeops_raises(without_pykeops):
    with pytest.raises(ImportError, match="pip install pykeops"):
        KeOpsKernel.from_points(np.zeros((3, 3)), 1.0)


def test_compile_failure_is_checked_once(monkeypatch):
    pytest.importorskip("pykeops")
    monkeypatch.setattr(keops, "_check_results", {})
    calls = []

    def failing_log_matvec(self, log_v):
        calls.append(log_v)
        msg = "[KeOps] Error : compilation of the formula failed\ng++: fatal error"
        raise RuntimeError(msg)

    monkeypatch.setattr(KeOpsKernel, "log_matvec", failing_log_matvec)
    points = ct_like_cloud(50, torch.float64)

    with pytest.warns(KeOpsUnavailableWarning) as record:
        first = keops_kernel_or_fallback(points, SIGMA, kind="gaussian")
        second = keops_kernel_or_fallback(points, SIGMA, kind="gaussian")

    assert len(calls) == 1
    assert isinstance(first, DenseKernel)
    assert isinstance(second, DenseKernel)
    message = str(record[0].message)
    assert "RuntimeError: [KeOps] Error : compilation of the formula failed" in message
    assert "g++" not in message


def test_import_sinkshape_without_pykeops():
    code = (
        "import sys; sys.modules['pykeops'] = None; "
        "import sinkshape, sinkshape.keops; print('imported')"
    )
    repository = Path(__file__).resolve().parents[1]

    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=repository,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "imported"
