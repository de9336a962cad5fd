"""Symmetric Sinkhorn scaling of a kernel with point masses.

For a symmetric non-negative kernel K and positive masses m, find lambda > 0 with

    Q = diag(lambda) K diag(m) diag(lambda),    Q 1 = 1,

that is lambda_i sum_j K_ij m_j lambda_j = 1 for every i. Two updates:

- multiplicative, for any non-negative kernel:
  lambda <- sqrt(lambda / K(m lambda));
- log domain, for kernels stored by their logarithm, with f = log lambda:
  f <- f / 2 - log(K exp(f + log m)) / 2, computed by a log-sum-exp that never
  underflows, so that a sigma far below the point spacing gives Q close to the
  identity instead of 0 / 0.

The iteration stops when the marginal error, sum_i m_i |(Q 1)_i - 1| / sum_i m_i,
is at most ``tol``. Near the fixed point the error contracts by about
(1 - lambda_min(Q)) / 2 per iteration, at most 1/2 for positive semi-definite
kernels.
"""

from __future__ import annotations

import logging
import math
import numbers
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from sinkshape._checks import as_tensor, check_positive
from sinkshape.errors import InputError
from sinkshape.kernels import Kernel

__all__ = [
    "SinkhornConvergenceWarning",
    "SinkhornResult",
    "default_tol",
    "marginal_error",
    "sinkhorn_scaling",
]

logger = logging.getLogger(__name__)


class SinkhornConvergenceWarning(RuntimeWarning):
    """The Sinkhorn iteration reached ``max_iter`` before ``tol``."""


@dataclass
class SinkhornResult:
    """Outcome of :func:`sinkhorn_scaling`.

    Attributes
    ----------
    log_scaling : torch.Tensor
        log lambda, shape (N,).
    n_iter : int
        Number of updates applied to the initial scaling.
    errors : list of float
        Marginal error before each update and after the last one, so
        ``errors[-1]`` is the error of the returned scaling.
    tol : float
        Requested marginal error.
    """

    log_scaling: torch.Tensor
    n_iter: int
    errors: list[float] = field(default_factory=list)
    tol: float = 0.0

    @property
    def scaling(self) -> torch.Tensor:
        """lambda, the diagonal of the scaling, shape (N,)."""
        return torch.exp(self.log_scaling)

    @property
    def marginal_error(self) -> float:
        """Marginal error of the returned scaling."""
        return self.errors[-1]

    @property
    def converged(self) -> bool:
        """Whether the marginal error reached ``tol``."""
        return self.marginal_error <= self.tol


def default_tol(dtype: torch.dtype) -> float:
    """Default tolerance on the marginal error: 1e-6 in float64, 1e-5 in float32."""
    return 1e-6 if dtype == torch.float64 else 1e-5


def marginal_error(row_sums: torch.Tensor, masses: torch.Tensor) -> float:
    """Mass-weighted mean of |(Q 1)_i - 1| for the row sums (Q 1)_i."""
    # Normalizing the masses first keeps the sum finite in float32 for any scale.
    weights = masses / masses.sum()
    return float((weights * (row_sums - 1.0).abs()).sum())


def sinkhorn_scaling(
    kernel: Kernel,
    masses: torch.Tensor,
    *,
    tol: float | None = None,
    max_iter: int = 100,
    init: torch.Tensor | None = None,
    log_domain: bool | None = None,
    callback: Callable[[int, float], None] | None = None,
) -> SinkhornResult:
    """Find the symmetric scaling that makes diag(lambda) K diag(m) diag(lambda) stochastic.

    Parameters
    ----------
    kernel : Kernel
        Symmetric non-negative kernel with a positive diagonal.
    masses : torch.Tensor
        Positive point masses m, shape (N,), with the kernel's dtype and device.
    tol : float, optional
        Stop when the marginal error is at most ``tol``; see :func:`default_tol`.
    max_iter : int
        Maximum number of updates. Reaching it warns with the error reached.
    init : array-like, optional
        Warm start: log lambda from an earlier solve, shape (N,).
    log_domain : bool, optional
        Use the log-domain update; by default, whenever the kernel is stored by
        its logarithm.
    callback : callable, optional
        Called as ``callback(iteration, error)`` after each error evaluation, for
        progress bars.

    Returns
    -------
    SinkhornResult
        The log-scaling whose marginal error is ``errors[-1]``.

    Notes
    -----
    The loop uses no in-place operation, so autograd differentiates through it,
    twice if needed.
    """
    tol = default_tol(masses.dtype) if tol is None else check_positive(tol, name="tol")
    if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral) or max_iter < 0:
        msg = f"max_iter must be a non-negative integer, got {max_iter!r}"
        raise InputError(msg)
    max_iter = int(max_iter)
    if log_domain is None:
        log_domain = kernel.has_log

    log_masses = torch.log(masses)
    if init is None:
        log_scaling = torch.zeros_like(masses)
    else:
        log_scaling, _ = as_tensor(
            init, name="init", dtype=masses.dtype, device=masses.device
        )
        if log_scaling.shape != masses.shape:
            msg = (
                f"init must have shape {tuple(masses.shape)}, "
                f"got {tuple(log_scaling.shape)}"
            )
            raise InputError(msg)
        finite = torch.isfinite(log_scaling)
        if not bool(finite.all()):
            first = int(torch.nonzero(~finite)[0])
            msg = (
                f"init must be a finite log-scaling, but point {first} has "
                f"{log_scaling[first].item()!r}. Pass None to start from lambda = 1"
            )
            raise InputError(msg)

    errors: list[float] = []
    n_iter = 0
    while True:
        # One kernel product gives both the current row sums and the update.
        if log_domain:
            log_product = kernel.log_matvec(log_scaling + log_masses)
        else:
            log_product = torch.log(kernel.matvec(torch.exp(log_scaling) * masses))
        row_sums = torch.exp(log_scaling + log_product)

        error = marginal_error(row_sums.detach(), masses.detach())
        errors.append(error)
        if not math.isfinite(error):
            msg = (
                f"Sinkhorn scaling produced a non-finite marginal error at iteration "
                f"{n_iter}: the kernel products underflowed or a row of K is zero. "
                "Store the kernel by its logarithm (log_domain=True) or check that "
                "the kernel has a positive diagonal"
            )
            raise FloatingPointError(msg)
        if callback is not None:
            callback(n_iter, error)

        if error <= tol or n_iter >= max_iter:
            break
        log_scaling = 0.5 * (log_scaling - log_product)
        n_iter += 1

    if errors[-1] > tol:
        msg = (
            f"Sinkhorn scaling stopped at max_iter={max_iter} with marginal error "
            f"{errors[-1]:.3g} above tol={tol:.3g}; raise max_iter or tol"
        )
        warnings.warn(msg, SinkhornConvergenceWarning, stacklevel=2)

    logger.debug(
        "Sinkhorn scaling: %d iterations, marginal error %.3g", n_iter, errors[-1]
    )
    return SinkhornResult(log_scaling=log_scaling, n_iter=n_iter, errors=errors, tol=tol)
