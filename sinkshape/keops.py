"""Gaussian and exponential kernels of a point cloud as KeOps symbolic matrices.

A :class:`KeOpsKernel` never stores the N x N matrix: each product is a KeOps
reduction (``pykeops.torch.LazyTensor``) compiled on first use and then run on
the CPU or on CUDA, in O(N) memory and O(N^2) time. It is the backend for large
clouds on a GPU, where a dense kernel does not fit in memory and a truncated
sparse kernel has too many entries.

pykeops is optional: this module imports it only inside functions, so that
``import sinkshape`` works without it. :func:`keops_kernel_or_fallback` checks once
per process and device type that KeOps can compile and run a reduction, and
otherwise returns a dense or sparse kernel with a :class:`KeOpsUnavailableWarning`.
"""

from __future__ import annotations

import logging
import math
import warnings

import torch

from sinkshape._checks import check_points, check_sigma
from sinkshape.errors import InputError
from sinkshape.kernels import (
    DenseKernel,
    Kernel,
    KernelKind,
    SparseKernel,
    log_kernel_of_distance,
)

__all__ = [
    "KeOpsKernel",
    "KeOpsUnavailableWarning",
    "keops_available",
    "keops_kernel_or_fallback",
]

logger = logging.getLogger(__name__)

#: Outcome of the KeOps check per device type ("cpu", "cuda"): None when a test
#: reduction compiled and returned the right value, otherwise the reason it did not.
_check_results: dict[str, str | None] = {}


class KeOpsUnavailableWarning(UserWarning):
    """Warning that KeOps is unusable, so a dense or sparse kernel replaces it."""


def _check_kind(kind) -> KernelKind:
    if kind not in ("gaussian", "exponential"):
        msg = f"kind must be 'gaussian' or 'exponential', got {kind!r}"
        raise InputError(msg)
    return kind


def _import_lazy_tensor():
    try:
        from pykeops.torch import LazyTensor
    except ImportError as error:
        msg = (
            f"the KeOps backend needs pykeops, which cannot be imported ({error}); "
            "install it with `pip install pykeops` or use backend='dense' or 'sparse'"
        )
        raise ImportError(msg) from error
    return LazyTensor


