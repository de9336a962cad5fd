"""Specification of the diffusion operator (sinkshape.diffusion)."""

import warnings

import numpy as np
import pytest
import pyvista
import torch
from scipy.spatial.distance import pdist

from sinkshape import (
    DenseKernel,
    DiffusionOperator,
    InputError,
    SinkhornConvergenceWarning,
    SparseKernel,
    diffusion_operator,
    make_kernel,
    mesh_graph_kernel,
)

DTYPES = [torch.float32, torch.float64]
BACKENDS = [DenseKernel, SparseKernel]


def uniform_cloud(n_points, dim=3, *, seed=0):
    return np.random.default_rng(seed).uniform(size=(n_points, dim))


def random_masses(n_points, *, seed=1):
    return np.random.default_rng(seed).uniform(0.2, 5.0, size=n_points)


def random_signal(*shape, seed=2):
    return np.random.default_rng(seed).normal(size=shape)


# --- operator properties --------------------------------------------------------------


@pytest.fixture(scope="module")
def gaussian_operator():
    """Q of a Gaussian kernel with non-uniform masses, solved to 1e-13 in float64."""
    points = uniform_cloud(300)
    kernel = DenseKernel.from_points(points, 0.15)
    return DiffusionOperator(kernel, random_masses(300), tol=1e-13)


@pytest.fixture(scope="module")
def gaussian_default_tol():
    """The same Q solved to the default float64 tol, 1e-6."""
    points = uniform_cloud(300)
    return DiffusionOperator(DenseKernel.from_points(points, 0.15), random_masses(300))


def test_operator_self_adjoint_for_masses(gaussian_default_tol):
    q = gaussian_default_tol.to_dense()
    mass_q = gaussian_default_tol.masses[:, None] * q

    torch.testing.assert_close(
        mass_q, mass_q.T, rtol=0, atol=1e-15 * float(mass_q.max())
    )


def test_operator_non_negative(gaussian_default_tol):
    assert float(gaussian_default_tol.to_dense().min()) >= 0.0


def test_operator_keeps_constants(gaussian_default_tol):
    q = gaussian_default_tol.to_dense()
    masses = gaussian_default_tol.masses
    deviation = (masses * (q.sum(dim=1) - 1).abs()).sum() / masses.sum()

    assert float(deviation) <= 1e-6
    assert gaussian_default_tol.marginal_error == pytest.approx(
        float(deviation), rel=1e-6
    )


def test_operator_keeps_total_mass(gaussian_operator):
    masses = gaussian_operator.masses.numpy()
    signal = random_signal(300)

    smoothed = gaussian_operator @ signal

    assert masses @ smoothed == pytest.approx(masses @ signal, rel=1e-6)


def test_total_mass_error_bounded_by_tol(gaussian_default_tol):
    # Because M Q is symmetric, <m, Q f> - <m, f> = sum_j m_j f_j ((Q 1)_j - 1).
    # The marginal error therefore bounds it by tol * sum(m) * max|f|.
    masses = gaussian_default_tol.masses.numpy()
    signal = random_signal(300)
    bound = gaussian_default_tol.marginal_error * masses.sum() * np.abs(signal).max()

    smoothed = gaussian_default_tol @ signal

    assert abs(masses @ smoothed - masses @ signal) <= bound * (1 + 1e-9)


def test_operator_column_mass_is_one(gaussian_default_tol):
    # No central node bias: sum_i m_i Q_ij / m_j = 1 for every j.
    q = gaussian_default_tol.to_dense()
    masses = gaussian_default_tol.masses

    received = (masses[:, None] * q).sum(dim=0) / masses

    torch.testing.assert_close(
        received, torch.ones(300, dtype=torch.float64), rtol=0, atol=1e-4
    )


