"""The diffusion operator Q = diag(lambda) K diag(m) diag(lambda).

Q is self-adjoint for the mass inner product <f, g>_m = sum_i m_i f_i g_i, keeps
constants (Q 1 = 1 within the solver's tolerance) and total mass
(<m, Q f> = <m, f>), is non-negative, and has its spectrum in [0, 1] when K is
positive semi-definite (Gaussian kernels, D + A graph kernels).
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch

from sinkshape._checks import as_tensor, check_masses, check_points, check_sigma
from sinkshape.errors import InputError
from sinkshape.kernels import (
    DenseKernel,
    Kernel,
    KernelKind,
    SparseKernel,
    mesh_graph_kernel,
)
from sinkshape.sinkhorn import SinkhornResult, sinkhorn_scaling

__all__ = ["Backend", "DiffusionOperator", "diffusion_operator", "make_kernel"]

logger = logging.getLogger(__name__)

Backend = Literal["auto", "dense", "sparse", "graph", "keops"]

#: Largest point cloud for which ``backend="auto"`` builds a dense kernel on the CPU.
#: A dense float64 kernel of this size stores two 4000 x 4000 matrices (K and
#: log K), 256 MB.
AUTO_DENSE_MAX_POINTS = 4000


class DiffusionOperator:
    """Sinkhorn-normalized diffusion operator of a kernel and point masses.

    Parameters
    ----------
    kernel : Kernel
        Symmetric non-negative kernel.
    masses : array-like, optional
        Positive point masses (vertex areas on a mesh); uniform 1 / N by default.
    tol : float, optional
        Tolerance on the marginal error; 1e-6 in float64 and 1e-5 in float32.
    max_iter : int
        Maximum number of Sinkhorn updates.
    init : array-like, optional
        Warm start, log lambda from an earlier operator.
    callback : callable, optional
        Called as ``callback(iteration, error)`` during the solve.

    Attributes
    ----------
    kernel : Kernel
    masses : torch.Tensor
        Point masses m, shape (N,).
    result : SinkhornResult
        Scaling, iteration count and error history of the solve.

    Examples
    --------
    >>> import numpy as np
    >>> from sinkshape import DiffusionOperator, DenseKernel
    >>> points = np.random.default_rng(0).normal(size=(200, 3))
    >>> Q = DiffusionOperator(DenseKernel.from_points(points, sigma=0.5))
    >>> bool(np.allclose(Q @ np.ones(200), 1.0, atol=1e-5))
    True
    """

    def __init__(
        self,
        kernel: Kernel,
        masses=None,
        *,
        tol: float | None = None,
        max_iter: int = 100,
        init: torch.Tensor | None = None,
        callback=None,
    ) -> None:
        self.kernel = kernel
        reference = torch.empty(0, dtype=kernel.dtype, device=kernel.device)
        self.masses = check_masses(masses, n_points=kernel.n_points, like=reference)
        self.result: SinkhornResult = sinkhorn_scaling(
            kernel,
            self.masses,
            tol=tol,
            max_iter=max_iter,
            init=init,
            callback=callback,
        )
        self._scaling = self.result.scaling

    @property
    def n_points(self) -> int:
        """N, the number of points."""
        return self.kernel.n_points

    @property
    def scaling(self) -> torch.Tensor:
        """lambda, shape (N,)."""
        return self._scaling

    @property
    def log_scaling(self) -> torch.Tensor:
        """log lambda, shape (N,); pass it as ``init`` to warm-start a related solve."""
        return self.result.log_scaling

    @property
    def marginal_error(self) -> float:
        """Mass-weighted mean of |Q 1 - 1| at the computed scaling."""
        return self.result.marginal_error

    @property
    def n_iter(self) -> int:
        """Number of Sinkhorn updates the solve took."""
        return self.result.n_iter

    def _apply_tensor(self, f: torch.Tensor) -> torch.Tensor:
        if f.ndim == 1:
            return self._scaling * self.kernel.matvec(self.masses * self._scaling * f)
        right = (self.masses * self._scaling)[:, None] * f
        return self._scaling[:, None] * self.kernel.matvec(right)

    def apply(self, f, *, steps: int = 1):
        """Compute Q^steps f for a signal of shape (N,) or (N, C).

        numpy input gives a numpy output; tensors stay on their device.
        """
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
            msg = f"steps must be a non-negative integer, got {steps!r}"
            raise InputError(msg)

        tensor, from_numpy = as_tensor(f, name="signal")
        if tensor.ndim not in (1, 2) or tensor.shape[0] != self.n_points:
            msg = (
                f"signal must have shape ({self.n_points},) or ({self.n_points}, C), "
                f"got {tuple(tensor.shape)}"
            )
            raise InputError(msg)
        tensor = tensor.to(dtype=self.kernel.dtype, device=self.kernel.device)

        for _ in range(int(steps)):
            tensor = self._apply_tensor(tensor)

        if from_numpy:
            return tensor.detach().cpu().numpy()
        return tensor

    def __matmul__(self, f):
        return self.apply(f)

    def smooth(self, f, *, steps: int = 1):
        """Diffuse a signal: Q^steps f, shape (N,) or (N, C)."""
        return self.apply(f, steps=steps)

    def to_dense(self) -> torch.Tensor:
        """Return Q as a dense (N, N) tensor; meant for small N and tests."""
        dense_kernel = self.kernel.to_dense()
        return self._scaling[:, None] * dense_kernel * (self.masses * self._scaling)[None, :]

    def as_linear_operator(self):
        """Return Q as a float64 :class:`scipy.sparse.linalg.LinearOperator`.

        Q is not symmetric in the Euclidean sense but M Q is: for eigenvalues use
        the generalized problem or :meth:`symmetric_linear_operator`.
        """
        from scipy.sparse.linalg import LinearOperator

        def matvec(v):
            out = self.apply(torch.from_numpy(np.asarray(v, dtype=np.float64)))
            return out.detach().cpu().to(torch.float64).numpy()

        return LinearOperator(
            (self.n_points, self.n_points),
            matvec=matvec,
            matmat=matvec,
            rmatvec=self._rmatvec,
            dtype=np.float64,
        )

    def _rmatvec(self, v):
        # Q^T v = M Q M^-1 v, since M Q is symmetric.
        masses = self.masses.detach().cpu().to(torch.float64).numpy()
        v = np.asarray(v, dtype=np.float64)
        if v.ndim == 2:
            # scipy passes (N, 1) columns, so each row is divided by its own mass.
            masses = masses[:, None]
        inner = self.apply(torch.from_numpy(v / masses))
        return masses * inner.detach().cpu().to(torch.float64).numpy()

    def symmetric_linear_operator(self):
        """Return M^(1/2) Q M^(-1/2), symmetric with the spectrum of Q, as a LinearOperator.

        Its eigenvectors u give eigenvectors M^(-1/2) u of Q, orthonormal for the
        mass inner product.
        """
        from scipy.sparse.linalg import LinearOperator

        root = torch.sqrt(self.masses).detach().cpu().to(torch.float64).numpy()

        def matvec(v):
            v = np.asarray(v, dtype=np.float64)
            scaled = v / (root if v.ndim == 1 else root[:, None])
            out = self.apply(torch.from_numpy(scaled)).detach().cpu().to(torch.float64)
            out = out.numpy()
            return out * (root if v.ndim == 1 else root[:, None])

        return LinearOperator(
            (self.n_points, self.n_points), matvec=matvec, matmat=matvec, dtype=np.float64
        )

    def __repr__(self) -> str:
        return (
            f"DiffusionOperator(n_points={self.n_points}, kernel={type(self.kernel).__name__},"
            f" n_iter={self.n_iter}, marginal_error={self.marginal_error:.2g})"
        )


def choose_backend(n_points: int, device: torch.device) -> str:
    """Pick a backend for ``backend="auto"``.

    Dense up to :data:`AUTO_DENSE_MAX_POINTS` points; beyond, KeOps on CUDA when
    it compiles there, otherwise the sparse truncated kernel.
    """
    if n_points <= AUTO_DENSE_MAX_POINTS:
        return "dense"
    if device.type == "cuda":
        from sinkshape.keops import keops_available

        if keops_available(device):
            return "keops"
    return "sparse"


def make_kernel(
    points,
    sigma=None,
    *,
    kind: KernelKind = "gaussian",
    backend: Backend = "auto",
    triangles=None,
    truncation: float = 1e-6,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Kernel:
    """Build the kernel of a point cloud or a mesh with the requested backend.

    Parameters
    ----------
    points : array-like
        (N, D) coordinates.
    sigma : float
        Bandwidth, in the unit of the coordinates. Not used by the graph backend,
        whose edge weights use the mean edge length.
    kind : {"gaussian", "exponential"}
        Kernel of the distance.
    backend : {"auto", "dense", "sparse", "graph", "keops"}
        ``"dense"`` stores the N x N kernel; ``"sparse"`` drops pairs whose kernel
        value is below ``truncation``; ``"graph"`` is the one-ring kernel of the
        mesh (needs ``triangles``); ``"keops"`` uses symbolic LazyTensors and falls
        back, with a warning, when pykeops is missing or fails to compile.
    triangles : array-like, optional
        (F, 3) vertex indices, for the graph backend.
    truncation : float
        Smallest kernel value kept by the sparse backend.
    dtype, device : optional
        Convert the points first.
    """
    x, _ = check_points(points, dtype=dtype, device=device)
    if backend not in ("auto", "dense", "sparse", "graph", "keops"):
        msg = (
            f"backend must be one of 'auto', 'dense', 'sparse', 'graph', 'keops', "
            f"got {backend!r}"
        )
        raise InputError(msg)

    if backend == "graph":
        if triangles is None:
            msg = "backend='graph' needs triangles; use 'sparse' for a point cloud"
            raise InputError(msg)
        if sigma is not None:
            # The graph kernel has no bandwidth, but a sigma <= 0, NaN or inf is a mistake.
            check_sigma(sigma)
        return mesh_graph_kernel(x, triangles)

    sigma = check_sigma(sigma)
    if backend == "auto":
        backend = choose_backend(x.shape[0], x.device)
        logger.debug("backend='auto' chose %r for %d points", backend, x.shape[0])

    if backend == "keops":
        from sinkshape.keops import keops_kernel_or_fallback

        return keops_kernel_or_fallback(x, sigma, kind=kind, truncation=truncation)
    if backend == "dense":
        return DenseKernel.from_points(x, sigma, kind=kind)
    return SparseKernel.from_points(x, sigma, kind=kind, truncation=truncation)


def diffusion_operator(
    points,
    sigma=None,
    *,
    masses=None,
    triangles=None,
    kind: KernelKind = "gaussian",
    backend: Backend = "auto",
    truncation: float = 1e-6,
    tol: float | None = None,
    max_iter: int = 100,
    init=None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    callback=None,
) -> DiffusionOperator:
    """Build the kernel of a point cloud or mesh and normalize it.

    See :func:`make_kernel` for the kernel options and :class:`DiffusionOperator`
    for the solver options.

    Examples
    --------
    >>> import numpy as np
    >>> from sinkshape import diffusion_operator
    >>> points = np.random.default_rng(0).uniform(size=(500, 2))
    >>> Q = diffusion_operator(points, sigma=0.05)
    >>> Q.marginal_error <= 1e-6
    True
    """
    x, _ = check_points(points, dtype=dtype, device=device)
    kernel = make_kernel(
        x,
        sigma,
        kind=kind,
        backend=backend,
        triangles=triangles,
        truncation=truncation,
    )
    return DiffusionOperator(
        kernel, masses, tol=tol, max_iter=max_iter, init=init, callback=callback
    )
