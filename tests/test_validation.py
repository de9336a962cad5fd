"""Known answers for the Sinkhorn-normalized diffusion operator.

Each test compares the operator with a closed-form answer or with cotangent heat
diffusion. The sizes fit the test suite; examples/validation_*.py run the same
checks at the sizes of docs/validation.md and draw its figures.
"""

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg
import torch
from scipy.spatial import ConvexHull, SphericalVoronoi, cKDTree

from sinkshape import (
    DenseKernel,
    DiffusionOperator,
    SparseKernel,
    diffusion_operator,
    sinkhorn_scaling,
)
from sinkshape import datasets
from sinkshape.mesh import as_surface
from sinkshape.reference import ImplicitHeatOperator, KernelOperator, cotangent_laplacian
from sinkshape.smoothing import Smoother
from sinkshape.spectra import (
    diffusion_spectrum,
    gaussian_step_time,
    sphere_gaussian_eigenvalues,
)

# --- samples ------------------------------------------------------------------------


def random_sphere(n_points, *, seed):
    """Independent uniform points on the unit sphere."""
    normal = np.random.default_rng(seed).normal(size=(n_points, 3))
    return normal / np.linalg.norm(normal, axis=1, keepdims=True)


def fibonacci_sphere(n_points):
    """Quasi-uniform points on the unit sphere: the Fibonacci lattice."""
    index = np.arange(n_points) + 0.5
    z = 1.0 - 2.0 * index / n_points
    angle = np.pi * (1.0 + 5.0**0.5) * index
    ring = np.sqrt(1.0 - z**2)
    return np.column_stack([ring * np.cos(angle), ring * np.sin(angle), z])


def voronoi_areas(points):
    """Areas of the spherical Voronoi cells of points on the unit sphere."""
    return SphericalVoronoi(points).calculate_areas()


def circle_density(theta):
    """Sampling density (1 + 0.8 cos theta) / (2 pi) on the unit circle."""
    return (1.0 + 0.8 * np.cos(theta)) / (2.0 * np.pi)


def density_circle(n_points):
    """Angles at the quantiles (i + 1/2) / N of circle_density, by bisection."""
    quantiles = (np.arange(n_points) + 0.5) / n_points
    low = np.zeros(n_points)
    high = np.full(n_points, 2.0 * np.pi)
    for _ in range(60):
        middle = 0.5 * (low + high)
        below = (middle + 0.8 * np.sin(middle)) / (2.0 * np.pi) < quantiles
        low = np.where(below, middle, low)
        high = np.where(below, high, middle)
    return 0.5 * (low + high)


def mass_norm(values, masses):
    return float(np.sqrt((masses * values**2).sum()))


def relative_difference(values, reference, masses):
    """Relative L2 difference for the mass inner product."""
    return mass_norm(values - reference, masses) / mass_norm(reference, masses)


# --- sphere spectrum ----------------------------------------------------------------

SPHERE_SIGMA = 0.1


@pytest.fixture(scope="module")
def sphere_eigenvalues():
    """Laplacian-like eigenvalues on 5,000 random points with Voronoi masses."""
    points = random_sphere(5000, seed=0)
    operator = diffusion_operator(
        points, SPHERE_SIGMA, masses=voronoi_areas(points), backend="sparse"
    )
    spectrum = diffusion_spectrum(operator, 17)
    return spectrum.laplacian_eigenvalues(gaussian_step_time(SPHERE_SIGMA))


def test_sphere_degree_zero(sphere_eigenvalues):
    assert abs(sphere_eigenvalues[0]) < 0.01


@pytest.mark.parametrize(("degree", "first"), [(1, 1), (2, 4), (3, 9)])
def test_sphere_degree_multiplicity(sphere_eigenvalues, degree, first):
    # The 2 l + 1 eigenvalues of degree l follow each other in decreasing mu.
    group = sphere_eigenvalues[first : first + 2 * degree + 1]
    exact = degree * (degree + 1)

    np.testing.assert_allclose(group, exact, rtol=0.05)


def test_sphere_degree_four_follows(sphere_eigenvalues):
    # The 17th eigenvalue starts degree 4 (20), so degree 3 has exactly 7.
    assert sphere_eigenvalues[16] > 0.95 * 20


# --- circle with non-uniform density ------------------------------------------------

CIRCLE_SIGMA = 0.1
CIRCLE_EXACT = np.array([1.0, 1.0, 4.0, 4.0])