def test_operator_spectrum_in_unit_interval(gaussian_operator):
    root = torch.sqrt(gaussian_operator.masses)
    q = gaussian_operator.to_dense()
    symmetric = root[:, None] * q / root[None, :]

    eigenvalues = np.linalg.eigvalsh(((symmetric + symmetric.T) / 2).numpy())

    assert eigenvalues.min() >= -1e-10
    assert eigenvalues.max() <= 1 + 1e-10
    assert eigenvalues.max() == pytest.approx(1.0, abs=1e-10)


def test_graph_operator_spectrum_in_unit_interval():
    sphere = pyvista.Sphere(theta_resolution=20, phi_resolution=20)
    triangles = np.asarray(sphere.faces).reshape(-1, 4)[:, 1:]
    operator = DiffusionOperator(
        mesh_graph_kernel(np.asarray(sphere.points, dtype=np.float64), triangles),
        random_masses(sphere.n_points),
        tol=1e-13,
    )

    root = torch.sqrt(operator.masses)
    symmetric = root[:, None] * operator.to_dense() / root[None, :]

    eigenvalues = np.linalg.eigvalsh(((symmetric + symmetric.T) / 2).numpy())

    assert eigenvalues.min() >= -1e-10
    assert eigenvalues.max() <= 1 + 1e-10


def test_operator_marginal_error_property(gaussian_default_tol):
    assert gaussian_default_tol.marginal_error == gaussian_default_tol.result.errors[-1]
    assert gaussian_default_tol.n_iter == gaussian_default_tol.result.n_iter


def test_to_dense_matches_apply(gaussian_default_tol):
    signal = random_signal(300)

    np.testing.assert_allclose(
        gaussian_default_tol @ signal,
        gaussian_default_tol.to_dense().numpy() @ signal,
        rtol=1e-12,
        atol=1e-14,
    )


# --- scipy linear operators -----------------------------------------------------------


def test_linear_operator_matvec(gaussian_default_tol):
    linear = gaussian_default_tol.as_linear_operator()
    dense = gaussian_default_tol.to_dense().numpy()
    signal = random_signal(300)

    np.testing.assert_allclose(
        linear.matvec(signal), dense @ signal, rtol=1e-12, atol=1e-14
    )


def test_linear_operator_matmat(gaussian_default_tol):
    linear = gaussian_default_tol.as_linear_operator()
    dense = gaussian_default_tol.to_dense().numpy()
    block = random_signal(300, 3)

    np.testing.assert_allclose(linear @ block, dense @ block, rtol=1e-12, atol=1e-14)


def test_linear_operator_rmatvec(gaussian_default_tol):
    linear = gaussian_default_tol.as_linear_operator()
    dense = gaussian_default_tol.to_dense().numpy()
    vector = random_signal(300)

    np.testing.assert_allclose(
        linear.rmatvec(vector), dense.T @ vector, rtol=1e-6, atol=1e-12
    )


def test_linear_operator_rmatmat(gaussian_default_tol):
    # scipy applies the transpose to a block one (N, 1) column at a time.
    linear = gaussian_default_tol.as_linear_operator()
    dense = gaussian_default_tol.to_dense().numpy()
    block = random_signal(300, 3)

    np.testing.assert_allclose(linear.T @ block, dense.T @ block, rtol=1e-6, atol=1e-12)


def test_symmetric_linear_operator_is_symmetric(gaussian_default_tol):
    symmetric = gaussian_default_tol.symmetric_linear_operator()

    matrix = symmetric @ np.eye(300)

    np.testing.assert_allclose(matrix, matrix.T, rtol=0, atol=1e-14)


def test_symmetric_linear_operator_matches_dense(gaussian_default_tol):
    symmetric = gaussian_default_tol.symmetric_linear_operator()
    root = np.sqrt(gaussian_default_tol.masses.numpy())
    expected = root[:, None] * gaussian_default_tol.to_dense().numpy() / root[None, :]
    vector = random_signal(300)

    np.testing.assert_allclose(
        symmetric.matvec(vector), expected @ vector, rtol=1e-12, atol=1e-14
    )


