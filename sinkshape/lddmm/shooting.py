"""Geodesic shooting: integrate the Hamiltonian system from an initial momentum.

The state is (q, p, x): control points, their momenta and any further points x
(shape vertices, grid points) carried by the velocity field. Time runs from 0 to
the largest requested time and from 0 back to the smallest, so the same momentum
gives the path before 0 and after 1 (extrapolation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from sinkshape._checks import check_masses, check_points
from sinkshape.errors import InputError
from sinkshape.lddmm.metric import KernelMetric, WarmStart

__all__ = ["GeodesicPath", "Integrator", "shoot"]

Integrator = Literal["euler", "midpoint", "rk4"]

_INTEGRATORS = ("euler", "midpoint", "rk4")


@dataclass
class GeodesicPath:
    """States of a geodesic at the requested times.

    Attributes
    ----------
    times : numpy.ndarray
        Requested times, sorted, shape (T,).
    control_points : torch.Tensor
        q(t), shape (T, N, D).
    momenta : torch.Tensor
        p(t), shape (T, N, D).
    points : torch.Tensor
        x(t) for the carried points, shape (T, M, D); equal to ``control_points``
        when no separate points were given.
    hamiltonian : torch.Tensor
        H(q(t), p(t)), shape (T,); constant along an exact geodesic.
    log_scaling : torch.Tensor
        log lambda at q(t), shape (T, N).
    sinkhorn_iterations : int
        Sinkhorn updates over the whole integration, all evaluations included.
    adjoint_iterations : int
        Adjoint updates likewise.
    """

    times: np.ndarray
    control_points: torch.Tensor
    momenta: torch.Tensor
    points: torch.Tensor
    hamiltonian: torch.Tensor
    log_scaling: torch.Tensor
    sinkhorn_iterations: int = 0
    adjoint_iterations: int = 0
    _index: dict = field(default_factory=dict, repr=False)

    def at(self, time: float) -> torch.Tensor:
        """Return the carried points x(t) at one of the requested times."""
        key = float(time)
        if key not in self._index:
            msg = f"time {time!r} is not on the path; available times: {self.times.tolist()}"
            raise InputError(msg)
        return self.points[self._index[key]]


def shoot(
    metric: KernelMetric,
    control_points,
    momenta,
    masses=None,
    *,
    points=None,
    times: Sequence[float] = (0.0, 1.0),
    n_steps: int = 10,
    method: Integrator = "midpoint",
    log_scaling=None,
) -> GeodesicPath:
    """Integrate the geodesic equations and return the path at ``times``.

    Parameters
    ----------
    metric : KernelMetric
        The cometric.
    control_points : torch.Tensor
        q(0), shape (N, D).
    momenta : torch.Tensor
        p(0), shape (N, D).
    masses : array-like, optional
        Masses of the control points, shape (N,); uniform 1 / N by default.
    points : torch.Tensor, optional
        Further points carried by the flow, shape (M, D). Without them, the path
        reports the control points.
    times : sequence of float
        Times to report, in any order, negative or beyond 1 included.
    n_steps : int
        Integration steps per unit of time. Each interval between consecutive
        reported times takes ceil(length * n_steps) equal steps, so times on the
        grid k / n_steps give the same states as a run to t = 1 with ``n_steps``.
    method : {"euler", "midpoint", "rk4"}
        Explicit Runge-Kutta scheme: 1, 2 or 4 evaluations per step.
    log_scaling : torch.Tensor, optional
        Warm start for log lambda at q(0), for example from an earlier solve at
        the same control points.

    Returns
    -------
    GeodesicPath
        Differentiable in ``momenta``, ``control_points`` and ``points`` when one
        of them requires grad and grad mode is on.

    Notes
    -----
    Derivatives with respect to q(0) go through the Sinkhorn iterations at
    q(0). A converged ``log_scaling`` warm start takes no iteration there and
    makes them zero, so pass none when differentiating with respect to q(0).
    """
    q, _ = check_points(control_points, name="control_points")
    p, _ = check_points(momenta, name="momenta", dtype=q.dtype, device=q.device)
    if p.shape != q.shape:
        msg = f"momenta must have shape {tuple(q.shape)}, got {tuple(p.shape)}"
        raise InputError(msg)
    m = check_masses(masses, n_points=q.shape[0], like=q)
    x = None
    if points is not None:
        x, _ = check_points(points, name="points", dtype=q.dtype, device=q.device)
        if x.shape[1] != q.shape[1]:
            msg = f"points must have {q.shape[1]} coordinates like the control points, got {x.shape[1]}"
            raise InputError(msg)
    if method not in _INTEGRATORS:
        msg = f"method must be one of {_INTEGRATORS}, got {method!r}"
        raise InputError(msg)
    if int(n_steps) != n_steps or n_steps < 1:
        msg = f"n_steps must be a positive integer, got {n_steps!r}"
        raise InputError(msg)
    requested = np.asarray(sorted({float(t) for t in times}), dtype=np.float64)
    if requested.size == 0 or not np.isfinite(requested).all():
        msg = f"times must be a non-empty sequence of finite numbers, got {times!r}"
        raise InputError(msg)

    create_graph = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, p, x)
    )
    integrator = _Integrator(metric, m, method=method, create_graph=create_graph)
    integrator.warm_start.log_scaling = log_scaling
    initial = _State(q, p, x)
    log_scaling0 = integrator.log_scaling_at(initial)

    states = {0.0: (initial, log_scaling0)}
    for direction in (1.0, -1.0):
        targets = requested[requested * direction > 0] * direction
        state, elapsed = initial, 0.0
        integrator.warm_start.log_scaling = log_scaling0
        integrator.warm_start.adjoint = None
        for target in np.sort(targets):
            length = target - elapsed
            n_sub = max(1, math.ceil(length * n_steps - 1e-9))
            for _ in range(n_sub):
                state = integrator.step(state, direction * length / n_sub)
            elapsed = target
            states[float(target * direction)] = (state, integrator.warm_start.log_scaling)

    return _collect(requested, states, integrator, metric, m, separate_points=x is not None)


@dataclass
class _State:
    q: torch.Tensor
    p: torch.Tensor
    x: torch.Tensor | None

    def moved(self, rates: _State, dt: float) -> _State:
        return _State(
            self.q + dt * rates.q,
            self.p + dt * rates.p,
            None if self.x is None else self.x + dt * rates.x,
        )


class _Integrator:
    def __init__(self, metric, masses, *, method, create_graph):
        self.metric = metric
        self.masses = masses
        self.method = method
        self.create_graph = create_graph
        self.warm_start = WarmStart()

    def rates(self, state: _State) -> tuple[_State, torch.Tensor]:
        system = self.metric.hamiltonian_system(
            state.q,
            state.p,
            self.masses,
            warm_start=self.warm_start,
            create_graph=self.create_graph,
        )
        x_rate = None
        if state.x is not None:
            with torch.set_grad_enabled(self.create_graph):
                x_rate = self.metric.velocity_at(
                    state.x, state.q, state.p, self.masses, system.log_scaling
                )
        return _State(system.velocity, system.momentum_rate, x_rate), system.hamiltonian

    def log_scaling_at(self, state: _State) -> torch.Tensor:
        with torch.set_grad_enabled(self.create_graph):
            kernel = self.metric.kernel(state.q)
            log_scaling, n_iter = self.metric.solve_log_scaling(
                kernel, self.masses, init=self.warm_start.log_scaling
            )
        self.warm_start.sinkhorn_iterations += n_iter
        return log_scaling

    def step(self, state: _State, dt: float) -> _State:
        if self.method == "euler":
            k1, _ = self.rates(state)
            return state.moved(k1, dt)
        if self.method == "midpoint":
            k1, _ = self.rates(state)
            k2, _ = self.rates(state.moved(k1, dt / 2))
            return state.moved(k2, dt)

        k1, _ = self.rates(state)
        k2, _ = self.rates(state.moved(k1, dt / 2))
        k3, _ = self.rates(state.moved(k2, dt / 2))
        k4, _ = self.rates(state.moved(k3, dt))
        combined = _State(
            (k1.q + 2 * k2.q + 2 * k3.q + k4.q) / 6,
            (k1.p + 2 * k2.p + 2 * k3.p + k4.p) / 6,
            None if state.x is None else (k1.x + 2 * k2.x + 2 * k3.x + k4.x) / 6,
        )
        return state.moved(combined, dt)


def _collect(requested, states, integrator, metric, masses, *, separate_points):
    control_points, momenta, points, energies, log_scalings = [], [], [], [], []
    for time in requested:
        state, warm_log_scaling = states[float(time)]
        # The warm start is the scaling of the last evaluation, which for the
        # multi-stage schemes is not the final state: solve at the state itself.
        with torch.set_grad_enabled(integrator.create_graph):
            kernel = metric.kernel(state.q)
            log_scaling, _ = metric.solve_log_scaling(kernel, masses, init=warm_log_scaling)
            velocity = metric._velocity(kernel, torch.exp(log_scaling), state.p)
            energies.append(0.5 * (state.p * velocity).sum())
        control_points.append(state.q)
        momenta.append(state.p)
        points.append(state.x if separate_points else state.q)
        log_scalings.append(log_scaling)

    return GeodesicPath(
        times=requested,
        control_points=torch.stack(control_points),
        momenta=torch.stack(momenta),
        points=torch.stack(points),
        hamiltonian=torch.stack(energies),
        log_scaling=torch.stack(log_scalings),
        sinkhorn_iterations=integrator.warm_start.sinkhorn_iterations,
        adjoint_iterations=integrator.warm_start.adjoint_iterations,
        _index={float(t): i for i, t in enumerate(requested)},
    )