def circle_laplacian_eigenvalues(masses_from_density: bool) -> np.ndarray:
    theta = density_circle(3000)
    points = np.column_stack([np.cos(theta), np.sin(theta)])
    if masses_from_density:
        masses = 1.0 / (3000 * circle_density(theta))
    else:
        masses = np.full(3000, 2.0 * np.pi / 3000)
    operator = diffusion_operator(points, CIRCLE_SIGMA, masses=masses, backend="dense")
    spectrum = diffusion_spectrum(operator, 5)
    return spectrum.laplacian_eigenvalues(gaussian_step_time(CIRCLE_SIGMA))


def test_circle_inverse_density_masses():
    converted = circle_laplacian_eigenvalues(masses_from_density=True)

    assert abs(converted[0]) < 0.01
    np.testing.assert_allclose(converted[1:5], CIRCLE_EXACT, rtol=0.10)


def test_circle_uniform_masses_miss():
    # Uniform masses give a density-weighted operator: its eigenvalues are not k^2.
    converted = circle_laplacian_eigenvalues(masses_from_density=False)
    relative_errors = np.abs(converted[1:5] - CIRCLE_EXACT) / CIRCLE_EXACT

    assert relative_errors.max() > 0.10


# --- central node bias --------------------------------------------------------------

SQUARE_SIGMA = 0.05


@pytest.fixture(scope="module")
def square():
    points = np.random.default_rng(0).uniform(size=(3000, 2))
    kernel = DenseKernel.from_points(points, SQUARE_SIGMA)
    border_distance = np.minimum(points, 1.0 - points).min(axis=1)
    operators = {
        "sinkhorn": DiffusionOperator(kernel),
        "row": KernelOperator(kernel, normalization="row"),
        "symmetric": KernelOperator(kernel, normalization="symmetric"),
    }
    return border_distance, operators


def received_weight(operator) -> np.ndarray:
    """sum_i m_i Q_ij / m_j, the total weight each point j receives: (Q^T m)_j / m_j."""
    masses = operator.masses.detach().to(torch.float64).numpy()
    return operator.as_linear_operator().rmatvec(masses) / masses


def bias_ratio(operator, border_distance) -> float:
    """Mean received weight of interior points over that of border points.

    Interior points are at least 3 sigma from the border, so that almost all of
    the kernel's weight lies inside the square. Border points are within sigma
    of the border.
    """
    weight = received_weight(operator)
    interior = border_distance >= 3 * SQUARE_SIGMA
    border = border_distance <= SQUARE_SIGMA
    return float(weight[interior].mean() / weight[border].mean())


def boundary_mass_kept(operator, border_distance, steps=20) -> float:
    """Total mass sum_i m_i f_i after ``steps`` steps from a unit mass on a border point."""
    masses = operator.masses.detach().to(torch.float64).numpy()
    start = int(np.argmin(border_distance))
    signal = np.zeros(len(masses))
    signal[start] = 1.0 / masses[start]
    diffused = operator.apply(signal, steps=steps)
    return float((masses * diffused).sum())


def test_sinkhorn_bias_ratio_one(square):
    border_distance, operators = square

    assert bias_ratio(operators["sinkhorn"], border_distance) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("name", ["row", "symmetric"])
def test_normalization_bias_above_one(square, name):
    border_distance, operators = square

    assert bias_ratio(operators[name], border_distance) > 1.05


def test_sinkhorn_keeps_boundary_mass(square):
    border_distance, operators = square

    assert boundary_mass_kept(operators["sinkhorn"], border_distance) >= 0.999


@pytest.mark.parametrize("name", ["row", "symmetric"])
def test_normalization_loses_boundary_mass(square, name):
    border_distance, operators = square

    assert boundary_mass_kept(operators[name], border_distance) < 0.9


# --- convergence rate ---------------------------------------------------------------


def graph_kernel(adjacency) -> SparseKernel:
    """D + A for a symmetric 0/1 adjacency matrix."""
    adjacency = scipy.sparse.csr_matrix(adjacency)
    degrees = np.asarray(adjacency.sum(axis=1)).ravel()
    return SparseKernel.from_matrix(scipy.sparse.diags(degrees) + adjacency)


def erdos_renyi_kernel(n_nodes, probability, *, seed):
    rng = np.random.default_rng(seed)
    upper = np.triu(rng.random((n_nodes, n_nodes)) < probability, k=1)
    return graph_kernel((upper | upper.T).astype(np.float64))