# --- apply: shapes, steps, types ------------------------------------------------------


def test_apply_columns_match_vectors(gaussian_default_tol):
    block = random_signal(300, 4)

    smoothed = gaussian_default_tol @ block

    assert smoothed.shape == (300, 4)
    for column in range(4):
        np.testing.assert_allclose(
            smoothed[:, column],
            gaussian_default_tol @ block[:, column],
            rtol=1e-12,
            atol=1e-14,
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_apply_columns_match_vectors_float32(backend):
    points = uniform_cloud(300).astype(np.float32)
    operator = DiffusionOperator(backend.from_points(points, 0.15))
    block = random_signal(300, 4).astype(np.float32)

    smoothed = operator @ block

    for column in range(4):
        np.testing.assert_allclose(
            smoothed[:, column], operator @ block[:, column], rtol=1e-5, atol=1e-6
        )


def test_apply_steps_repeat(gaussian_default_tol):
    signal = random_signal(300)
    expected = signal
    for _ in range(3):
        expected = gaussian_default_tol @ expected

    smoothed = gaussian_default_tol.apply(signal, steps=3)

    np.testing.assert_allclose(smoothed, expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(
        gaussian_default_tol.smooth(signal, steps=3), expected, rtol=1e-12
    )


def test_apply_zero_steps_is_identity(gaussian_default_tol):
    signal = random_signal(300)

    np.testing.assert_array_equal(gaussian_default_tol.apply(signal, steps=0), signal)


@pytest.mark.parametrize("steps", [-1, 1.5, "2"])
def test_apply_invalid_steps_raise(gaussian_default_tol, steps):
    with pytest.raises(InputError, match="steps"):
        gaussian_default_tol.apply(random_signal(300), steps=steps)


@pytest.mark.parametrize("shape", [(299,), (300, 2, 2), (2, 300)])
def test_apply_wrong_shape_raises(gaussian_default_tol, shape):
    with pytest.raises(InputError, match="300"):
        gaussian_default_tol @ np.zeros(shape)


def test_apply_numpy_in_numpy_out(gaussian_default_tol):
    assert isinstance(gaussian_default_tol @ random_signal(300), np.ndarray)


def test_apply_list_in_numpy_out(gaussian_default_tol):
    assert isinstance(gaussian_default_tol @ list(random_signal(300)), np.ndarray)


def test_apply_torch_in_torch_out(gaussian_default_tol):
    signal = torch.tensor(random_signal(300))

    smoothed = gaussian_default_tol @ signal

    assert isinstance(smoothed, torch.Tensor)
    torch.testing.assert_close(
        smoothed, torch.from_numpy(gaussian_default_tol @ signal.numpy())
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_operator_stays_float32(backend):
    operator = DiffusionOperator(
        backend.from_points(uniform_cloud(200).astype(np.float32), 0.2)
    )

    numpy_out = operator @ random_signal(200)
    torch_out = operator @ torch.tensor(random_signal(200))

    assert operator.scaling.dtype == torch.float32
    assert operator.masses.dtype == torch.float32
    assert numpy_out.dtype == np.float32
    assert torch_out.dtype == torch.float32


def test_operator_warm_start(gaussian_default_tol):
    warm = DiffusionOperator(
        gaussian_default_tol.kernel,
        gaussian_default_tol.masses,
        init=gaussian_default_tol.log_scaling,
    )

    assert warm.n_iter == 0


# --- masses ---------------------------------------------------------------------------


def test_masses_default_uniform():
    operator = DiffusionOperator(DenseKernel.from_points(uniform_cloud(40), 0.3))

    torch.testing.assert_close(
        operator.masses, torch.full((40,), 1 / 40, dtype=torch.float64)
    )


def test_masses_column_vector_accepted():
    operator = DiffusionOperator(
        DenseKernel.from_points(uniform_cloud(40), 0.3), random_masses(40)[:, None]
    )

    assert operator.masses.shape == (40,)


def test_masses_scale_invariant():
    # Multiplying all masses by c divides lambda by sqrt(c) and leaves Q unchanged.
    kernel = DenseKernel.from_points(uniform_cloud(100), 0.2)
    masses = random_masses(100)

    operator = DiffusionOperator(kernel, masses, tol=1e-13)
    scaled = DiffusionOperator(kernel, 1000.0 * masses, tol=1e-13)

    torch.testing.assert_close(
        scaled.to_dense(), operator.to_dense(), rtol=1e-10, atol=1e-14
    )


@pytest.mark.parametrize(
    ("masses", "fragment"),
    [
        (np.zeros(40), "point 0 has mass 0.0"),
        (np.r_[np.ones(39), -1.0], "point 39 has mass -1.0"),
        (np.r_[np.ones(20), np.nan, np.ones(19)], "point 20 has mass nan"),
        (np.r_[np.ones(39), np.inf], "point 39 has mass inf"),
        (np.ones(39), r"shape \(40,\)"),
        (np.ones((40, 2)), r"shape \(40,\)"),
        (np.array(["a"] * 40), "masses"),
        (torch.ones(40, dtype=torch.float16), "float16"),
    ],
)
def test_masses_invalid_raise(masses, fragment):
    kernel = DenseKernel.from_points(uniform_cloud(40), 0.3)

    with pytest.raises(InputError, match=fragment):
        DiffusionOperator(kernel, masses)


# --- extreme bandwidths ---------------------------------------------------------------


@pytest.fixture(scope="module")
def spaced_cloud():
    points = uniform_cloud(300, seed=5)
    distances = pdist(points)
    return points, float(distances.min()), float(distances.max())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_sigma_gives_identity(spaced_cloud, backend, dtype):
    points, min_spacing, _ = spaced_cloud
    masses = random_masses(300)

    operator = DiffusionOperator(
        backend.from_points(torch.tensor(points, dtype=dtype), 1e-3 * min_spacing),
        masses,
    )
    q = operator.to_dense()
    deviation = float((q - torch.eye(300, dtype=dtype)).abs().max())
    print(
        f"{backend.__name__} {dtype}, sigma = 1e-3 spacing: "
        f"max |Q - I| = {deviation:.2e}"
    )

    assert not torch.isnan(q).any()
    assert operator.marginal_error <= operator.result.tol
    assert deviation < 1e-6


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_sigma_gives_averaging(spaced_cloud, backend, dtype):
    points, _, diameter = spaced_cloud
    masses = random_masses(300)

    operator = DiffusionOperator(
        backend.from_points(torch.tensor(points, dtype=dtype), 1e3 * diameter), masses
    )
    q = operator.to_dense().double()
    weights = torch.tensor(masses / masses.sum())
    averaging = torch.ones(300, 1, dtype=torch.float64) * weights[None, :]

    assert torch.isfinite(q).all()
    assert operator.marginal_error <= operator.result.tol
    torch.testing.assert_close(q, averaging, rtol=1e-5, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_far_float32_matches_centred_float64(backend):
    # mm-scale CT coordinates: 1000 points in a 15 mm cube around x = 220 mm.
    points = uniform_cloud(1000, seed=6) * 15.0
    signal = random_signal(1000)

    far = DiffusionOperator(
        backend.from_points(torch.tensor(points + 220.0, dtype=torch.float32), 1.0)
    )
    centred = DiffusionOperator(backend.from_points(points - points.mean(axis=0), 1.0))
    far_smoothed = far @ signal
    centred_smoothed = centred @ signal

    assert far_smoothed.dtype == np.float32
    relative = np.linalg.norm(far_smoothed - centred_smoothed) / np.linalg.norm(
        centred_smoothed
    )
    assert relative < 1e-4


# --- make_kernel and diffusion_operator -----------------------------------------------


@pytest.mark.parametrize(
    ("backend", "expected"),
    [("dense", DenseKernel), ("sparse", SparseKernel), ("auto", DenseKernel)],
)
def test_make_kernel_backend(backend, expected):
    kernel = make_kernel(uniform_cloud(100), 0.2, backend=backend)

    assert type(kernel) is expected


def test_make_kernel_graph_backend():
    sphere = pyvista.Sphere(theta_resolution=10, phi_resolution=10)
    triangles = np.asarray(sphere.faces).reshape(-1, 4)[:, 1:]

    kernel = make_kernel(
        np.asarray(sphere.points), backend="graph", triangles=triangles
    )

    assert type(kernel) is SparseKernel
    assert kernel.nnz == sphere.n_points + 2 * sphere.extract_all_edges().n_cells


def test_make_kernel_unknown_backend_raises():
    with pytest.raises(InputError, match="'gpu'"):
        make_kernel(uniform_cloud(10), 0.2, backend="gpu")


def test_diffusion_operator_matches_class():
    points = uniform_cloud(200)
    masses = random_masses(200)
    signal = random_signal(200)

    operator = diffusion_operator(points, 0.15, masses=masses, backend="dense")
    expected = DiffusionOperator(DenseKernel.from_points(points, 0.15), masses)

    np.testing.assert_array_equal(operator @ signal, expected @ signal)


def test_diffusion_operator_dtype_option():
    operator = diffusion_operator(uniform_cloud(100), 0.2, dtype=torch.float32)

    assert operator.kernel.dtype == torch.float32
    assert operator.result.tol == 1e-5


def test_diffusion_operator_numpy_init():
    points = uniform_cloud(100)
    first = diffusion_operator(points, 0.2)

    warm = diffusion_operator(points, 0.2, init=first.log_scaling.numpy())

    assert warm.n_iter == 0


# --- autograd -------------------------------------------------------------------------


def smoothed_energy(backend, kind, masses, signal):
    """Return points -> <f, Q(points) f>, with a fixed number of Sinkhorn updates.

    A tol far below round-off makes every call run exactly max_iter updates, so
    the function is smooth and finite differences see the same computation.
    """

    def energy(points):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SinkhornConvergenceWarning)
            kernel = backend.from_points(points, 0.3, kind=kind)
            operator = DiffusionOperator(kernel, masses, tol=1e-300, max_iter=60)
        return (signal * (operator @ signal)).sum()

    return energy


@pytest.fixture(scope="module")
def autograd_inputs():
    points = torch.tensor(uniform_cloud(20, seed=12), requires_grad=True)
    masses = torch.tensor(random_masses(20, seed=13))
    signal = torch.tensor(random_signal(20, seed=14))
    return points, masses, signal


@pytest.mark.parametrize(
    ("backend", "kind"),
    [
        (DenseKernel, "gaussian"),
        (DenseKernel, "exponential"),
        (SparseKernel, "gaussian"),
    ],
)
def test_gradient_matches_finite_differences(autograd_inputs, backend, kind):
    points, masses, signal = autograd_inputs
    energy = smoothed_energy(backend, kind, masses, signal)

    assert torch.autograd.gradcheck(energy, (points,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_second_derivative_matches_finite_differences(autograd_inputs):
    points, masses, signal = autograd_inputs
    energy = smoothed_energy(DenseKernel, "gaussian", masses, signal)

    assert torch.autograd.gradgradcheck(
        energy, (points,), eps=1e-6, atol=1e-6, rtol=1e-4
    )


def test_gradient_of_translation_is_zero(autograd_inputs):
    # Q depends on distances only, so moving every point by the same vector
    # changes nothing and the gradients of the points sum to zero.
    points, masses, signal = autograd_inputs
    energy = smoothed_energy(DenseKernel, "gaussian", masses, signal)

    (gradient,) = torch.autograd.grad(energy(points), points)

    torch.testing.assert_close(
        gradient.sum(dim=0), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-12
    )
