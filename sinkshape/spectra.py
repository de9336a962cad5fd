"""Leading eigenpairs of diffusion operators and Laplacians, and how they compare.

A diffusion operator Q (Sinkhorn-normalized, M Q symmetric) has the same
eigenvalues as the symmetric matrix S = M^1/2 Q M^-1/2, and each eigenvector u
of S gives the eigenvector phi = M^-1/2 u of Q, orthonormal for the mass inner
product <f, g>_m = sum_i m_i f_i g_i. :func:`diffusion_spectrum` computes the
largest eigenvalues mu of S with ARPACK (``scipy.sparse.linalg.eigsh``).

Laplacian-like eigenvalues. If one application of Q runs heat diffusion for a
time tau, then mu = exp(-tau lambda) for the Laplace-Beltrami eigenvalue
lambda, so

    lambda = -log(mu) / tau.

For a Gaussian kernel of bandwidth sigma, tau = sigma^2 / 2, which gives
lambda = -log(mu) * 2 / sigma^2 (:func:`gaussian_step_time`). This is valid under
four assumptions:

1. sigma is small next to the radius of curvature and the features of the
   shape. On a sphere of radius R the estimate is high by a relative
   sigma^2 / (2 R^2) (1.1% at sigma = 0.15 R), see
   :func:`sphere_gaussian_eigenvalues`.
2. sigma is large next to the point spacing, so that each kernel sees many
   points; otherwise the estimate is sampling noise.
3. The masses are proportional to 1 / density (vertex or Voronoi areas on a
   surface). With uniform masses on a non-uniform sample the limit is a
   density-weighted operator, not the Laplace-Beltrami operator.
4. tau lambda is small enough that the Gaussian's own curvature corrections
   stay negligible, i.e. mu is not close to 0.

The exponential kernel is not a heat kernel; no diffusion time converts its
eigenvalues. For the one-ring graph kernel of a mesh, which has no bandwidth,
:func:`graph_step_time` measures tau from the operator's second moment.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch
from scipy.special import ive

from sinkshape._checks import check_points, check_positive, check_sigma
from sinkshape.diffusion import DiffusionOperator
from sinkshape.errors import InputError
from sinkshape.kernels import DenseKernel, SparseKernel

__all__ = [
    "DiffusionSpectrum",
    "LaplacianSpectrum",
    "circle_gaussian_eigenvalues",
    "diffusion_spectrum",
    "gaussian_step_time",
    "graph_step_time",
    "laplacian_eigenvalues",
    "laplacian_spectrum",
    "sphere_gaussian_eigenvalues",
]

logger = logging.getLogger(__name__)

#: Below this many points, eigenpairs come from a dense eigendecomposition.
DENSE_EIGEN_MAX_POINTS = 300

#: Rounds of the deflation check for eigenvalues that ARPACK missed.
_MAX_DEFLATION_ROUNDS = 6


@dataclass
class DiffusionSpectrum:
    """Leading eigenpairs of a diffusion operator.

    Attributes
    ----------
    eigenvalues : numpy.ndarray
        mu, shape (k,), in decreasing order. In (0, 1] for a Sinkhorn-normalized
        positive semi-definite kernel, up to rounding and the marginal error.
    eigenvectors : numpy.ndarray
        phi, shape (N, k), with Phi^T M Phi = I. The sign of each column makes
        its entry of largest magnitude positive.
    masses : numpy.ndarray
        m, shape (N,).
    residual_norms : numpy.ndarray
        |S u - mu u| for the unit eigenvectors u of the symmetric form S.
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    masses: np.ndarray
    residual_norms: np.ndarray

    def laplacian_eigenvalues(self, time: float) -> np.ndarray:
        """Convert to Laplacian-like eigenvalues -log(mu) / time; see :func:`laplacian_eigenvalues`."""
        return laplacian_eigenvalues(self.eigenvalues, time=time)


