"""Reference diffusion operators, to compare with the Sinkhorn-normalized one.

Each operator here offers the calls of :class:`~sinkshape.DiffusionOperator`
that smoothing code uses: ``n_points``, ``masses``, ``apply(f, steps=...)``,
``operator @ f``, ``smooth``, ``to_dense`` and ``as_linear_operator``. One line
swaps one for another::

    Q = diffusion_operator(points, sigma, masses=areas)          # Sinkhorn
    Q = kernel_operator(points, sigma, masses=areas, normalization="row")
    Q = ImplicitHeatOperator(cotangent_laplacian(mesh), time=sigma**2 / 2)

Operators of a kernel K and masses m (M = diag(m), d = K m):

- raw kernel, ``normalization="none"``: S = K M;
- row normalization, ``"row"``: D^-1 K M (Nadaraya-Watson), keeps constants;
- one-step symmetric normalization, ``"symmetric"``: D^-1/2 K M D^-1/2, the
  first iterate of the Sinkhorn scaling from lambda = 1, self-adjoint for
  the masses but with rows that do not sum to 1.

Operators of a Laplacian, with L the positive semi-definite weak (stiffness)
Laplacian and M its lumped mass matrix, both from the ``robust-laplacian``
package (intrinsic Delaunay cotangent weights):

- implicit heat step: (M + t L)^-1 M, one backward-Euler step of
  du/dt = -M^-1 L u, through a sparse LU factorization computed once;
- spectral heat: Phi exp(-t Lambda) Phi^T M, from the k eigenpairs of
  L phi = lambda M phi with the smallest eigenvalues. Components of the signal
  outside those k eigenvectors are dropped.

The Laplacian's eigenvalues approximate those of the Laplace-Beltrami operator,
l(l + 1) / R^2 on a sphere of radius R, so these operators run heat diffusion
for ``time`` in the squared unit of the coordinates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch

from sinkshape._checks import as_tensor, check_masses, check_points, check_positive
from sinkshape.diffusion import Backend, make_kernel
from sinkshape.errors import InputError
from sinkshape.kernels import Kernel, KernelKind
from sinkshape.mesh import as_surface
from sinkshape.spectra import LaplacianSpectrum, laplacian_spectrum

__all__ = [
    "ImplicitHeatOperator",
    "KernelOperator",
    "Laplacian",
    "Normalization",
    "SpectralHeatOperator",
    "cotangent_laplacian",
    "kernel_operator",
    "point_cloud_laplacian",
]

logger = logging.getLogger(__name__)

Normalization = Literal["none", "row", "symmetric"]

#: Default relative size of the intrinsic mollification in robust-laplacian.
DEFAULT_MOLLIFY_FACTOR = 1e-5


# --- Laplacians -------------------------------------------------------------------


@dataclass
class Laplacian:
    """A weak Laplacian and its lumped masses.

    Attributes
    ----------
    stiffness : scipy.sparse.csr_matrix
        L, symmetric positive semi-definite, with L 1 = 0. The Laplace-Beltrami
        eigenproblem reads L phi = lambda M phi.
    masses : numpy.ndarray
        Diagonal of the lumped mass matrix M, shape (N,), in squared length units.
    """

    stiffness: scipy.sparse.csr_matrix
    masses: np.ndarray

    @property
    def n_points(self) -> int:
        """N, the number of points."""
        return self.stiffness.shape[0]

    @property
    def mass_matrix(self) -> scipy.sparse.dia_matrix:
        """M = diag(masses) as a sparse matrix."""
        return scipy.sparse.diags(self.masses)

    def spectrum(self, n_eigenpairs: int) -> LaplacianSpectrum:
        """Compute the ``n_eigenpairs`` smallest eigenpairs; see :func:`laplacian_spectrum`."""
        return laplacian_spectrum(self.stiffness, self.masses, n_eigenpairs)


def _check_mollify_factor(mollify_factor: float) -> float:
    if not np.isfinite(mollify_factor) or mollify_factor < 0:
        msg = f"mollify_factor must be a finite number >= 0, got {mollify_factor!r}"
        raise InputError(msg)
    return float(mollify_factor)


def _from_robust_laplacian(stiffness, mass_matrix) -> Laplacian:
    stiffness = scipy.sparse.csr_matrix(stiffness, dtype=np.float64)
    masses = np.asarray(mass_matrix.diagonal(), dtype=np.float64)
    if not (masses > 0).all():
        first = int(np.flatnonzero(~(masses > 0))[0])
        msg = (
            f"the Laplacian's lumped mass of point {first} is {masses[first]!r}; "
            "remove unused or duplicate vertices, or raise mollify_factor"
        )
        raise InputError(msg)
    return Laplacian(stiffness=stiffness, masses=masses)


def cotangent_laplacian(
    data,
    *,
    triangles=None,
    mollify_factor: float = DEFAULT_MOLLIFY_FACTOR,
) -> Laplacian:
    """Build the cotangent Laplacian and lumped masses of a triangle mesh.

    Calls ``robust_laplacian.mesh_laplacian``, which builds the intrinsic Delaunay
    cotangent Laplacian of the mesh after a small intrinsic mollification, so
    that it stays valid on meshes with degenerate or non-manifold triangles.

    Parameters
    ----------
    data : pyvista.PolyData, skshapes.PolyData or array-like
        A triangle mesh, or (N, 3) points with ``triangles``.
    triangles : array-like, optional
        (F, 3) vertex indices when ``data`` is an array.
    mollify_factor : float
        Mollification, relative to the mean edge length; 0 turns it off.
    """
    import robust_laplacian

    surface = as_surface(data, triangles=triangles, dtype=torch.float64, device="cpu")
    if surface.triangles is None:
        msg = "cotangent_laplacian needs a mesh with triangles; use point_cloud_laplacian"
        raise InputError(msg)
    points = surface.points.detach().numpy()
    stiffness, mass_matrix = robust_laplacian.mesh_laplacian(
        points, surface.triangles, mollify_factor=_check_mollify_factor(mollify_factor)
    )
    return _from_robust_laplacian(stiffness, mass_matrix)


def point_cloud_laplacian(
    points,
    *,
    n_neighbors: int = 30,
    mollify_factor: float = DEFAULT_MOLLIFY_FACTOR,
) -> Laplacian:
    """Build the robust Laplacian and lumped masses of a point cloud in 3-D.

    Calls ``robust_laplacian.point_cloud_laplacian``, which triangulates the
    ``n_neighbors`` nearest neighbours of each point locally and builds the
    cotangent Laplacian of the union of those triangles.
    """
    import robust_laplacian

    x, _ = check_points(points, dtype=torch.float64, device="cpu")
    if x.shape[1] != 3:
        msg = f"point_cloud_laplacian needs (N, 3) points, got shape {tuple(x.shape)}"
        raise InputError(msg)
    if int(n_neighbors) != n_neighbors or not 3 <= n_neighbors < x.shape[0]:
        msg = (
            f"n_neighbors must be an integer in [3, {x.shape[0] - 1}], "
            f"got {n_neighbors!r}"
        )
        raise InputError(msg)
    stiffness, mass_matrix = robust_laplacian.point_cloud_laplacian(
        x.detach().numpy(),
        mollify_factor=_check_mollify_factor(mollify_factor),
        n_neighbors=int(n_neighbors),
    )
    return _from_robust_laplacian(stiffness, mass_matrix)


# --- shared interface ------------------------------------------------------------


def _check_steps(steps) -> int:
    if int(steps) != steps or steps < 0:
        msg = f"steps must be a non-negative integer, got {steps!r}"
        raise InputError(msg)
    return int(steps)


class _ReferenceOperator:
    """The calls shared with DiffusionOperator, over a one-step product in float64.

    Subclasses set ``_n_points`` and ``masses`` and define ``_step`` on float64
    tensors of shape (N,) or (N, C).
    """

    _n_points: int
    masses: torch.Tensor

    @property
    def n_points(self) -> int:
        """N, the number of points."""
        return self._n_points

    def _step(self, f: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def apply(self, f, *, steps: int = 1):
        """Compute the operator applied ``steps`` times to a signal of shape (N,) or (N, C).

        numpy input gives a float64 numpy output; a tensor gives a tensor of its
        dtype and device.
        """
        steps = _check_steps(steps)
        tensor, from_numpy = as_tensor(f, name="signal")
        if tensor.ndim not in (1, 2) or tensor.shape[0] != self.n_points:
            msg = (
                f"signal must have shape ({self.n_points},) or ({self.n_points}, C), "
                f"got {tuple(tensor.shape)}"
            )
            raise InputError(msg)

        out_dtype, out_device = tensor.dtype, tensor.device
        result = tensor.detach().to(dtype=torch.float64, device=self.masses.device)
        for _ in range(steps):
            result = self._step(result)

        if from_numpy:
            return result.cpu().numpy()
        return result.to(dtype=out_dtype, device=out_device)

    def __matmul__(self, f):
        return self.apply(f)

    def smooth(self, f, *, steps: int = 1):
        """Diffuse a signal: the operator applied ``steps`` times."""
        return self.apply(f, steps=steps)

    def to_dense(self) -> torch.Tensor:
        """Return the operator as a dense (N, N) float64 tensor; meant for small N."""
        identity = torch.eye(self.n_points, dtype=torch.float64, device=self.masses.device)
        return self._step(identity)

    def _adjoint_step(self, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _from_array(self, v) -> torch.Tensor:
        return torch.from_numpy(np.asarray(v, dtype=np.float64)).to(self.masses.device)

    def as_linear_operator(self) -> scipy.sparse.linalg.LinearOperator:
        """Return one step as a float64 :class:`scipy.sparse.linalg.LinearOperator`.

        Its ``rmatvec`` applies the transpose, so that ``rmatvec(m) / m`` is the
        total weight sum_i m_i S_ij / m_j that each point receives.
        """

        def matvec(v):
            return self._step(self._from_array(v)).cpu().numpy()

        def rmatvec(v):
            return self._adjoint_step(self._from_array(v)).cpu().numpy()

        return scipy.sparse.linalg.LinearOperator(
            (self.n_points, self.n_points),
            matvec=matvec,
            matmat=matvec,
            rmatvec=rmatvec,
            dtype=np.float64,
        )

    def _symmetric_linear_operator(self, inner) -> scipy.sparse.linalg.LinearOperator:
        # M^(1/2) A M^(-1/2) for an operator A self-adjoint for the masses.
        root = np.sqrt(self.masses.detach().cpu().numpy())

        def matvec(v):
            v = np.asarray(v, dtype=np.float64)
            scale = root if v.ndim == 1 else root[:, None]
            return scale * inner(v / scale)

        return scipy.sparse.linalg.LinearOperator(
            (self.n_points, self.n_points), matvec=matvec, matmat=matvec, dtype=np.float64
        )


# --- kernel operators ------------------------------------------------------------


class KernelOperator(_ReferenceOperator):
    """A kernel smoother without the Sinkhorn scaling: raw, row- or one-step normalized.

    Parameters
    ----------
    kernel : Kernel
        Symmetric non-negative kernel K.
    masses : array-like, optional
        Positive point masses m; uniform 1 / N by default.
    normalization : {"none", "row", "symmetric"}
        ``"none"``: S = K M. ``"row"``: D^-1 K M with d = K m, so S 1 = 1.
        ``"symmetric"``: D^-1/2 K M D^-1/2, self-adjoint for the masses.

    Attributes
    ----------
    kernel : Kernel
    masses : torch.Tensor
        Point masses, float64 on the kernel's device.
    degrees : torch.Tensor
        d = K m, shape (N,).
    """

    def __init__(
        self,
        kernel: Kernel,
        masses=None,
        *,
        normalization: Normalization = "none",
    ) -> None:
        if normalization not in ("none", "row", "symmetric"):
            msg = (
                "normalization must be 'none', 'row' or 'symmetric', "
                f"got {normalization!r}"
            )
            raise InputError(msg)
        self.kernel = kernel
        self.normalization = normalization
        self._n_points = kernel.n_points

        reference = torch.empty(0, dtype=torch.float64, device=kernel.device)
        self.masses = check_masses(masses, n_points=kernel.n_points, like=reference)
        self.degrees = self._kernel_product(self.masses)
        if not bool((self.degrees > 0).all()):
            first = int(torch.nonzero(~(self.degrees > 0))[0])
            msg = (
                f"row {first} of the kernel sums to {self.degrees[first].item()!r}; "
                "a normalized kernel needs a positive diagonal or positive row sums"
            )
            raise InputError(msg)

        # S f = left * K (right * f), with the scalings of each normalization.
        if normalization == "none":
            self._left = torch.ones_like(self.masses)
            self._right = self.masses
        elif normalization == "row":
            self._left = 1.0 / self.degrees
            self._right = self.masses
        else:
            root = torch.rsqrt(self.degrees)
            self._left = root
            self._right = self.masses * root

    def _kernel_product(self, v: torch.Tensor) -> torch.Tensor:
        product = self.kernel.matvec(v.to(dtype=self.kernel.dtype))
        return product.detach().to(torch.float64)

    def _step(self, f: torch.Tensor) -> torch.Tensor:
        if f.ndim == 1:
            return self._left * self._kernel_product(self._right * f)
        return self._left[:, None] * self._kernel_product(self._right[:, None] * f)

    def _adjoint_step(self, v: torch.Tensor) -> torch.Tensor:
        # S^T = diag(right) K diag(left), because K is symmetric.
        if v.ndim == 1:
            return self._right * self._kernel_product(self._left * v)
        return self._right[:, None] * self._kernel_product(self._left[:, None] * v)

    def symmetric_linear_operator(self) -> scipy.sparse.linalg.LinearOperator:
        """Return M^(1/2) S M^(-1/2), symmetric with the spectrum of S.

        Raises :class:`InputError` for row normalization, which is self-adjoint
        for the weights m * d rather than for the masses.
        """
        if self.normalization == "row":
            msg = (
                "row normalization is not self-adjoint for the masses, so it has no "
                "symmetric form M^(1/2) S M^(-1/2); use 'none' or 'symmetric'"
            )
            raise InputError(msg)

        def inner(v):
            return self._step(self._from_array(v)).cpu().numpy()

        return self._symmetric_linear_operator(inner)

    def __repr__(self) -> str:
        return (
            f"KernelOperator(n_points={self.n_points}, kernel={type(self.kernel).__name__},"
            f" normalization={self.normalization!r})"
        )


def kernel_operator(
    points,
    sigma=None,
    *,
    normalization: Normalization = "none",
    masses=None,
    triangles=None,
    kind: KernelKind = "gaussian",
    backend: Backend = "auto",
    truncation: float = 1e-6,
) -> KernelOperator:
    """Build the kernel of a point cloud or mesh and normalize it without Sinkhorn.

    Takes the arguments of :func:`~sinkshape.diffusion_operator`, so that
    ``diffusion_operator(...)`` and ``kernel_operator(..., normalization=...)``
    swap in one line. See :func:`~sinkshape.make_kernel` for the kernel options
    and :class:`KernelOperator` for ``normalization``.
    """
    x, _ = check_points(points)
    kernel = make_kernel(
        x, sigma, kind=kind, backend=backend, triangles=triangles, truncation=truncation
    )
    return KernelOperator(kernel, masses, normalization=normalization)


# --- heat operators --------------------------------------------------------------


class ImplicitHeatOperator(_ReferenceOperator):
    """One implicit (backward Euler) heat step (M + t L)^-1 M per application.

    Its eigenvalues are 1 / (1 + t lambda) for the eigenvalues lambda of
    L phi = lambda M phi. ``steps`` applications of the step with time
    ``time / steps`` approach exp(-time Delta) as ``steps`` grows.

    Parameters
    ----------
    laplacian : Laplacian
        Stiffness and lumped masses, e.g. from :func:`cotangent_laplacian`.
    time : float
        Diffusion time of one step, in squared length units.

    Attributes
    ----------
    laplacian : Laplacian
    time : float
    masses : torch.Tensor
        The Laplacian's lumped masses, float64.
    """

    def __init__(self, laplacian: Laplacian, time: float) -> None:
        self.laplacian = laplacian
        self.time = check_positive(time, name="time")
        self._n_points = laplacian.n_points
        self.masses = torch.from_numpy(laplacian.masses)

        system = laplacian.mass_matrix + self.time * laplacian.stiffness
        # M + t L is symmetric positive definite; one LU factorization serves
        # every later step.
        self._factor = scipy.sparse.linalg.splu(scipy.sparse.csc_matrix(system))

    def _solve(self, rhs: np.ndarray) -> np.ndarray:
        return self._factor.solve(np.ascontiguousarray(rhs))

    def _masses_like(self, values: np.ndarray) -> np.ndarray:
        return self.laplacian.masses if values.ndim == 1 else self.laplacian.masses[:, None]

    def _step(self, f: torch.Tensor) -> torch.Tensor:
        values = f.cpu().numpy()
        return torch.from_numpy(self._solve(self._masses_like(values) * values))

    def _adjoint_step(self, v: torch.Tensor) -> torch.Tensor:
        # ((M + t L)^-1 M)^T = M (M + t L)^-1, because M and L are symmetric.
        values = v.cpu().numpy()
        return torch.from_numpy(self._masses_like(values) * self._solve(values))

    def symmetric_linear_operator(self) -> scipy.sparse.linalg.LinearOperator:
        """Return M^(1/2) (M + t L)^-1 M^(1/2), symmetric with the spectrum of the step."""

        def inner(v):
            return self._step(torch.from_numpy(v)).numpy()

        return self._symmetric_linear_operator(inner)

    def __repr__(self) -> str:
        return f"ImplicitHeatOperator(n_points={self.n_points}, time={self.time:g})"


class SpectralHeatOperator(_ReferenceOperator):
    """Heat diffusion exp(-t Delta) through a truncated eigendecomposition.

    One application maps f to sum_k exp(-t lambda_k) <phi_k, f>_m phi_k over the
    ``n_eigenpairs`` smallest eigenpairs of L phi = lambda M phi. The rest of the
    signal is dropped, so the operator is exact only for signals in the span of
    those eigenvectors and damps everything else to 0.

    Parameters
    ----------
    laplacian : Laplacian
        Stiffness and lumped masses.
    time : float
        Diffusion time of one application, in squared length units.
    n_eigenpairs : int
        Number of eigenpairs kept.
    spectrum : LaplacianSpectrum, optional
        Eigenpairs computed earlier, to share between operators of several times.

    Attributes
    ----------
    spectrum : LaplacianSpectrum
    time : float
    masses : torch.Tensor
    """

    def __init__(
        self,
        laplacian: Laplacian,
        time: float,
        *,
        n_eigenpairs: int = 100,
        spectrum: LaplacianSpectrum | None = None,
    ) -> None:
        self.time = check_positive(time, name="time")
        self._n_points = laplacian.n_points
        self.masses = torch.from_numpy(laplacian.masses)
        if spectrum is None:
            spectrum = laplacian.spectrum(n_eigenpairs)
        elif spectrum.eigenvectors.shape[0] != laplacian.n_points:
            msg = (
                f"spectrum has eigenvectors of length {spectrum.eigenvectors.shape[0]} "
                f"but the Laplacian has {laplacian.n_points} points"
            )
            raise InputError(msg)
        self.spectrum = spectrum

        self._basis = torch.from_numpy(spectrum.eigenvectors)
        self._weights = torch.exp(-self.time * torch.from_numpy(spectrum.eigenvalues))

    def _step(self, f: torch.Tensor) -> torch.Tensor:
        masses = self.masses if f.ndim == 1 else self.masses[:, None]
        coefficients = self._basis.T @ (masses * f)
        if f.ndim == 1:
            return self._basis @ (self._weights * coefficients)
        return self._basis @ (self._weights[:, None] * coefficients)

    def _adjoint_step(self, v: torch.Tensor) -> torch.Tensor:
        # (Phi W Phi^T M)^T = M Phi W Phi^T.
        masses = self.masses if v.ndim == 1 else self.masses[:, None]
        coefficients = self._basis.T @ v
        if v.ndim == 1:
            return masses * (self._basis @ (self._weights * coefficients))
        return masses * (self._basis @ (self._weights[:, None] * coefficients))

    def symmetric_linear_operator(self) -> scipy.sparse.linalg.LinearOperator:
        """Return M^(1/2) Phi exp(-t Lambda) Phi^T M^(1/2) as a LinearOperator."""

        def inner(v):
            return self._step(torch.from_numpy(v)).numpy()

        return self._symmetric_linear_operator(inner)

    def __repr__(self) -> str:
        return (
            f"SpectralHeatOperator(n_points={self.n_points}, time={self.time:g}, "
            f"n_eigenpairs={len(self.spectrum.eigenvalues)})"
        )
