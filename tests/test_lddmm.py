"""LDDMM with the Sinkhorn-normalized kernel: translations, derivatives, backends."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import pyvista as pv
import torch

from sinkshape.errors import InputError
from sinkshape.lddmm import KernelMetric, WarmStart, shoot
from sinkshape.lddmm.control import farthest_point_sampling, lumped_masses
from sinkshape.mesh import vertex_areas

VELOCITY = torch.tensor([1.0, 0.5, -0.25], dtype=torch.float64)


@pytest.fixture(scope="module")
def sphere():
    """Unit icosphere with 162 vertices and its vertex areas."""
    mesh = pv.Icosphere(radius=1.0, nsub=2)
    points = torch.tensor(mesh.points, dtype=torch.float64)
    return points, vertex_areas(points, mesh.regular_faces)


def mean_radius(points: torch.Tensor) -> float:
    return float((points - points.mean(dim=0)).norm(dim=1).mean())


def random_state(n_points: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    points = torch.randn(n_points, 3, generator=generator, dtype=torch.float64)
    masses = 0.5 + torch.rand(n_points, generator=generator, dtype=torch.float64)
    momenta = masses[:, None] * torch.randn(n_points, 3, generator=generator, dtype=torch.float64)
    return points, momenta, masses


# --- uniform momentum: exact translation ---------------------------------------------------


def test_uniform_momentum_translates_sphere(sphere):
    points, masses = sphere
    metric = KernelMetric(0.5, tol=1e-10)
    times = [0.0, 0.5, 1.0, 2.0, 3.0]

    path = shoot(metric, points, masses[:, None] * VELOCITY, masses, times=times)

    for index, time in enumerate(times):
        error = (path.points[index] - (points + time * VELOCITY)).norm(dim=1).max()
        assert error <= 1e-6 * time + 1e-12, f"t={time}: position error {float(error):.2e}"


def test_uniform_momentum_velocity_error(sphere):
    points, masses = sphere
    metric = KernelMetric(0.5, tol=1e-10)
    path = shoot(metric, points, masses[:, None] * VELOCITY, masses, times=[0.0, 1.0, 2.0, 3.0])

    errors = [
        float((metric.product(q, p, masses) - VELOCITY).norm(dim=1).max())
        for q, p in zip(path.control_points, path.momenta)
    ]

    assert max(errors) <= 1e-6


def test_uniform_momentum_stays_uniform(sphere):
    points, masses = sphere
    metric = KernelMetric(0.5, tol=1e-10)
    momenta = masses[:, None] * VELOCITY

    path = shoot(metric, points, momenta, masses, times=[3.0])

    assert torch.allclose(path.momenta[-1], momenta, rtol=0.0, atol=1e-9)


def test_raw_kernel_changes_radius(sphere):
    points, masses = sphere
    metric = KernelMetric(0.5, normalization="none")

    path = shoot(metric, points, masses[:, None] * VELOCITY, masses, times=[3.0])

    change = abs(mean_radius(path.points[-1]) / mean_radius(points) - 1.0)
    assert change > 0.5


def test_normalized_kernel_keeps_radius(sphere):
    points, masses = sphere
    metric = KernelMetric(0.5, tol=1e-10)

    path = shoot(metric, points, masses[:, None] * VELOCITY, masses, times=[3.0])

    assert abs(mean_radius(path.points[-1]) - mean_radius(points)) <= 1e-9


def test_exponential_kernel_translates(sphere):
    points, masses = sphere
    metric = KernelMetric(0.5, kind="exponential", tol=1e-10)

    path = shoot(metric, points, masses[:, None] * VELOCITY, masses, times=[2.0])

    error = (path.points[-1] - (points + 2.0 * VELOCITY)).norm(dim=1).max()
    assert error <= 1e-6


def test_extrapolation_before_zero(sphere):
    points, masses = sphere
    metric = KernelMetric(0.5, tol=1e-10)

    path = shoot(metric, points, masses[:, None] * VELOCITY, masses, times=[-1.0, 0.0, 1.0])

    error = (path.at(-1.0) - (points - VELOCITY)).norm(dim=1).max()
    assert error <= 1e-6


@pytest.mark.parametrize("backend", ["dense", "sparse"])
def test_control_points_translate_shape(sphere, backend):
    points, masses = sphere
    control_index = torch.from_numpy(farthest_point_sampling(points, 30))
    control = points[control_index] * 1.05
    control_masses = lumped_masses(points, masses, control)
    metric = KernelMetric(0.5, backend=backend, tol=1e-10)

    path = shoot(
        metric,
        control,
        control_masses[:, None] * VELOCITY,
        control_masses,
        points=points,
        times=[0.0, 2.0],
    )

    error = (path.at(2.0) - (points + 2.0 * VELOCITY)).norm(dim=1).max()
    assert error <= 1e-6


@pytest.mark.parametrize("backend", ["dense", "sparse"])
def test_far_points_translate(sphere, backend):
    points, masses = sphere
    far = torch.tensor([[30.0, 0.0, 0.0], [0.0, -50.0, 10.0]], dtype=torch.float64)
    metric = KernelMetric(0.5, backend=backend, tol=1e-10)

    path = shoot(metric, points, masses[:, None] * VELOCITY, masses, points=far, times=[1.0])

    error = (path.at(1.0) - (far + VELOCITY)).norm(dim=1).max()
    assert error <= 1e-6


def test_control_masses_sum_to_area(sphere):
    points, masses = sphere
    control = points[torch.from_numpy(farthest_point_sampling(points, 20))]

    control_masses = lumped_masses(points, masses, control)

    assert torch.isclose(control_masses.sum(), masses.sum())
    assert bool((control_masses > 0).all())


# --- derivatives ----------------------------------------------------------------------------


def test_product_gradcheck():
    points, momenta, masses = random_state(12)
    metric = KernelMetric(0.8, tol=1e-12, max_iter=500)

    def product(q, p):
        return metric.product(q, p, masses)

    inputs = (points.requires_grad_(), momenta.requires_grad_())
    assert torch.autograd.gradcheck(product, inputs)


def test_product_gradgradcheck():
    points, momenta, masses = random_state(12)
    metric = KernelMetric(0.8, tol=1e-12, max_iter=500)

    def product(q, p):
        return metric.product(q, p, masses)

    inputs = (points.requires_grad_(), momenta.requires_grad_())
    assert torch.autograd.gradgradcheck(product, inputs)


def test_exponential_product_gradgradcheck():
    points, momenta, masses = random_state(10, seed=1)
    metric = KernelMetric(0.8, kind="exponential", tol=1e-12, max_iter=500)

    def product(q, p):
        return metric.product(q, p, masses)

    inputs = (points.requires_grad_(), momenta.requires_grad_())
    assert torch.autograd.gradgradcheck(product, inputs)


@pytest.mark.parametrize("backend", ["dense", "sparse"])
def test_momentum_rate_is_hamiltonian_gradient(backend):
    points, momenta, masses = random_state(80)
    exact = KernelMetric(0.8, tol=1e-13, max_iter=2000)
    q = points.clone().requires_grad_()
    (gradient,) = torch.autograd.grad(exact.hamiltonian(q, momenta, masses), q)

    # Warm start from a nearby configuration, as along a geodesic: few Sinkhorn
    # iterations, yet dp/dt must still be the full derivative of H.
    metric = KernelMetric(0.8, backend=backend, tol=1e-8, truncation=1e-12)
    warm_start = WarmStart()
    metric.hamiltonian_system(points + 0.05, momenta, masses, warm_start=warm_start)
    system = metric.hamiltonian_system(points, momenta, masses, warm_start=warm_start)

    error = (system.momentum_rate + gradient).norm() / gradient.norm()
    assert error <= 1e-6


def test_endpoint_gradient_matches_finite_differences():
    points, momenta, masses = random_state(20, seed=2)
    target = torch.randn(20, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    metric = KernelMetric(0.8, tol=1e-11)

    def loss(p):
        path = shoot(metric, points, p, masses, n_steps=4)
        return ((path.at(1.0) - target) ** 2).sum()

    p = momenta.clone().requires_grad_()
    (gradient,) = torch.autograd.grad(loss(p), p)
    direction = torch.randn(20, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    step = 1e-6
    with torch.no_grad():
        finite_difference = (loss(momenta + step * direction) - loss(momenta - step * direction)) / (
            2 * step
        )

    analytic = (gradient * direction).sum()
    assert torch.isclose(analytic, finite_difference, rtol=1e-6)


def test_hamiltonian_nearly_conserved():
    points, momenta, masses = random_state(40, seed=5)
    metric = KernelMetric(1.0, tol=1e-10)

    path = shoot(metric, points, 0.3 * momenta, masses, times=[0.0, 1.0], n_steps=20, method="rk4")

    drift = abs(float(path.hamiltonian[1] / path.hamiltonian[0]) - 1.0)
    assert drift <= 1e-5


# --- backends and inputs ---------------------------------------------------------------------


def test_sparse_product_matches_dense():
    points, momenta, masses = random_state(60, seed=6)
    dense = KernelMetric(0.7, tol=1e-10).product(points, momenta, masses)

    sparse = KernelMetric(0.7, backend="sparse", truncation=1e-12, tol=1e-10).product(
        points, momenta, masses
    )

    assert torch.allclose(sparse, dense, rtol=0.0, atol=1e-8)


def test_keops_product_matches_dense():
    keops = pytest.importorskip("sinkshape.keops")
    if not keops.keops_available("cpu"):
        pytest.skip("KeOps cannot compile on this machine")
    points, momenta, masses = random_state(40, seed=7)
    dense = KernelMetric(0.7, tol=1e-10).product(points, momenta, masses)

    other = KernelMetric(0.7, backend="keops", tol=1e-10).product(points, momenta, masses)

    assert torch.allclose(other, dense, rtol=0.0, atol=1e-10)


def test_float32_translation(sphere):
    points, masses = sphere
    points32, masses32 = points.float(), masses.float()
    metric = KernelMetric(0.5)

    path = shoot(metric, points32, masses32[:, None] * VELOCITY.float(), masses32, times=[1.0])

    error = (path.at(1.0) - (points32 + VELOCITY.float())).norm(dim=1).max()
    assert error <= 1e-4


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kind": "cauchy"}, "kind must be"),
        ({"normalization": "rows"}, "normalization must be"),
        ({"backend": "graph"}, "backend must be"),
        ({"max_iter": 0}, "max_iter must be"),
    ],
)
def test_metric_rejects_options(options, message):
    with pytest.raises(InputError, match=message):
        KernelMetric(1.0, **options)


def test_shoot_rejects_mismatched_momenta(sphere):
    points, masses = sphere

    with pytest.raises(InputError, match="momenta must have shape"):
        shoot(KernelMetric(0.5), points, points[:10], masses)


def test_shoot_rejects_unknown_method(sphere):
    points, masses = sphere

    with pytest.raises(InputError, match="method must be one of"):
        shoot(KernelMetric(0.5), points, 0 * points, masses, method="leapfrog")


def test_path_rejects_unknown_time(sphere):
    points, masses = sphere
    path = shoot(KernelMetric(0.5), points, 0 * points, masses, times=[0.0, 1.0])

    with pytest.raises(InputError, match="not on the path"):
        path.at(0.5)


def test_core_imports_no_skshapes():
    code = (
        "import sys, sinkshape, sinkshape.lddmm, sinkshape.registration, sinkshape.transforms\n"
        "import sinkshape.cli.register\n"
        "loaded = [name for name in ('skshapes', 'pykeops') if name in sys.modules]\n"
        "assert not loaded, loaded\n"
    )

    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)

    assert completed.returncode == 0, completed.stderr


# --- scikit-shapes model ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def skshapes_sphere():
    sks = pytest.importorskip("skshapes")
    return sks.PolyData(pv.Icosphere(radius=1.0, nsub=2))


def test_skshapes_model_validates(skshapes_sphere):
    sks = pytest.importorskip("skshapes")
    from sinkshape.lddmm import NormalizedKernelDeformation

    sks.validate_polydata_morphing_model(NormalizedKernelDeformation(sigma=0.5, n_steps=3), skshapes_sphere)


def test_skshapes_registration_translates(skshapes_sphere):
    sks = pytest.importorskip("skshapes")
    from sinkshape.lddmm import NormalizedKernelDeformation

    shift = torch.tensor([0.3, 0.1, 0.0])
    target = skshapes_sphere.copy()
    target.points = skshapes_sphere.points + shift
    model = NormalizedKernelDeformation(sigma=0.5, n_steps=4)
    registration = sks.Registration(
        model=model, loss=sks.L2Loss(), n_iter=3, regularization_weight=1e-4, gpu=False
    )

    registration.fit(source=skshapes_sphere, target=target)
    extrapolated = model.morph(skshapes_sphere, registration.parameter_, final_time=2.0)

    error = (extrapolated.morphed_shape.points - (skshapes_sphere.points + 2 * shift)).norm(dim=1)
    assert float(error.max()) <= 1e-3


def test_skshapes_control_points_translate(skshapes_sphere):
    pytest.importorskip("skshapes")
    from sinkshape.lddmm import NormalizedKernelDeformation

    shape = skshapes_sphere.copy()
    shape.control_points = shape.resample(n_points=40)
    model = NormalizedKernelDeformation(sigma=0.5, n_steps=4, control_points=True)
    masses = model.control_masses(shape)
    momenta = masses[:, None] * torch.tensor([0.2, 0.0, 0.1])

    output = model.morph(shape, momenta, return_path=True, final_time=2.0)

    expected = shape.points + 2 * torch.tensor([0.2, 0.0, 0.1])
    assert float((output.morphed_shape.points - expected).norm(dim=1).max()) <= 1e-4
    assert len(output.path) == 9


def test_skshapes_model_rejects_wrong_parameter(skshapes_sphere):
    pytest.importorskip("skshapes")
    from sinkshape.lddmm import NormalizedKernelDeformation

    model = NormalizedKernelDeformation(sigma=0.5)

    with pytest.raises(InputError, match="parameter must have shape"):
        model.morph(skshapes_sphere, torch.zeros(3, 3))


def test_skshapes_model_copy_keeps_settings():
    pytest.importorskip("skshapes")
    from sinkshape.lddmm import NormalizedKernelDeformation

    model = NormalizedKernelDeformation(sigma=0.25, n_steps=7, kernel="exponential")

    copied = model.copy()

    assert (copied.sigma, copied.n_steps, copied.kernel) == (0.25, 7, "exponential")


def test_farthest_point_sampling_spreads():
    points = np.array([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [10.0, 0.0, 0.0], [5.0, 0.0, 0.0]])

    chosen = farthest_point_sampling(points, 3)

    assert chosen.tolist() == [0, 2, 3]
