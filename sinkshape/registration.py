"""Surface registration by LDDMM with a Sinkhorn-normalized kernel, as one function.

:func:`register` takes two meshes (pyvista, VTK, scikit-shapes or arrays) and
returns a :class:`RegistrationResult` with the registered points, their
displacement, the geodesic path and the loss history. Neither the command line
nor a 3D Slicer module needs to know about scikit-shapes or autograd.

The objective, minimized by L-BFGS over the initial momenta p = m u (u in the
unit of length), is

    (fidelity(x(1)) + regularization * H(q(0), p(0))) / (A sigma^2),

where x(1) is the deformed source, H = 1/2 <p, K~ p> the kinetic energy of the
geodesic, A the source area and sigma the kernel width. The fidelity behaves like
sum_i m_i |x_i - y_i|^2 for small residual displacements (see
:mod:`sinkshape.lddmm.losses`), and a translation at speed v costs H = A |v|^2 / 2,
so ``regularization`` weighs half a squared velocity against a squared residual:
0.01 leaves a residual of about 0.5 % of a translation.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from sinkshape._checks import check_points, check_sigma
from sinkshape.errors import InputError
from sinkshape.lddmm.control import farthest_point_sampling, lumped_masses
from sinkshape.lddmm.losses import LossName, make_loss
from sinkshape.lddmm.metric import KernelMetric, MetricBackend, Normalization
from sinkshape.lddmm.shooting import GeodesicPath, Integrator, shoot
from sinkshape.mesh import Surface, as_surface, vertex_areas

__all__ = ["RegistrationResult", "register"]

logger = logging.getLogger(__name__)

#: Gradient norm, relative to the initial one, below which L-BFGS stops.
_RELATIVE_GRADIENT_TOL = 1e-6


@dataclass
class RegistrationResult:
    """Outcome of :func:`register`.

    Attributes
    ----------
    points : numpy.ndarray
        Registered source vertices x(1), shape (N, 3).
    displacement : numpy.ndarray
        ``points`` minus the source vertices, shape (N, 3).
    source_points : numpy.ndarray
        Source vertices x(0), shape (N, 3).
    triangles : numpy.ndarray or None
        (F, 3) triangles of the source, shared by the registered surface.
    control_points : numpy.ndarray
        Initial control points q(0), shape (Nc, 3).
    momenta : numpy.ndarray
        Initial momenta p(0), shape (Nc, 3).
    masses : numpy.ndarray
        Masses of the control points, shape (Nc,).
    path_times : numpy.ndarray
        Times of ``path``, shape (T,).
    path : numpy.ndarray
        Source vertices along the geodesic, shape (T, N, 3).
    loss_history : list of float
        Objective at each evaluation, stage after stage.
    fidelity_history, regularization_history : list of float
        Its two terms, before scaling by 1 / (A sigma^2).
    stages : list of int
        Evaluations made in each loss-scale stage.
    time : float
        Wall-clock seconds of the optimization and the final shooting.
    metric : KernelMetric
        The cometric, for shooting again.
    n_steps : int
        Integration steps per unit of time.
    method : str
        Integration scheme.
    """

    points: np.ndarray
    displacement: np.ndarray
    source_points: np.ndarray
    triangles: np.ndarray | None
    control_points: np.ndarray
    momenta: np.ndarray
    masses: np.ndarray
    path_times: np.ndarray
    path: np.ndarray
    loss_history: list[float]
    fidelity_history: list[float]
    regularization_history: list[float]
    stages: list[int]
    time: float
    metric: KernelMetric
    n_steps: int
    method: str
    _log_scaling: torch.Tensor | None = field(default=None, repr=False)

    def shoot(self, times: Sequence[float], points=None) -> GeodesicPath:
        """Shoot the registered momenta again and report ``times``, before 0 and after 1 included.

        ``points`` (M, 3) are carried by the flow; the source vertices by default.
        """
        carried = self.source_points if points is None else points
        carried, _ = check_points(carried, name="points", dtype=torch.float64)
        with torch.no_grad():
            return shoot(
                self.metric,
                torch.as_tensor(self.control_points),
                torch.as_tensor(self.momenta),
                torch.as_tensor(self.masses),
                points=carried,
                times=times,
                n_steps=self.n_steps,
                method=self.method,
                log_scaling=self._log_scaling,
            )

    def transform_points(self, points, time: float = 1.0) -> np.ndarray:
        """Move arbitrary points by the deformation from 0 to ``time``, shape (M, 3)."""
        path = self.shoot((0.0, time), points=points)
        return path.at(time).detach().cpu().numpy()


def register(
    source,
    target,
    *,
    sigma,
    loss: LossName = "varifold",
    loss_sigma: float | Sequence[float] | None = None,
    regularization: float = 0.01,
    n_steps: int = 10,
    n_iter: int = 50,
    control_points=None,
    kind: str = "gaussian",
    normalization: Normalization = "sinkhorn",
    backend: MetricBackend = "dense",
    method: Integrator = "midpoint",
    tol: float | None = None,
    loss_triangles: int | None = 4000,
    path_times: Sequence[float] | None = None,
    dtype: torch.dtype = torch.float64,
    callback: Callable[[int, int, float], None] | None = None,
) -> RegistrationResult:
    """Register ``source`` onto ``target`` along a geodesic of the normalized kernel metric.

    Parameters
    ----------
    source, target : pyvista.PolyData, vtkPolyData, skshapes.PolyData or array-like
        Triangle meshes, or (N, 3) point clouds for the optimal-transport and
        point-to-point losses.
    sigma : float
        Width of the deformation kernel, in the unit of the coordinates (mm).
    loss : {"varifold", "point-to-point", "optimal-transport"}
        Data term. ``"point-to-point"`` needs vertices in correspondence;
        the other two do not, and let the surface slide along itself.
    loss_sigma : float or sequence of float, optional
        Scale of the varifold kernel or blur of the optimal transport, in the
        unit of the coordinates. A decreasing sequence runs one stage per scale,
        coarse to fine, each of ``n_iter`` iterations. Default: sigma / 2, then
        sigma / 4.
    regularization : float
        Weight of the kinetic energy; see the module documentation.
    n_steps : int
        Integration steps per unit of time.
    n_iter : int
        Maximum L-BFGS iterations per stage.
    control_points : int or array-like, optional
        Number of control points chosen on the source by farthest-point sampling,
        or their (Nc, 3) coordinates. By default, the vertices of the mesh the
        loss compares. Each control point gets the vertex areas of the source
        vertices nearest to it as mass.
    kind : {"gaussian", "exponential"}
        Deformation kernel.
    normalization : {"sinkhorn", "none"}
        ``"none"`` uses the raw kernel, for comparison.
    backend : {"auto", "dense", "sparse", "keops"}
        Kernel storage for the control points.
    method : {"euler", "midpoint", "rk4"}
        Integration scheme.
    tol : float, optional
        Tolerance of the Sinkhorn and adjoint solves.
    loss_triangles : int or None
        The varifold and optimal-transport losses compare copies of the meshes
        decimated to about this many triangles. The flow carries the decimated
        source during the optimization, and the full source follows the final
        deformation. None compares the full meshes. The point-to-point loss
        always uses the full meshes.
    path_times : sequence of float, optional
        Times of the returned path; k / n_steps for k = 0..n_steps by default.
    dtype : torch.dtype
        Floating-point type of the computation.
    callback : callable, optional
        Called as ``callback(stage, evaluation, objective)`` after each
        evaluation of the objective.

    Returns
    -------
    RegistrationResult

    Examples
    --------
    >>> import pyvista as pv
    >>> from sinkshape.registration import register
    >>> source = pv.Icosphere(radius=10.0, nsub=2)
    >>> target = source.translate((2.0, 0.0, 0.0))
    >>> result = register(source, target, sigma=5.0, loss="point-to-point", n_iter=20)
    >>> bool(abs(result.displacement[:, 0].mean() - 2.0) < 0.05)
    True
    """
    started = time.perf_counter()
    settings = _check_settings(
        sigma=sigma,
        loss=loss,
        loss_sigma=loss_sigma,
        regularization=regularization,
        n_iter=n_iter,
        loss_triangles=loss_triangles,
    )
    metric = KernelMetric(
        settings["sigma"], kind=kind, normalization=normalization, backend=backend, tol=tol
    )

    source_surface = as_surface(_wrapped(source), dtype=dtype)
    target_surface = as_surface(_wrapped(target), dtype=dtype)
    if source_surface.points.shape[1] != 3 or target_surface.points.shape[1] != 3:
        msg = "source and target must be 3-D: their points need 3 coordinates"
        raise InputError(msg)

    problem = _Problem.build(
        source_surface,
        target_surface,
        loss=loss,
        loss_triangles=settings["loss_triangles"],
        control_points=control_points,
        dtype=dtype,
    )
    with torch.no_grad():
        kernel = metric.kernel(problem.control_points)
        log_scaling0, _ = metric.solve_log_scaling(kernel, problem.masses)

    velocities = torch.zeros_like(problem.control_points, requires_grad=True)
    histories = _History()
    scale = problem.area * settings["sigma"] ** 2
    for stage, stage_sigma in enumerate(settings["loss_sigmas"]):
        data_term = make_loss(
            loss,
            sigma=stage_sigma,
            source_triangles=problem.loss_triangles,
            source_masses=problem.loss_masses,
            target_points=problem.target_points,
            target_triangles=problem.target_triangles,
            target_masses=problem.target_masses,
        )

        def objective(
            stage=stage, data_term=data_term
        ) -> tuple[torch.Tensor, float, float]:
            momenta = problem.masses[:, None] * velocities
            path = shoot(
                metric,
                problem.control_points,
                momenta,
                problem.masses,
                points=problem.loss_points,
                times=(0.0, 1.0),
                n_steps=n_steps,
                method=method,
                log_scaling=log_scaling0,
            )
            fidelity = data_term(path.at(1.0))
            energy = path.hamiltonian[0]
            return (
                (fidelity + regularization * energy) / scale,
                float(fidelity.detach()),
                float(energy.detach()),
            )

        evaluations = _minimize(objective, velocities, n_iter=n_iter, stage=stage,
                                history=histories, callback=callback)
        histories.stages.append(evaluations)
        if evaluations:
            logger.info(
                "stage %d (loss sigma %.3g): %d evaluations, objective %.4g",
                stage, stage_sigma, evaluations, histories.objective[-1],
            )

    momenta = (problem.masses[:, None] * velocities).detach()
    times = path_times if path_times is not None else np.linspace(0.0, 1.0, n_steps + 1)
    with torch.no_grad():
        path = shoot(
            metric,
            problem.control_points,
            momenta,
            problem.masses,
            points=source_surface.points,
            times=tuple(times) + (1.0,),
            n_steps=n_steps,
            method=method,
            log_scaling=log_scaling0,
        )
    registered = path.at(1.0).cpu().numpy()
    source_points = source_surface.points.cpu().numpy()
    keep = [i for i, t in enumerate(path.times) if any(abs(t - s) < 1e-12 for s in times)]

    return RegistrationResult(
        points=registered,
        displacement=registered - source_points,
        source_points=source_points,
        triangles=source_surface.triangles,
        control_points=problem.control_points.cpu().numpy(),
        momenta=momenta.cpu().numpy(),
        masses=problem.masses.cpu().numpy(),
        path_times=path.times[keep],
        path=path.points[keep].cpu().numpy(),
        loss_history=histories.objective,
        fidelity_history=histories.fidelity,
        regularization_history=histories.regularization,
        stages=histories.stages,
        time=time.perf_counter() - started,
        metric=metric,
        n_steps=n_steps,
        method=method,
        _log_scaling=log_scaling0,
    )


def _wrapped(data):
    """Return a plain VTK object as a pyvista one, which :func:`as_surface` reads."""
    if type(data).__module__.startswith("vtkmodules"):
        import pyvista as pv

        return pv.wrap(data)
    return data


@dataclass
class _History:
    objective: list[float] = field(default_factory=list)
    fidelity: list[float] = field(default_factory=list)
    regularization: list[float] = field(default_factory=list)
    stages: list[int] = field(default_factory=list)


def _minimize(objective, variable, *, n_iter, stage, history, callback) -> int:
    optimizer = torch.optim.LBFGS(
        [variable],
        lr=1.0,
        max_iter=n_iter,
        max_eval=math.ceil(1.25 * n_iter) + 1,
        history_size=10,
        tolerance_grad=0.0,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )
    evaluations = 0
    initial_gradient = None

    def closure():
        nonlocal evaluations, initial_gradient
        optimizer.zero_grad()
        value, fidelity, energy = objective()
        value.backward()
        evaluations += 1
        history.objective.append(float(value.detach()))
        history.fidelity.append(fidelity)
        history.regularization.append(energy)
        if callback is not None:
            callback(stage, evaluations, history.objective[-1])

        gradient_norm = float(variable.grad.abs().max())
        if initial_gradient is None:
            initial_gradient = gradient_norm
        if gradient_norm <= _RELATIVE_GRADIENT_TOL * initial_gradient:
            # L-BFGS stops when the gradient is below tolerance_grad; set it
            # relative to the first gradient of the stage.
            optimizer.param_groups[0]["tolerance_grad"] = gradient_norm * (1 + 1e-12)
        return value

    if n_iter > 0:
        optimizer.step(closure)
    return evaluations


@dataclass
class _Problem:
    """The tensors of one registration: control points and what the loss compares."""

    control_points: torch.Tensor
    masses: torch.Tensor
    loss_points: torch.Tensor | None
    loss_triangles: np.ndarray | None
    loss_masses: torch.Tensor
    target_points: torch.Tensor
    target_triangles: np.ndarray | None
    target_masses: torch.Tensor
    area: float

    @classmethod
    def build(cls, source: Surface, target: Surface, *, loss, loss_triangles, control_points, dtype):
        if loss == "point-to-point" or loss_triangles is None:
            loss_source, loss_target = source, target
        else:
            loss_source = _decimated(source, loss_triangles, dtype)
            loss_target = _decimated(target, loss_triangles, dtype)

        if control_points is None:
            control = loss_source.points
            masses = loss_source.masses
            carried = None
        else:
            if isinstance(control_points, (int, np.integer)) and not isinstance(control_points, bool):
                indices = farthest_point_sampling(loss_source.points, int(control_points))
                control = loss_source.points[torch.from_numpy(indices)]
            else:
                control, _ = check_points(control_points, name="control_points", dtype=dtype)
                if control.shape[1] != 3:
                    msg = f"control_points must have shape (Nc, 3), got {tuple(control.shape)}"
                    raise InputError(msg)
            masses = lumped_masses(source.points, source.masses, control)
            carried = loss_source.points

        return cls(
            control_points=control.detach(),
            masses=masses.detach(),
            loss_points=carried,
            loss_triangles=loss_source.triangles,
            loss_masses=loss_source.masses,
            target_points=loss_target.points,
            target_triangles=loss_target.triangles,
            target_masses=loss_target.masses,
            area=float(source.masses.sum()),
        )


def _decimated(surface: Surface, n_triangles: int, dtype) -> Surface:
    """Return a copy decimated to about ``n_triangles`` triangles, or the surface itself."""
    if surface.triangles is None or len(surface.triangles) <= n_triangles:
        return surface
    import pyvista as pv

    faces = np.hstack(
        [np.full((len(surface.triangles), 1), 3, dtype=np.int64), surface.triangles]
    ).ravel()
    mesh = pv.PolyData(surface.points.detach().cpu().numpy(), faces)
    reduction = 1.0 - n_triangles / len(surface.triangles)
    decimated = mesh.decimate(reduction).clean()
    points = torch.as_tensor(np.asarray(decimated.points), dtype=dtype)
    triangles = np.asarray(decimated.regular_faces, dtype=np.int64)
    return Surface(points, triangles, vertex_areas(points, triangles))


def _check_settings(*, sigma, loss, loss_sigma, regularization, n_iter, loss_triangles) -> dict:
    sigma = check_sigma(sigma)
    if loss not in ("varifold", "point-to-point", "optimal-transport"):
        msg = f"loss must be 'varifold', 'point-to-point' or 'optimal-transport', got {loss!r}"
        raise InputError(msg)
    if loss_sigma is None:
        loss_sigmas = [sigma / 2.0, sigma / 4.0]
    elif isinstance(loss_sigma, (int, float, np.floating, np.integer)):
        loss_sigmas = [check_sigma(loss_sigma, name="loss_sigma")]
    else:
        loss_sigmas = [check_sigma(value, name="loss_sigma") for value in loss_sigma]
        if not loss_sigmas:
            msg = "loss_sigma must contain at least one scale"
            raise InputError(msg)
    if loss == "point-to-point":
        # The point-to-point loss has no scale: one stage is enough.
        loss_sigmas = loss_sigmas[:1]
    if not isinstance(regularization, (int, float)) or regularization < 0 or not math.isfinite(regularization):
        msg = f"regularization must be a non-negative number, got {regularization!r}"
        raise InputError(msg)
    if int(n_iter) != n_iter or n_iter < 0:
        msg = f"n_iter must be a non-negative integer, got {n_iter!r}"
        raise InputError(msg)
    if loss_triangles is not None:
        if int(loss_triangles) != loss_triangles or loss_triangles < 4:
            msg = f"loss_triangles must be an integer >= 4 or None, got {loss_triangles!r}"
            raise InputError(msg)
        loss_triangles = int(loss_triangles)
    return {"sigma": sigma, "loss_sigmas": loss_sigmas, "loss_triangles": loss_triangles}