class KeOpsKernel(Kernel):
    """Gaussian or exponential kernel of a point cloud, evaluated by KeOps reductions.

    Each product recomputes the kernel entries from the points, so memory is O(N)
    and every product costs O(N^2) kernel evaluations. KeOps compiles one C++ or
    CUDA routine per formula, dtype, point dimension and number of columns, on
    first use, and caches it on disk for later processes.

    The kernel is stored by its logarithm, so ``has_log`` is True and
    :meth:`log_matvec` is an exact log-sum-exp reduction. A ``sigma`` far below
    the point spacing then gives log K = 0 on the diagonal and a very negative
    number elsewhere, never 0 / 0.

    Products are differentiable with respect to the points (KeOps builds the
    gradient reductions), twice as well: keopscore 2.3 derives gradients of
    gradients symbolically.

    NOTE: only the CPU path has been run. On CUDA tensors pykeops compiles the
    same formulas with nvrtc; no test covers that path yet.

    Parameters
    ----------
    points : array-like
        (N, D) coordinates; a tensor keeps its dtype, device and autograd graph.
    sigma : float
        Bandwidth, in the unit of the coordinates.
    kind : {"gaussian", "exponential"}
        k(x, y) = exp(-|x - y|^2 / (2 sigma^2)) or exp(-|x - y| / sigma).

    Attributes
    ----------
    points : torch.Tensor
        The (N, D) coordinates as given.
    sigma : float
    kind : str

    Examples
    --------
    >>> import torch
    >>> from sinkshape import DiffusionOperator
    >>> from sinkshape.keops import KeOpsKernel
    >>> points = torch.rand(1000, 3, dtype=torch.float64)
    >>> kernel = KeOpsKernel.from_points(points, sigma=0.1)  # doctest: +SKIP
    >>> Q = DiffusionOperator(kernel)  # doctest: +SKIP
    """

    has_log = True

    def __init__(self, points, sigma, *, kind: KernelKind = "gaussian") -> None:
        self.sigma = check_sigma(sigma)
        self.kind = _check_kind(kind)
        self.points, _ = check_points(points)
        self._lazy_tensor = _import_lazy_tensor()

        self.n_points = self.points.shape[0]
        self.dtype = self.points.dtype
        self.device = self.points.device

        # Distances do not change under a translation. Centring keeps float32
        # differences accurate for coordinates far from the origin (CT scanners
        # give x around 200 mm). The mean is detached so that it adds nothing to
        # the gradient with respect to the points.
        self._centered = self.points - self.points.detach().mean(dim=0)

        # Scale the points so that log k is -|y_i - y_j|^2 (Gaussian) or
        # -|y_i - y_j| (exponential). sigma then stays out of the KeOps formula,
        # so every sigma shares one compiled routine.
        if kind == "gaussian":
            self._scaled = self._centered / (math.sqrt(2.0) * self.sigma)
        else:
            self._scaled = self._centered / self.sigma

    @classmethod
    def from_points(
        cls,
        points,
        sigma,
        *,
        kind: KernelKind = "gaussian",
    ) -> KeOpsKernel:
        """Build the Gaussian or exponential KeOps kernel of a point cloud.

        Raises ImportError when pykeops cannot be imported. A compiler failure
        shows only at the first product, so :func:`keops_kernel_or_fallback`
        checks for it beforehand.
        """
        return cls(points, sigma, kind=kind)

    def _log_kernel(self):
        """Return the symbolic (N, N) LazyTensor of log K."""
        y_i = self._lazy_tensor(self._scaled[:, None, :])
        y_j = self._lazy_tensor(self._scaled[None, :, :])
        if self.kind == "gaussian":
            return -y_i.sqdist(y_j)
        # The gradient of |y_i - y_j| is (y_i - y_j) * Rsqrt(|y_i - y_j|^2), and
        # keopscore 2.3 defines Rsqrt(0) = 0, so coincident points, the diagonal
        # included, get a zero gradient instead of NaN. keopscore 2.0 gave NaN.
        return -(y_i - y_j).norm2()

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        columns = v[:, None] if v.ndim == 1 else v.contiguous()
        v_j = self._lazy_tensor(columns[None, :, :])
        product = (self._log_kernel().exp() * v_j).sum(dim=1)
        return product[:, 0] if v.ndim == 1 else product

    def log_matvec(self, log_v: torch.Tensor) -> torch.Tensor:
        log_v_j = self._lazy_tensor(log_v.contiguous()[None, :, None])
        return (self._log_kernel() + log_v_j).logsumexp(dim=1)[:, 0]

    def to_dense(self) -> torch.Tensor:
        diff = self._centered[:, None, :] - self._centered[None, :, :]
        log_matrix = log_kernel_of_distance((diff**2).sum(-1), self.sigma, self.kind)
        return torch.exp(log_matrix)

    def __repr__(self) -> str:
        return (
            f"KeOpsKernel(n_points={self.n_points}, kind={self.kind!r}, "
            f"sigma={self.sigma:g}, dtype={self.dtype}, device={self.device})"
        )


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    first = lines[0] if lines else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def _check_keops(device: torch.device) -> str | None:
    """Run one tiny Gaussian reduction on ``device``.

    Returns None when it compiles and gives the right value, else the reason.
    The formula is the Gaussian log-sum-exp of 3-D float32 points, which the
    Sinkhorn iteration on such clouds reuses from the KeOps cache instead of
    compiling it again.
    """
    try:
        import pykeops  # noqa: F401
    except ImportError as error:
        return f"pykeops cannot be imported ({error})"
    except Exception as error:  # noqa: BLE001
        # A broken install can raise OSError or other errors while importing.
        return f"importing pykeops failed ({_first_line(error)})"

    points = torch.tensor(
        [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float32, device=device
    )
    try:
        kernel = KeOpsKernel.from_points(points, 1.0)
        log_row_sums = kernel.log_matvec(
            torch.zeros(2, dtype=torch.float32, device=device)
        )
    except Exception as error:  # noqa: BLE001
        # pykeops reports a compiler failure as ImportError, OSError,
        # FileNotFoundError, RuntimeError or ValueError, depending on the step.
        detail = _first_line(error)
        return f"the KeOps test reduction failed to compile or run ({detail})"

    expected = math.log1p(math.exp(-0.5))
    found = log_row_sums.detach().cpu().tolist()
    if not all(abs(value - expected) < 1e-5 for value in found):
        return (
            f"the KeOps test reduction returned {found} "
            f"instead of {expected:.6f} for both points"
        )
    return None


def _keops_failure_reason(device: torch.device | str) -> str | None:
    """Return why KeOps fails on this device type, or None when it works.

    The check runs once per process and device type.
    """
    device_type = torch.device(device).type
    if device_type not in _check_results:
        reason = _check_keops(torch.device(device))
        _check_results[device_type] = reason
        if reason is None:
            logger.debug("KeOps works on %s", device_type)
        else:
            logger.info("KeOps does not work on %s: %s", device_type, reason)
    return _check_results[device_type]


def keops_available(device: torch.device | str = "cpu") -> bool:
    """Check that pykeops imports and compiles a reduction on this device type.

    The first call per process and device type ("cpu", "cuda") compiles a tiny
    reduction, about 10 seconds with g++ when nothing is cached. Later calls
    return the stored result.
    """
    return _keops_failure_reason(device) is None


def keops_kernel_or_fallback(
    points,
    sigma,
    *,
    kind: KernelKind = "gaussian",
    truncation: float = 1e-6,
) -> Kernel:
    """Build a :class:`KeOpsKernel`, or a dense or sparse kernel where KeOps fails.

    When pykeops cannot be imported or cannot compile on the points' device type,
    this emits one :class:`KeOpsUnavailableWarning` with the reason and returns
    :meth:`DenseKernel.from_points` for at most
    ``sinkshape.diffusion.AUTO_DENSE_MAX_POINTS`` points, otherwise
    :meth:`SparseKernel.from_points` with ``truncation``.
    """
    from sinkshape import diffusion

    x, _ = check_points(points)
    sigma = check_sigma(sigma)
    kind = _check_kind(kind)
    reason = _keops_failure_reason(x.device)
    if reason is None:
        return KeOpsKernel.from_points(x, sigma, kind=kind)

    n_points = x.shape[0]
    if n_points <= diffusion.AUTO_DENSE_MAX_POINTS:
        fallback = "dense"
    else:
        fallback = "sparse"
    msg = (
        f"KeOps is unavailable on {x.device.type}: {reason}. "
        f"Using the {fallback} backend for {n_points} points instead"
    )
    warnings.warn(msg, KeOpsUnavailableWarning, stacklevel=2)

    if fallback == "dense":
        return DenseKernel.from_points(x, sigma, kind=kind)
    return SparseKernel.from_points(x, sigma, kind=kind, truncation=truncation)
