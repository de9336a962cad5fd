"""The normalized kernel cometric of LDDMM and its Hamiltonian system.

Control points q_1..q_N with masses m carry momenta p_i. The cometric is the
Sinkhorn-normalized kernel

    K~(q) = diag(lambda) K(q) diag(lambda),    lambda_i sum_j K_ij m_j lambda_j = 1,

so that K~ m = 1, and the Hamiltonian is H(q, p) = 1/2 sum_ij K~_ij <p_i, p_j>.
The velocity of the control points is dq/dt = dH/dp = K~ p. A uniform momentum
p = m v then moves every control point at velocity v, H does not depend on q,
and the shape translates exactly for all times.

Away from the control points the velocity is the kernel-weighted mean

    v(x) = lambda(x) sum_j k(x, q_j) lambda_j p_j,
    lambda(x) = 1 / sum_j k(x, q_j) m_j lambda_j,

that is, the scaling of x is one Sinkhorn update against the control points. At a
control point lambda(q_i) = lambda_i, and a uniform momentum gives v(x) = v at
every x, so shape points, grid points and control points translate together.
Written as v(x) = sum_j w_j(x) p_j / m_j with w_j(x) the softmax over j of
log k(x, q_j) + log lambda_j + log m_j, the velocity is a convex combination of
the p_j / m_j, which stays finite far from the control points.

The momentum equation dp/dt = -dH/dq needs the derivative of lambda(q). With f =
log lambda solving G(f, q) = f + log(K(q) (m e^f)) = 0, the adjoint a solves
(I + Q)^T a = dH/df, where Q = diag(lambda) K diag(m lambda) is the normalized
operator, and

    dH/dq = d/dq [H(f, q) - <a, G(f, q)>]    at fixed f and a.

:meth:`KernelMetric.hamiltonian_system` computes the gradient of that Lagrangian,
in closed form for the dense backend and by autograd for the others, so the
momentum equation is exact up to the Sinkhorn and adjoint tolerances however few
iterations the warm-started solves took.

Why the rectangular kernel between shape points and control points is normalized
this way: the square kernel on the control points, with their masses, defines
the metric, and among fields of the form lambda(x) sum_j k(x, q_j) lambda_j p_j
the one-step extension is the only lambda(x) that moves every point of space
with a uniform momentum exactly like the control points. A Sinkhorn scaling of
the rectangular kernel itself would balance it against the shape points'
masses, so the scaling of the control points, and their velocity, would depend
on where the shape points lie.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch

from sinkshape._checks import check_masses, check_points, check_positive, check_sigma
from sinkshape.diffusion import AUTO_DENSE_MAX_POINTS, make_kernel
from sinkshape.errors import InputError
from sinkshape.kernels import DenseKernel, Kernel, KernelKind, log_kernel_of_distance
from sinkshape.lddmm._cross import (
    cross_kernel_mean,
    cross_kernel_product,
    dense_log_kernel,
    dense_sq_distances,
)
from sinkshape.sinkhorn import default_tol, sinkhorn_scaling

__all__ = [
    "HamiltonianSystem",
    "KernelMetric",
    "MetricBackend",
    "Normalization",
    "WarmStart",
]

logger = logging.getLogger(__name__)

Normalization = Literal["sinkhorn", "none"]
MetricBackend = Literal["auto", "dense", "sparse", "keops"]

#: Relaxation factor of the adjoint iteration a <- a + omega (h - a - Q^T a). The
#: spectrum of I + Q^T lies in [1, 2] for a positive semi-definite kernel, where
#: omega = 2/3 contracts the error by 1/3 per iteration.
_ADJOINT_RELAXATION = 2.0 / 3.0


@dataclass
class WarmStart:
    """Log-scaling and adjoint of the last evaluation, the initial guesses of the next.

    Attributes
    ----------
    log_scaling : torch.Tensor or None
        log lambda on the control points, shape (N,).
    adjoint : torch.Tensor or None
        Adjoint variable a, shape (N,).
    sinkhorn_iterations : int
        Sinkhorn updates summed over the evaluations that used this warm start.
    adjoint_iterations : int
        Adjoint updates summed likewise.
    """

    log_scaling: torch.Tensor | None = None
    adjoint: torch.Tensor | None = None
    sinkhorn_iterations: int = 0
    adjoint_iterations: int = 0


@dataclass
class HamiltonianSystem:
    """Right-hand side of the geodesic equations at one state (q, p).

    Attributes
    ----------
    velocity : torch.Tensor
        dq/dt = K~(q) p, shape (N, D).
    momentum_rate : torch.Tensor
        dp/dt = -dH/dq, shape (N, D).
    hamiltonian : torch.Tensor
        H(q, p), a scalar.
    log_scaling : torch.Tensor
        log lambda at q, shape (N,); zeros for the raw kernel.
    """

    velocity: torch.Tensor
    momentum_rate: torch.Tensor
    hamiltonian: torch.Tensor
    log_scaling: torch.Tensor


class KernelMetric:
    """Cometric of a Gaussian or exponential kernel on control points, normalized or raw.

    Parameters
    ----------
    sigma : float
        Kernel bandwidth, in the unit of the coordinates (mm for medical data).
    kind : {"gaussian", "exponential"}
        k(x, y) = exp(-|x - y|^2 / (2 sigma^2)) or exp(-|x - y| / sigma).
    normalization : {"sinkhorn", "none"}
        ``"sinkhorn"`` uses K~ = diag(lambda) K diag(lambda) with K~ m = 1;
        ``"none"`` uses the raw kernel K, whose geodesics shrink or expand a shape
        under a uniform momentum.
    backend : {"auto", "dense", "sparse", "keops"}
        Storage of the kernel between control points, as in
        :func:`sinkshape.diffusion.make_kernel`. ``"sparse"`` drops kernel values
        below ``truncation``.
    tol : float, optional
        Tolerance of the Sinkhorn scaling (marginal error) and of the adjoint
        solve (relative l1 residual); 1e-6 in float64 and 1e-5 in float32.
    max_iter : int
        Maximum number of updates of each solve.
    truncation : float
        Smallest kernel value kept by the sparse backend.

    Examples
    --------
    >>> import torch
    >>> from sinkshape.lddmm import KernelMetric
    >>> points = torch.randn(100, 3, dtype=torch.float64)
    >>> masses = torch.full((100,), 0.01, dtype=torch.float64)
    >>> momenta = masses[:, None] * torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    >>> metric = KernelMetric(sigma=0.5)
    >>> velocity = metric.product(points, momenta, masses)
    >>> bool(torch.allclose(velocity, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)))
    True
    """

    def __init__(
        self,
        sigma,
        *,
        kind: KernelKind = "gaussian",
        normalization: Normalization = "sinkhorn",
        backend: MetricBackend = "dense",
        tol: float | None = None,
        max_iter: int = 100,
        truncation: float = 1e-6,
    ) -> None:
        self.sigma = check_sigma(sigma)
        if kind not in ("gaussian", "exponential"):
            msg = f"kind must be 'gaussian' or 'exponential', got {kind!r}"
            raise InputError(msg)
        if normalization not in ("sinkhorn", "none"):
            msg = f"normalization must be 'sinkhorn' or 'none', got {normalization!r}"
            raise InputError(msg)
        if backend not in ("auto", "dense", "sparse", "keops"):
            msg = f"backend must be 'auto', 'dense', 'sparse' or 'keops', got {backend!r}"
            raise InputError(msg)
        if int(max_iter) != max_iter or max_iter < 1:
            msg = f"max_iter must be a positive integer, got {max_iter!r}"
            raise InputError(msg)

        self.kind = kind
        self.normalization = normalization
        self.backend = backend
        self.tol = None if tol is None else check_positive(tol, name="tol")
        self.max_iter = int(max_iter)
        self.truncation = check_positive(truncation, name="truncation")

    @property
    def normalized(self) -> bool:
        """Whether the kernel is Sinkhorn-normalized."""
        return self.normalization == "sinkhorn"

    def __repr__(self) -> str:
        return (
            f"KernelMetric(sigma={self.sigma:g}, kind={self.kind!r}, "
            f"normalization={self.normalization!r}, backend={self.backend!r})"
        )

    def tolerance(self, dtype: torch.dtype) -> float:
        """Tolerance used for a given dtype."""
        return default_tol(dtype) if self.tol is None else self.tol

    # ------------------------------------------------------------------ kernels

    def kernel(self, points: torch.Tensor) -> Kernel:
        """Build the square kernel between control points, differentiable in them."""
        if self._is_dense(points.shape[0]):
            return DenseKernel(log_matrix=dense_log_kernel(points, points, self.sigma, self.kind))
        return make_kernel(
            points,
            self.sigma,
            kind=self.kind,
            backend=self.backend,
            truncation=self.truncation,
        )

    def solve_log_scaling(
        self,
        kernel: Kernel,
        masses: torch.Tensor,
        *,
        init: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, int]:
        """Return log lambda and the number of Sinkhorn updates it took.

        The iterations run through autograd, so log lambda is differentiable in
        the points (twice as well) and, when ``init`` is part of a graph, in it.
        """
        if not self.normalized:
            return torch.zeros_like(masses), 0
        result = sinkhorn_scaling(
            kernel,
            masses,
            tol=self.tolerance(masses.dtype),
            max_iter=self.max_iter,
            init=init,
            log_domain=True,
        )
        return result.log_scaling, result.n_iter

    # --------------------------------------------------------- public products

    def product(self, points, momenta, masses=None, *, init=None) -> torch.Tensor:
        """Compute K~(q) p, the velocity of the control points.

        Parameters
        ----------
        points : torch.Tensor
            Control points q, shape (N, D).
        momenta : torch.Tensor
            Momenta p, shape (N, D).
        masses : array-like, optional
            Positive masses m, shape (N,); uniform 1 / N by default.
        init : torch.Tensor, optional
            Warm start for log lambda, shape (N,).

        Returns
        -------
        torch.Tensor
            (N, D) velocities, differentiable twice in ``points`` and ``momenta``.
        """
        q, p, m = self._check_state(points, momenta, masses)
        kernel = self.kernel(q)
        log_scaling, _ = self.solve_log_scaling(kernel, m, init=init)
        return self._velocity(kernel, torch.exp(log_scaling), p)

    def hamiltonian(self, points, momenta, masses=None, *, init=None) -> torch.Tensor:
        """Compute H(q, p) = 1/2 sum_ij K~_ij <p_i, p_j>, the kinetic energy."""
        q, p, m = self._check_state(points, momenta, masses)
        velocity = self.product(q, p, m, init=init)
        return 0.5 * (p * velocity).sum()

    def velocity_at(
        self,
        targets: torch.Tensor,
        points: torch.Tensor,
        momenta: torch.Tensor,
        masses: torch.Tensor,
        log_scaling: torch.Tensor,
    ) -> torch.Tensor:
        """Velocity v(x) at arbitrary points x, shape (M, D).

        Normalized kernel: the Sinkhorn extension described in the module
        documentation, with ``log_scaling`` the scaling of the control points.
        Raw kernel: sum_j k(x, q_j) p_j.
        """
        if not self.normalized:
            return cross_kernel_product(
                targets, points, momenta, sigma=self.sigma, kind=self.kind,
                backend=self.backend, truncation=self.truncation,
            )
        return cross_kernel_mean(
            targets,
            points,
            momenta / masses[:, None],
            log_weights=log_scaling + torch.log(masses),
            sigma=self.sigma,
            kind=self.kind,
            backend=self.backend,
            truncation=self.truncation,
        )

    # ------------------------------------------------------ Hamiltonian system

    def hamiltonian_system(
        self,
        points: torch.Tensor,
        momenta: torch.Tensor,
        masses: torch.Tensor,
        *,
        warm_start: WarmStart | None = None,
        create_graph: bool = False,
    ) -> HamiltonianSystem:
        """Evaluate dq/dt = dH/dp and dp/dt = -dH/dq at (q, p).

        Parameters
        ----------
        points, momenta : torch.Tensor
            q and p, shape (N, D). Inputs are trusted: :func:`shoot` checks them.
        masses : torch.Tensor
            Positive (N,) masses.
        warm_start : WarmStart, optional
            Initial guesses, updated in place with this evaluation's solutions.
        create_graph : bool
            Keep the graph of the result, so that a loss of the geodesic can be
            differentiated with respect to the initial momenta. Otherwise the
            outputs are detached.

        Returns
        -------
        HamiltonianSystem
        """
        warm_start = warm_start if warm_start is not None else WarmStart()
        if self._is_dense(points.shape[0]):
            system = self._dense_system(points, momenta, masses, warm_start, create_graph)
        else:
            system = self._autograd_system(points, momenta, masses, warm_start, create_graph)

        warm_start.log_scaling = system.log_scaling
        if not create_graph:
            system = HamiltonianSystem(
                velocity=system.velocity.detach(),
                momentum_rate=system.momentum_rate.detach(),
                hamiltonian=system.hamiltonian.detach(),
                log_scaling=system.log_scaling.detach(),
            )
            warm_start.log_scaling = system.log_scaling
        return system

    def _is_dense(self, n_points: int) -> bool:
        return self.backend == "dense" or (
            self.backend == "auto" and n_points <= AUTO_DENSE_MAX_POINTS
        )

    def _dense_system(self, q, p, masses, warm_start, create_graph) -> HamiltonianSystem:
        """Hamiltonian system with the kernel matrix in memory and dH/dq in closed form.

        With K~ = diag(lambda) K diag(lambda), the adjoint a, the row sums
        r = K~ m (1 up to the tolerance) and
        C_kj = K~_kj (<p_k, p_j> - a_k m_j / r_k - a_j m_k / r_j) phi_kj, the Lagrangian
        gradient is dL/dq_k = sum_j C_kj (q_j - q_k), where
        phi_kj = -2 d(log k)/d(r^2) is 1 / sigma^2 for the Gaussian kernel and
        1 / (sigma r_kj) for the exponential one. A uniform momentum makes C
        vanish. Autograd then differentiates this expression once, instead of
        differentiating a gradient.
        """
        with torch.set_grad_enabled(create_graph):
            sq_distances = dense_sq_distances(q, q)
            log_kernel = log_kernel_of_distance(sq_distances, self.sigma, self.kind)
            kernel = DenseKernel(log_matrix=log_kernel)
            log_scaling, n_sinkhorn = self.solve_log_scaling(
                kernel, masses, init=warm_start.log_scaling
            )
            scaling = torch.exp(log_scaling)
            normalized = scaling[:, None] * kernel.to_dense() * scaling[None, :]
            velocity = normalized @ p
            energy_density = (p * velocity).sum(dim=1)
            hamiltonian = 0.5 * energy_density.sum()

            weights = p @ p.T
            if self.normalized:
                adjoint, n_adjoint = self._solve_adjoint(
                    lambda a: masses * (normalized @ a),
                    energy_density,
                    init=warm_start.adjoint,
                )
                warm_start.adjoint = adjoint if create_graph else adjoint.detach()
                warm_start.adjoint_iterations += n_adjoint
                # The Lagrangian's softmax weights are K~_kj m_j / r_k with row sums
                # r = K~ m, equal to 1 up to the tolerance.
                row_sums = normalized @ masses
                scaled_adjoint = adjoint / row_sums
                weights = weights - scaled_adjoint[:, None] * masses[None, :]
                weights = weights - masses[:, None] * scaled_adjoint[None, :]

            coupling = normalized * weights * self._distance_factor(sq_distances)
            gradient = coupling @ q - q * coupling.sum(dim=1, keepdim=True)

        warm_start.sinkhorn_iterations += n_sinkhorn
        return HamiltonianSystem(
            velocity=velocity,
            momentum_rate=-gradient,
            hamiltonian=hamiltonian,
            log_scaling=log_scaling,
        )

    def _distance_factor(self, sq_distances: torch.Tensor):
        """phi = -2 d(log k)/d(r^2), so that d(log k(q_k, q_j))/dq_k = phi (q_j - q_k)."""
        if self.kind == "gaussian":
            return 1.0 / self.sigma**2
        distances = torch.sqrt(sq_distances.clamp_min(torch.finfo(sq_distances.dtype).tiny))
        factor = 1.0 / (self.sigma * distances)
        # Coincident points (the diagonal) have q_j - q_k = 0: any finite factor works.
        return torch.where(sq_distances > 0, factor, torch.zeros_like(factor))

    def _autograd_system(self, points, momenta, masses, warm_start, create_graph):
        """Hamiltonian system for any kernel backend: dH/dq by autograd of the Lagrangian."""
        with torch.enable_grad():
            q = points if points.requires_grad else points.detach().requires_grad_(True)
            kernel = self.kernel(q)
            log_scaling, n_sinkhorn = self.solve_log_scaling(
                kernel, masses, init=warm_start.log_scaling
            )
            scaling = torch.exp(log_scaling)
            velocity = self._velocity(kernel, scaling, momenta)
            # h_i = <p_i, v_i> is both twice the energy density and dH/d(log lambda_i).
            energy_density = (momenta * velocity).sum(dim=1)
            hamiltonian = 0.5 * energy_density.sum()

            lagrangian = hamiltonian
            if self.normalized:
                # Without create_graph the adjoint only scales the residual, which
                # is at the tolerance level, so it needs no graph.
                with torch.set_grad_enabled(create_graph):
                    weights = masses * scaling
                    adjoint, n_adjoint = self._solve_adjoint(
                        lambda a: weights * kernel.matvec(scaling * a),
                        energy_density,
                        init=warm_start.adjoint,
                    )
                # G(f, q) = f + log K(q)(m e^f) vanishes at the fixed point, so the
                # Lagrangian equals H while its q-gradient is the total derivative.
                residual = log_scaling + kernel.log_matvec(log_scaling + torch.log(masses))
                lagrangian = hamiltonian - (adjoint * residual).sum()
                warm_start.adjoint = adjoint if create_graph else adjoint.detach()
                warm_start.adjoint_iterations += n_adjoint

            (gradient,) = torch.autograd.grad(lagrangian, q, create_graph=create_graph)

        warm_start.sinkhorn_iterations += n_sinkhorn
        return HamiltonianSystem(
            velocity=velocity,
            momentum_rate=-gradient,
            hamiltonian=hamiltonian,
            log_scaling=log_scaling,
        )

    # ---------------------------------------------------------------- helpers

    @staticmethod
    def _velocity(kernel: Kernel, scaling: torch.Tensor, momenta: torch.Tensor) -> torch.Tensor:
        return scaling[:, None] * kernel.matvec(scaling[:, None] * momenta)

    def _solve_adjoint(self, apply_transpose, rhs, *, init) -> tuple[torch.Tensor, int]:
        """Solve (I + Q^T) a = rhs by relaxed Richardson iterations.

        ``apply_transpose(a)`` returns Q^T a = m lambda K(lambda a). For a uniform
        momentum rhs is proportional to m, and Q^T m = m gives a = rhs / 2, the
        default initial guess.
        """
        tol = self.tolerance(rhs.dtype)
        scale = float(rhs.detach().abs().sum())
        if scale == 0.0:
            return torch.zeros_like(rhs), 0
        adjoint = 0.5 * rhs if init is None else init

        n_iter = 0
        while True:
            residual = rhs - adjoint - apply_transpose(adjoint)
            error = float(residual.detach().abs().sum()) / scale
            if not math.isfinite(error):
                msg = f"the adjoint solve diverged at iteration {n_iter}"
                raise FloatingPointError(msg)
            if error <= tol or n_iter >= self.max_iter:
                break
            adjoint = adjoint + _ADJOINT_RELAXATION * residual
            n_iter += 1

        if error > tol:
            logger.warning(
                "adjoint solve stopped at max_iter=%d with relative residual %.3g "
                "above tol=%.3g",
                self.max_iter,
                error,
                tol,
            )
        return adjoint, n_iter

    def _check_state(self, points, momenta, masses):
        q, _ = check_points(points, name="points")
        p, _ = check_points(momenta, name="momenta", dtype=q.dtype, device=q.device)
        if p.shape != q.shape:
            msg = f"momenta must have the shape of points {tuple(q.shape)}, got {tuple(p.shape)}"
            raise InputError(msg)
        m = check_masses(masses, n_points=q.shape[0], like=q)
        return q, p, m