@dataclass
class LaplacianSpectrum:
    """Smallest eigenpairs of L phi = lambda M phi.

    Attributes
    ----------
    eigenvalues : numpy.ndarray
        lambda, shape (k,), increasing, the first one about 0.
    eigenvectors : numpy.ndarray
        phi, shape (N, k), with Phi^T M Phi = I and the same sign rule as
        :class:`DiffusionSpectrum`.
    masses : numpy.ndarray
        Lumped masses, shape (N,).
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    masses: np.ndarray

    def heat_eigenvalues(self, time: float) -> np.ndarray:
        """Return exp(-time lambda), the eigenvalues of heat diffusion for ``time``."""
        return np.exp(-check_positive(time, name="time") * self.eigenvalues)


# --- diffusion times --------------------------------------------------------------


def gaussian_step_time(sigma) -> float:
    """Return sigma^2 / 2, the heat-diffusion time of one Gaussian kernel step.

    On a flat domain with uniform masses a Gaussian of bandwidth sigma
    multiplies the Fourier mode exp(i k.x) by exp(-sigma^2 |k|^2 / 2), which is
    heat diffusion for time sigma^2 / 2 exactly. On a curved surface the
    relation is accurate to first order in (sigma / radius of curvature)^2.
    """
    return check_sigma(sigma) ** 2 / 2.0


def graph_step_time(operator: DiffusionOperator, points) -> float:
    """Measure the heat-diffusion time of one step of an operator on a surface.

    Returns tau = sum_i m_i sum_j Q_ij |x_j - x_i|^2 / (4 sum_i m_i), the rule of
    :func:`sinkshape.smoothing.diffusion_time`: a 2-D heat kernel at time t
    moves a point by E|dx|^2 = 4 t. Equivalently, tau is the ratio of the
    Dirichlet energies of the coordinate functions under I - Q and under the
    Laplace-Beltrami operator. It is exact only where the walk is isotropic in
    the tangent plane and its step statistics do not vary along the surface.

    NOTE: on meshes with uneven edge lengths the one-ring graph walk is not
    isotropic, and no single tau converts all its eigenvalues: on the vmtk
    aorta the converted eigenvalues come out about 20% below the cotangent
    Laplacian's (docs/validation.md).
    """
    from sinkshape.smoothing import diffusion_time

    x, _ = _points_tensor(points, operator.n_points)
    return diffusion_time(operator, x)


def _points_tensor(points, n_points: int):
    x, from_numpy = check_points(points, dtype=torch.float64)
    if x.shape[0] != n_points:
        msg = f"points must have {n_points} rows, one per point of the operator, got {x.shape[0]}"
        raise InputError(msg)
    return x, from_numpy


def laplacian_eigenvalues(eigenvalues, *, time: float) -> np.ndarray:
    """Convert eigenvalues mu of a diffusion step of time ``time`` to -log(mu) / time.

    ``time`` is the diffusion time of one application: sigma^2 / 2 for a
    Gaussian kernel (:func:`gaussian_step_time`), the measured time for a graph
    kernel (:func:`graph_step_time`). The module docstring lists the
    assumptions. An eigenvalue mu <= 0 corresponds to no finite time and maps
    to +inf.
    """
    time = check_positive(time, name="time")
    mu = np.asarray(eigenvalues, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        converted = -np.log(mu) / time
    return np.where(mu > 0, converted, np.inf)


def sphere_gaussian_eigenvalues(degrees, sigma, *, radius: float = 1.0) -> np.ndarray:
    """Return the exact eigenvalues of the Sinkhorn-normalized Gaussian on a sphere.

    On a sphere of radius R with uniform density, the Gaussian kernel of the
    chord distance is exp(-R^2 (1 - cos theta) / sigma^2). All its rows have
    the same sum, so the Sinkhorn scaling is constant. By the Funk-Hecke
    formula, the eigenvalue on spherical harmonics of degree l is then

        mu_l = i_l(kappa) / i_0(kappa),  kappa = R^2 / sigma^2,

    with i_l the modified spherical Bessel functions of the first kind. These
    are the continuum limits of the eigenvalues of Q, without sampling error.
    """
    sigma = check_sigma(sigma)
    radius = check_positive(radius, name="radius")
    degrees = np.asarray(degrees, dtype=np.float64)
    kappa = radius**2 / sigma**2
    # i_l(kappa) is proportional to I_(l + 1/2)(kappa); the factor cancels, and
    # ive scales out exp(kappa) so that large kappa does not overflow.
    return ive(degrees + 0.5, kappa) / ive(0.5, kappa)


def circle_gaussian_eigenvalues(frequencies, sigma, *, radius: float = 1.0) -> np.ndarray:
    """Return the exact eigenvalues of the Sinkhorn-normalized Gaussian on a circle.

    With uniform density on a circle of radius R in the plane, the eigenvalue
    on cos(k theta) and sin(k theta) is I_k(kappa) / I_0(kappa), with
    kappa = R^2 / sigma^2 and I_k the modified Bessel functions.
    """
    sigma = check_sigma(sigma)
    radius = check_positive(radius, name="radius")
    frequencies = np.asarray(frequencies, dtype=np.float64)
    kappa = radius**2 / sigma**2
    return ive(frequencies, kappa) / ive(0.0, kappa)


# --- eigen-solvers ----------------------------------------------------------------


def _check_count(n_eigenpairs, n_points: int) -> int:
    if int(n_eigenpairs) != n_eigenpairs or not 1 <= n_eigenpairs < n_points:
        msg = (
            f"n_eigenpairs must be an integer in [1, {n_points - 1}], "
            f"got {n_eigenpairs!r}"
        )
        raise InputError(msg)
    return int(n_eigenpairs)


def _as_operator(matrix) -> scipy.sparse.linalg.LinearOperator:
    return scipy.sparse.linalg.aslinearoperator(matrix)


def _dense_largest(operator, n_points: int, count: int):
    dense = operator.matmat(np.eye(n_points))
    dense = 0.5 * (dense + dense.T)
    values, vectors = np.linalg.eigh(dense)
    return values[::-1][:count], vectors[:, ::-1][:, :count]


def _largest_eigenpairs(matrix, n_points: int, count: int, *, tol: float, seed: int):
    """Return the ``count`` largest eigenpairs of a symmetric matrix, largest first.

    ARPACK's Lanczos iteration builds one Krylov space from one start vector,
    so it can miss one vector of a (nearly) repeated eigenvalue. After the
    first run, the found pairs are deflated (mapped to eigenvalue 0) and ARPACK
    runs again on the rest. An eigenvalue that this run finds above the
    smallest found one was missed, so it is added and the check repeats.
    """
    operator = _as_operator(matrix)
    if n_points <= max(DENSE_EIGEN_MAX_POINTS, 2 * count + 2):
        return _dense_largest(operator, n_points, count)

    rng = np.random.default_rng(seed)
    values, vectors = scipy.sparse.linalg.eigsh(
        operator, k=count, which="LA", tol=tol, v0=rng.standard_normal(n_points)
    )

    check_count = min(count, 8, n_points - count - 2)
    for _ in range(_MAX_DEFLATION_ROUNDS):
        if check_count < 1:
            break
        found_values, found_vectors = values, vectors

        def deflated(v, found_values=found_values, found_vectors=found_vectors):
            v = np.asarray(v, dtype=np.float64)
            coefficients = found_vectors.T @ v
            if v.ndim == 1:
                return operator.matvec(v) - found_vectors @ (found_values * coefficients)
            return operator.matmat(v) - found_vectors @ (found_values[:, None] * coefficients)

        deflated_operator = scipy.sparse.linalg.LinearOperator(
            (n_points, n_points), matvec=deflated, matmat=deflated, dtype=np.float64
        )
        extra_values, extra_vectors = scipy.sparse.linalg.eigsh(
            deflated_operator,
            k=check_count,
            which="LA",
            tol=tol,
            v0=rng.standard_normal(n_points),
        )
        scale = max(1.0, float(np.abs(values).max()))
        missed = extra_values > values.min() + 1e3 * max(tol, 1e-14) * scale
        if not missed.any():
            break
        logger.debug("eigsh missed %d eigenvalues; adding them", int(missed.sum()))
        values = np.concatenate([values, extra_values[missed]])
        vectors = np.concatenate([vectors, extra_vectors[:, missed]], axis=1)
        order = np.argsort(values)[::-1][:count]
        values, vectors = values[order], vectors[:, order]

    order = np.argsort(values)[::-1]
    return values[order], vectors[:, order]


def _fix_signs(vectors: np.ndarray) -> np.ndarray:
    rows = np.argmax(np.abs(vectors), axis=0)
    signs = np.sign(vectors[rows, np.arange(vectors.shape[1])])
    signs[signs == 0] = 1.0
    return vectors * signs


def _symmetric_form(operator):
    """Return M^1/2 Q M^-1/2 as a scipy matrix when the kernel allows, else a LinearOperator."""
    masses = operator.masses.detach().cpu().to(torch.float64).numpy()
    if isinstance(operator, DiffusionOperator):
        scaling = operator.scaling.detach().cpu().to(torch.float64).numpy()
        # S_ij = lambda_i sqrt(m_i) K_ij sqrt(m_j) lambda_j.
        outer = scaling * np.sqrt(masses)
        if isinstance(operator.kernel, SparseKernel):
            diagonal = scipy.sparse.diags(outer)
            return (diagonal @ operator.kernel.to_scipy() @ diagonal).tocsr(), masses
        if isinstance(operator.kernel, DenseKernel):
            dense = operator.kernel.to_dense().detach().cpu().to(torch.float64).numpy()
            return outer[:, None] * dense * outer[None, :], masses
    if not hasattr(operator, "symmetric_linear_operator"):
        msg = (
            f"{type(operator).__name__} has no symmetric_linear_operator(); "
            "diffusion_spectrum needs an operator self-adjoint for its masses"
        )
        raise InputError(msg)
    return operator.symmetric_linear_operator(), masses


def diffusion_spectrum(
    operator,
    n_eigenpairs: int,
    *,
    tol: float = 1e-10,
    seed: int = 0,
) -> DiffusionSpectrum:
    """Compute the largest eigenpairs of a diffusion operator.

    Parameters
    ----------
    operator : DiffusionOperator or reference operator
        An operator self-adjoint for its masses. A :class:`DiffusionOperator`
        with a dense or sparse kernel is assembled as a matrix; other operators
        go through their ``symmetric_linear_operator()``.
    n_eigenpairs : int
        k, fewer than the number of points.
    tol : float
        Relative accuracy of the eigenvalues requested from ARPACK.
    seed : int
        Seed of the random start vectors, for reproducible runs.

    Returns
    -------
    DiffusionSpectrum
        Eigenvalues in decreasing order and mass-orthonormal eigenvectors.

    Examples
    --------
    >>> import numpy as np
    >>> from sinkshape import diffusion_operator
    >>> from sinkshape.spectra import diffusion_spectrum, gaussian_step_time
    >>> theta = 2 * np.pi * np.arange(400) / 400
    >>> circle = np.column_stack([np.cos(theta), np.sin(theta)])
    >>> Q = diffusion_operator(circle, 0.1)
    >>> spectrum = diffusion_spectrum(Q, 5)
    >>> converted = spectrum.laplacian_eigenvalues(gaussian_step_time(0.1))
    >>> np.round(converted, 1) + 0.0
    array([0., 1., 1., 4., 4.])
    """
    n_points = operator.n_points
    count = _check_count(n_eigenpairs, n_points)
    tol = check_positive(tol, name="tol")

    matrix, masses = _symmetric_form(operator)
    values, vectors = _largest_eigenpairs(matrix, n_points, count, tol=tol, seed=seed)

    operator_s = _as_operator(matrix)
    residuals = operator_s.matmat(vectors) - vectors * values[None, :]
    residual_norms = np.linalg.norm(residuals, axis=0)

    eigenvectors = _fix_signs(vectors / np.sqrt(masses)[:, None])
    return DiffusionSpectrum(
        eigenvalues=values,
        eigenvectors=eigenvectors,
        masses=masses,
        residual_norms=residual_norms,
    )


def laplacian_spectrum(
    stiffness,
    masses,
    n_eigenpairs: int,
    *,
    tol: float = 1e-10,
    seed: int = 0,
) -> LaplacianSpectrum:
    """Compute the smallest eigenpairs of L phi = lambda M phi for lumped masses.

    Uses shift-invert: with a shift s slightly below 0 and the sparse LU
    factorization of L - s M, the largest eigenvalues nu of the symmetric
    operator M^1/2 (L - s M)^-1 M^1/2 give lambda = s + 1 / nu. Repeated
    eigenvalues get the same deflation check as :func:`diffusion_spectrum`.

    Parameters
    ----------
    stiffness : scipy sparse matrix
        L, symmetric positive semi-definite, (N, N).
    masses : array-like
        Positive lumped masses, shape (N,).
    n_eigenpairs : int
        k, fewer than N.
    """
    stiffness = scipy.sparse.csc_matrix(stiffness, dtype=np.float64)
    n_points = stiffness.shape[0]
    masses = np.asarray(masses, dtype=np.float64).reshape(-1)
    if stiffness.shape != (n_points, n_points) or masses.shape != (n_points,):
        msg = (
            f"stiffness must be square and masses must match it, got shapes "
            f"{stiffness.shape} and {masses.shape}"
        )
        raise InputError(msg)
    if not (masses > 0).all():
        msg = "masses must be positive for laplacian_spectrum"
        raise InputError(msg)
    count = _check_count(n_eigenpairs, n_points)

    # A shift well below the smallest non-zero eigenvalue, relative to the
    # mean of diag(L) / m (about 1 / h^2 for edge length h).
    scale = float(np.mean(stiffness.diagonal() / masses))
    shift = -1e-6 * scale
    factor = scipy.sparse.linalg.splu(
        (stiffness - shift * scipy.sparse.diags(masses)).tocsc()
    )
    root = np.sqrt(masses)

    def inverse(v):
        v = np.asarray(v, dtype=np.float64)
        scale_rows = root if v.ndim == 1 else root[:, None]
        return scale_rows * factor.solve(np.ascontiguousarray(scale_rows * v))

    operator = scipy.sparse.linalg.LinearOperator(
        (n_points, n_points), matvec=inverse, matmat=inverse, dtype=np.float64
    )
    values, vectors = _largest_eigenpairs(operator, n_points, count, tol=tol, seed=seed)
    eigenvalues = shift + 1.0 / values
    eigenvectors = _fix_signs(vectors / root[:, None])
    return LaplacianSpectrum(eigenvalues=eigenvalues, eigenvectors=eigenvectors, masses=masses)
