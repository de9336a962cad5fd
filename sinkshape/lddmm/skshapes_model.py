"""A scikit-shapes deformation model with a Sinkhorn-normalized kernel cometric.

Importing this module imports scikit-shapes (and through it pykeops), which the
rest of sinkshape never does.

scikit-shapes 0.3 calls a model through ``parameter_shape(shape)``,
``inital_parameter(shape)`` (sic, inherited from ``BaseModel``) and
``morph(shape, parameter, return_path, return_regularization)``, which returns a
``MorphingOutput``. :class:`NormalizedKernelDeformation` implements them, so
``skshapes.Registration(model=NormalizedKernelDeformation(...), loss=...)``
runs unchanged.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from skshapes.morphing.basemodel import BaseModel
from skshapes.types import MorphingOutput

from sinkshape._checks import check_sigma
from sinkshape.errors import InputError
from sinkshape.lddmm.control import lumped_masses
from sinkshape.lddmm.metric import KernelMetric
from sinkshape.lddmm.shooting import shoot

__all__ = ["NormalizedKernelDeformation"]


class NormalizedKernelDeformation(BaseModel):
    """LDDMM with the Sinkhorn-normalized kernel as cometric, for scikit-shapes.

    The parameter is the initial momentum on the control points. The shape's
    point masses (a third of the adjacent triangle areas on a triangle mesh) are
    the masses of the normalization, so that a uniform momentum p = m v
    translates the shape by v t exactly, at every t.

    Parameters
    ----------
    n_steps : int
        Integration steps per unit of time; ``final_time=2`` takes twice as many
        steps of the same length.
    kernel : {"gaussian", "exponential"}
        k(x, y) = exp(-|x - y|^2 / (2 sigma^2)) or exp(-|x - y| / sigma).
    sigma : float
        Kernel bandwidth, in the unit of the coordinates.
    normalization : {"sinkhorn", "none"}
        ``"none"`` gives the raw kernel, for comparison.
    control_points : bool
        Use ``shape.control_points`` (a scikit-shapes PolyData) as control points
        when it is set. A triangle mesh of control points brings its own vertex
        areas as masses. For a point cloud, each control point gets the masses of
        the shape points nearest to it, so the masses still sum to the area.
    method : {"euler", "midpoint", "rk4"}
        Integration scheme.
    backend : {"auto", "dense", "sparse", "keops"}
        Kernel storage.
    tol : float, optional
        Tolerance of the Sinkhorn and adjoint solves; 1e-5 in float32, the
        scikit-shapes default dtype, and 1e-6 in float64.
    max_iter : int
        Maximum number of updates per solve.

    Notes
    -----
    The log-scaling at the initial control points is cached and reused as the
    warm start of the next ``morph`` of the same shape, so that in a
    registration the first Sinkhorn solve runs once. Along a geodesic, each
    evaluation starts from the previous one's scaling.

    With control points, the kernel between shape points and control points is
    normalized by extending the control points' scaling with one Sinkhorn
    update, lambda(x) = 1 / sum_j k(x, c_j) m_j lambda_j, which makes the
    velocity of a uniform momentum uniform at every point of space (see
    :mod:`sinkshape.lddmm.metric`).

    Examples
    --------
    >>> import skshapes as sks  # doctest: +SKIP
    >>> model = NormalizedKernelDeformation(sigma=0.3, n_steps=10)  # doctest: +SKIP
    >>> registration = sks.Registration(model=model, loss=sks.L2Loss(), n_iter=20)  # doctest: +SKIP
    >>> registration.fit(source=source, target=target)  # doctest: +SKIP
    """

    def __init__(
        self,
        n_steps: int = 10,
        kernel: str = "gaussian",
        sigma: float = 0.1,
        normalization: str = "sinkhorn",
        control_points: bool = False,
        method: str = "midpoint",
        backend: str = "dense",
        tol: float | None = None,
        max_iter: int = 100,
    ) -> None:
        if int(n_steps) != n_steps or n_steps < 1:
            msg = f"n_steps must be a positive integer, got {n_steps!r}"
            raise InputError(msg)
        self.n_steps = int(n_steps)
        self.kernel = kernel
        self.sigma = check_sigma(sigma)
        self.normalization = normalization
        self.control_points = bool(control_points)
        self.method = method
        self.backend = backend
        self.tol = tol
        self.max_iter = max_iter
        self.metric = KernelMetric(
            self.sigma,
            kind=kernel,
            normalization=normalization,
            backend=backend,
            tol=tol,
            max_iter=max_iter,
        )
        self.copy_features = [
            "n_steps",
            "kernel",
            "sigma",
            "normalization",
            "control_points",
            "method",
            "backend",
            "tol",
            "max_iter",
        ]
        self._cached_points: torch.Tensor | None = None
        self._cached_log_scaling: torch.Tensor | None = None

    def __repr__(self) -> str:
        return (
            f"NormalizedKernelDeformation(sigma={self.sigma:g}, n_steps={self.n_steps}, "
            f"kernel={self.kernel!r}, normalization={self.normalization!r}, "
            f"control_points={self.control_points})"
        )

    def _uses_control_points(self, shape) -> bool:
        return self.control_points and shape.control_points is not None

    def parameter_shape(self, shape) -> tuple[int, int]:
        """Shape of the momentum: that of the control points or of the points."""
        if self._uses_control_points(shape):
            return tuple(shape.control_points.points.shape)
        return tuple(shape.points.shape)

    def control_masses(self, shape) -> torch.Tensor:
        """Masses of the control points (or of the points without control points)."""
        if not self._uses_control_points(shape):
            return shape.point_masses.detach()
        control = shape.control_points
        if control.is_triangle_mesh:
            return control.point_masses.detach()
        return lumped_masses(shape.points, shape.point_masses, control.points)

    def morph(
        self,
        shape,
        parameter: torch.Tensor,
        return_path: bool = False,
        return_regularization: bool = False,
        final_time: float = 1.0,
    ) -> MorphingOutput:
        """Shoot the momentum ``parameter`` from ``shape`` up to ``final_time``.

        Parameters
        ----------
        shape : skshapes.PolyData
            The shape to deform.
        parameter : torch.Tensor
            Initial momenta, of shape :meth:`parameter_shape`.
        return_path : bool
            Also return the shapes at the integration steps.
        return_regularization : bool
            Also return H(q0, p0), the kinetic energy of the geodesic.
        final_time : float
            End time; below 0 or above 1 extrapolates the geodesic.

        Returns
        -------
        skshapes.types.MorphingOutput
            ``morphed_shape``, ``path`` (a list of shapes, or None) and
            ``regularization`` (zero unless requested).
        """
        expected = self.parameter_shape(shape)
        if tuple(parameter.shape) != expected:
            msg = f"parameter must have shape {expected}, got {tuple(parameter.shape)}"
            raise InputError(msg)
        if parameter.device != shape.device:
            msg = (
                f"parameter is on {parameter.device} but the shape is on {shape.device}; "
                "move them to the same device"
            )
            raise InputError(msg)
        final_time = float(final_time)
        if not math.isfinite(final_time) or final_time == 0.0:
            msg = f"final_time must be finite and non-zero, got {final_time!r}"
            raise InputError(msg)

        uses_control = self._uses_control_points(shape)
        points = shape.points.detach()
        control = shape.control_points.points.detach() if uses_control else points
        masses = self.control_masses(shape).to(points.dtype)

        n_frames = max(1, math.ceil(abs(final_time) * self.n_steps - 1e-9))
        times = np.linspace(0.0, final_time, n_frames + 1) if return_path else (0.0, final_time)
        path = shoot(
            self.metric,
            control,
            parameter,
            masses,
            points=points if uses_control else None,
            times=times,
            n_steps=self.n_steps,
            method=self.method,
            log_scaling=self._initial_log_scaling(control),
        )
        self._remember(control, path)

        index_final = int(np.argmin(np.abs(path.times - final_time)))
        morphed_shape = shape.copy()
        morphed_shape.points = path.points[index_final]
        if uses_control:
            morphed_control = shape.control_points.copy()
            morphed_control.points = path.control_points[index_final].detach().clone()
            morphed_shape.control_points = morphed_control

        shapes = None
        if return_path:
            shapes = []
            for index in range(len(path.times)):
                frame = shape.copy()
                frame.points = path.points[index]
                shapes.append(frame)

        regularization = torch.zeros((), dtype=points.dtype, device=points.device)
        if return_regularization:
            index_zero = int(np.argmin(np.abs(path.times)))
            regularization = path.hamiltonian[index_zero]

        return MorphingOutput(
            morphed_shape=morphed_shape,
            path=shapes,
            regularization=regularization,
        )

    def _initial_log_scaling(self, control: torch.Tensor) -> torch.Tensor | None:
        cached = self._cached_points
        if cached is not None and cached.shape == control.shape and torch.equal(cached, control):
            return self._cached_log_scaling
        return None

    def _remember(self, control: torch.Tensor, path) -> None:
        index_zero = int(np.argmin(np.abs(path.times)))
        self._cached_points = control.detach().clone()
        self._cached_log_scaling = path.log_scaling[index_zero].detach().clone()