def geometric_graph_kernel(n_nodes, radius, *, seed):
    points = np.random.default_rng(seed).uniform(size=(n_nodes, 2))
    pairs = cKDTree(points).query_pairs(radius, output_type="ndarray")
    adjacency = scipy.sparse.coo_matrix(
        (np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n_nodes, n_nodes)
    )
    return graph_kernel(adjacency + adjacency.T)


def smallest_eigenvalue(operator) -> float:
    """lambda_min(Q), from S = M^1/2 Q M^-1/2 = diag(s) K diag(s) with s = lambda sqrt(m)."""
    outer = (operator.scaling * torch.sqrt(operator.masses)).numpy()
    if isinstance(operator.kernel, SparseKernel):
        diagonal = scipy.sparse.diags(outer)
        symmetric = diagonal @ operator.kernel.to_scipy() @ diagonal
        return float(scipy.sparse.linalg.eigsh(symmetric, k=1, which="SA", tol=1e-8)[0][0])
    # Gaussian kernels have many eigenvalues near 0, where Lanczos stalls.
    symmetric = outer[:, None] * operator.kernel.to_dense().numpy() * outer[None, :]
    return float(scipy.linalg.eigh(symmetric, eigvals_only=True, subset_by_index=[0, 0])[0])


def observed_rate(errors, *, floor=1e-12, window=4) -> float:
    """Geometric mean of the last ``window`` error ratios above the rounding floor."""
    errors = np.asarray(errors)
    errors = errors[: np.argmax(errors < floor)] if (errors < floor).any() else errors
    return float((errors[-1] / errors[-1 - window]) ** (1.0 / window))


CONVERGENCE_CASES = {
    "erdos-renyi": lambda: erdos_renyi_kernel(2000, 0.005, seed=0),
    "geometric": lambda: geometric_graph_kernel(2000, 0.05, seed=0),
    "sphere-gaussian": lambda: DenseKernel.from_points(fibonacci_sphere(1500), 0.05),
    "sphere-gaussian-random": lambda: DenseKernel.from_points(random_sphere(1500, seed=0), 0.1),
}


@pytest.mark.parametrize("case", sorted(CONVERGENCE_CASES))
def test_convergence_rate(case):
    kernel = CONVERGENCE_CASES[case]()
    masses = torch.full((kernel.n_points,), 1.0 / kernel.n_points, dtype=torch.float64)
    result = sinkhorn_scaling(kernel, masses, tol=1e-14, max_iter=400)
    operator = DiffusionOperator(kernel, masses, init=result.log_scaling, tol=1e-14)
    predicted = (1.0 - smallest_eigenvalue(operator)) / 2.0

    assert observed_rate(result.errors) == pytest.approx(predicted, abs=0.05)


# --- agreement with cotangent heat diffusion ----------------------------------------

HEAT_SUBSTEPS = 16


def implicit_heat(laplacian, signal, time):
    """exp(-time Delta) signal, by HEAT_SUBSTEPS implicit steps of time / HEAT_SUBSTEPS."""
    step = ImplicitHeatOperator(laplacian, time / HEAT_SUBSTEPS)
    return step.apply(signal, steps=HEAT_SUBSTEPS)


def centred(signal, masses):
    return signal - (masses * signal).sum() / masses.sum()


@pytest.fixture(scope="module")
def sphere_heat_case():
    points = fibonacci_sphere(4000)
    triangles = ConvexHull(points).simplices
    laplacian = cotangent_laplacian(points, triangles=triangles)
    x, y, z = points.T
    signal = centred(x + y * z + np.sin(3 * z), laplacian.masses)
    return points, triangles, laplacian, signal


@pytest.fixture(scope="module")
def aorta_heat_case():
    surface = as_surface(datasets.load("aorta-surface"))
    points = surface.points.numpy()
    laplacian = cotangent_laplacian(points, triangles=surface.triangles)
    # A smooth intrinsic signal: the eigenvectors 1..20 of the cotangent
    # Laplacian with weights 1 / sqrt(index), so it also differs between
    # walls that come close in space.
    spectrum = laplacian.spectrum(21)
    weights = np.random.default_rng(0).normal(size=20) / np.sqrt(np.arange(1, 21))
    signal = spectrum.eigenvectors[:, 1:] @ weights
    return points, surface.triangles, laplacian, signal


