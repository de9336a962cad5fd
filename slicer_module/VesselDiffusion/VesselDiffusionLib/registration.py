"""The seam between the Register panel and the registration library.

The Logic calls a *registration backend*: a function
``backend(moving, fixed, settings, progress) -> RegistrationOutput`` that works on
surfaces copied out of the scene, in world coordinates. The default backend,
:func:`register_with_sinkshape`, adapts ``sinkshape.registration.register``;
tests and scripts may pass another function with the same signature.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from VesselDiffusionLib.mrml import SurfaceData
from VesselDiffusionLib.progress import Progress
from VesselDiffusionLib.settings import RegistrationSettings

__all__ = ["RegistrationBackend", "RegistrationOutput", "register_with_sinkshape"]

# Loss scales that register runs by default (sigma / 2, then sigma / 8).
_STAGES = 2


@dataclass
class RegistrationOutput:
    """Result of a registration backend.

    Attributes
    ----------
    registered_points : numpy.ndarray
        (N, 3) positions of the moving model's vertices after registration, in
        world coordinates (mm).
    deform : callable or None
        Maps (M, 3) world points to their registered positions; used to fill the
        grid transform. None when the backend returns only the moving vertices, and
        the grid is then filled by a smoothed extension of their displacements.
    losses : numpy.ndarray
        Value of the objective at each evaluation; the optimizer may evaluate it
        more than once per iteration.
    """

    registered_points: np.ndarray
    deform: Callable[[np.ndarray], np.ndarray] | None = None
    losses: np.ndarray = field(default_factory=lambda: np.zeros(0))


RegistrationBackend = Callable[
    [SurfaceData, SurfaceData, RegistrationSettings, Progress], RegistrationOutput
]


def register_with_sinkshape(
    moving: SurfaceData,
    fixed: SurfaceData,
    settings: RegistrationSettings,
    progress: Progress,
) -> RegistrationOutput:
    """Register ``moving`` to ``fixed`` with ``sinkshape.registration.register``.

    The grid transform is filled with ``RegistrationResult.transform_points``,
    which carries any point along the same geodesic flow as the moving vertices.
    """
    try:
        from sinkshape.registration import register
    except ImportError as error:
        msg = (
            "the registration needs sinkshape.registration, which is not installed "
            f"({error}); click Apply again to install the missing packages"
        )
        raise RuntimeError(msg) from error

    def report_evaluation(stage: int, evaluation: int, objective: float) -> None:
        # Approximate: register runs two loss scales by default, and L-BFGS makes up
        # to about 1.25 evaluations per iteration.
        done = (stage + min(evaluation / (1.25 * settings.iterations), 1.0)) / _STAGES
        progress.report(
            0.05 + 0.7 * min(done, 1.0),
            f"Registration: scale {stage + 1}, evaluation {evaluation}, objective {objective:.4g}",
        )

    progress.report(0.05, "Registering the moving model to the fixed model")
    result = register(
        _as_mesh(moving.polydata),
        _as_mesh(fixed.polydata),
        sigma=settings.sigma,
        loss=settings.loss,
        n_iter=settings.iterations,
        n_steps=settings.n_steps,
        control_points=settings.control_points or None,
        callback=report_evaluation,
    )
    progress.report(0.75, "Carrying the moving vertices along the registration")
    return RegistrationOutput(
        registered_points=np.asarray(result.points, dtype=np.float64),
        deform=lambda points: np.asarray(result.transform_points(points), dtype=np.float64),
        losses=np.asarray(result.loss_history, dtype=np.float64),
    )


def _as_mesh(polydata):
    """Return ``polydata`` in a type that ``register`` reads with its triangles."""
    # pyvista.wrap makes a pyvista.PolyData that shares the arrays, which register
    # can decimate for its loss.
    import pyvista

    return pyvista.wrap(polydata)