def heat_case(request, name):
    return request.getfixturevalue(f"{name}_heat_case")


# Diffusion time T of each case: 10 Gaussian steps of sigma = 0.1 on the unit
# sphere, 4 steps of sigma = 2 mm on the aorta.
HEAT_CASES = {"sphere": (0.1, 10), "aorta": (2.0, 4)}


@pytest.mark.parametrize("name", sorted(HEAT_CASES))
def test_heat_signal_changes(request, name):
    # The agreement below means something only if diffusion changes the signal.
    _, _, laplacian, signal = heat_case(request, name)
    sigma, steps = HEAT_CASES[name]
    reference = implicit_heat(laplacian, signal, steps * gaussian_step_time(sigma))

    assert relative_difference(reference, signal, laplacian.masses) > 0.15


@pytest.mark.parametrize("name", sorted(HEAT_CASES))
def test_gaussian_matches_heat(request, name):
    # Matching rule: `steps` applications of Q_sigma run for steps * sigma^2 / 2.
    points, triangles, laplacian, signal = heat_case(request, name)
    sigma, steps = HEAT_CASES[name]
    reference = implicit_heat(laplacian, signal, steps * gaussian_step_time(sigma))
    masses = as_surface(points, triangles=triangles).masses
    operator = diffusion_operator(points, sigma, masses=masses, backend="sparse")

    diffused = operator.apply(signal, steps=steps)

    assert relative_difference(diffused, reference, laplacian.masses) <= 0.10


@pytest.mark.parametrize("name", sorted(HEAT_CASES))
def test_graph_matches_heat(request, name):
    # Matching rule: the Smoother at scale s runs the graph walk for s^2 / 2,
    # with the diffusion time of one step measured from its second moment.
    points, triangles, laplacian, signal = heat_case(request, name)
    sigma, steps = HEAT_CASES[name]
    time = steps * gaussian_step_time(sigma)
    reference = implicit_heat(laplacian, signal, time)
    smoother = Smoother(points, np.sqrt(2 * time), triangles=triangles, backend="graph")

    diffused = smoother.smooth(signal)

    assert relative_difference(diffused, reference, laplacian.masses) <= 0.10


@pytest.mark.xfail(
    strict=True,
    reason="the one-ring graph walk is anisotropic on the aorta's marching-cubes "
    "mesh: its eigenvalues are about 0.82 times the cotangent ones, so it lags "
    "heat diffusion more and more as T grows (16% at T = 32 mm^2)",
)
def test_graph_matches_heat_long_time(aorta_heat_case):
    points, triangles, laplacian, signal = aorta_heat_case
    reference = implicit_heat(laplacian, signal, 32.0)
    smoother = Smoother(points, 8.0, triangles=triangles, backend="graph")

    diffused = smoother.smooth(signal)

    assert relative_difference(diffused, reference, laplacian.masses) <= 0.10


# --- fixed-sigma consistency --------------------------------------------------------

CONSISTENCY_SIGMA = 0.1
CONSISTENCY_SIZES = (1000, 2000, 4000, 8000)


@pytest.fixture(scope="module")
def consistency_errors():
    """|Q_N f - mu_2 f|_m / |f|_m on nested random samples, f of degree 2."""
    sample = random_sphere(max(CONSISTENCY_SIZES), seed=3)
    exact = sphere_gaussian_eigenvalues([2], CONSISTENCY_SIGMA)[0]
    errors = []
    for n_points in CONSISTENCY_SIZES:
        points = sample[:n_points]
        x, y, z = points.T
        signal = x * y + 0.5 * (3 * z**2 - 1)
        masses = np.full(n_points, 4 * np.pi / n_points)
        operator = diffusion_operator(points, CONSISTENCY_SIGMA, masses=masses, backend="sparse")
        diffused = operator.apply(signal)
        errors.append(mass_norm(diffused - exact * signal, masses) / mass_norm(signal, masses))
    return np.array(errors)


@pytest.mark.parametrize("index", range(len(CONSISTENCY_SIZES) - 1))
def test_consistency_error_decreases(consistency_errors, index):
    assert consistency_errors[index + 1] < consistency_errors[index]


def test_consistency_rate(consistency_errors):
    # Independent samples with uniform masses: Monte Carlo error, N^(-1/2).
    slope = np.polyfit(np.log(CONSISTENCY_SIZES), np.log(consistency_errors), 1)[0]

    assert slope == pytest.approx(-0.5, abs=0.15)
