"""Settings of the Smooth and Register panels, checked once when they are made."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "BACKENDS",
    "SMOOTHING_TARGETS",
    "RegistrationSettings",
    "SmoothingSettings",
]

#: Kernel backends of ``sinkshape.smoothing.Smoother``.
BACKENDS = ("auto", "graph", "dense", "sparse", "keops")

#: Targets of the Smooth panel: the vertex coordinates, or one point array.
SMOOTHING_TARGETS = ("surface", "point_array")

_LOSSES = ("varifold", "point-to-point", "optimal-transport")


def _check_positive(value, name: str, unit: str = "") -> float:
    suffix = f" {unit}" if unit else ""
    msg = f"{name} must be a positive number, got {value!r}{suffix}"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(msg) from None
    if not (math.isfinite(number) and number > 0):
        raise ValueError(msg)
    return number


def _check_count(value, name: str, *, minimum: int) -> int:
    msg = f"{name} must be an integer of at least {minimum}, got {value!r}"
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(msg) from None
    if number != value or number < minimum:
        raise ValueError(msg)
    return number


@dataclass(frozen=True)
class SmoothingSettings:
    """Settings of the Smooth panel.

    Attributes
    ----------
    sigma : float
        Smoothing scale in mm: details smaller than about sigma are removed.
    target : {"surface", "point_array"}
        Smooth the vertex coordinates, or the values of one point array.
    array_name : str
        Point array to smooth when ``target`` is ``"point_array"``.
    backend : {"auto", "graph", "dense", "sparse", "keops"}
        Kernel backend; ``"auto"`` takes the mesh graph for a triangle mesh.
    order : int
        Order k of the surface filter I - (I - P)^k; 1 is plain diffusion, which
        shrinks the vessel.
    """

    sigma: float
    target: str = "surface"
    array_name: str = ""
    backend: str = "auto"
    order: int = 6

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", _check_positive(self.sigma, "sigma", "mm"))
        if self.target not in SMOOTHING_TARGETS:
            msg = f"target must be one of {SMOOTHING_TARGETS}, got {self.target!r}"
            raise ValueError(msg)
        if self.target == "point_array" and not self.array_name:
            msg = "no point array selected; choose the point array to smooth"
            raise ValueError(msg)
        if self.backend not in BACKENDS:
            msg = f"backend must be one of {BACKENDS}, got {self.backend!r}"
            raise ValueError(msg)
        object.__setattr__(self, "order", _check_count(self.order, "filter order", minimum=1))


@dataclass(frozen=True)
class RegistrationSettings:
    """Settings of the Register panel.

    Attributes
    ----------
    sigma : float
        Width in mm of the kernel that carries the deformation; larger values give
        smoother, more global deformations.
    iterations : int
        Optimizer iterations.
    control_points : int
        Number of control points that carry the momentum; 0 uses the vertices of
        the moving model.
    grid_spacing : float
        Distance in mm between the nodes of the grid transform.
    margin : float or None
        How far in mm the grid extends past both models; None means 2 sigma.
    loss : {"varifold", "point-to-point", "optimal-transport"}
        Data term. Varifold and optimal transport need no vertex correspondence;
        point-to-point needs the same vertices in both models.
    n_steps : int
        Integration steps of the geodesic flow per unit of time.
    """

    sigma: float = 10.0
    iterations: int = 50
    control_points: int = 0
    grid_spacing: float = 2.0
    margin: float | None = None
    loss: str = "varifold"
    n_steps: int = 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", _check_positive(self.sigma, "sigma", "mm"))
        object.__setattr__(
            self, "iterations", _check_count(self.iterations, "iterations", minimum=1)
        )
        object.__setattr__(
            self, "control_points", _check_count(self.control_points, "control points", minimum=0)
        )
        object.__setattr__(
            self, "grid_spacing", _check_positive(self.grid_spacing, "grid spacing", "mm")
        )
        if self.margin is not None and not (math.isfinite(self.margin) and self.margin >= 0):
            msg = f"margin must be a non-negative number of mm, got {self.margin!r}"
            raise ValueError(msg)
        object.__setattr__(self, "n_steps", _check_count(self.n_steps, "integration steps", minimum=1))
        if self.loss not in _LOSSES:
            msg = f"loss must be one of {_LOSSES}, got {self.loss!r}"
            raise ValueError(msg)

    @property
    def grid_margin(self) -> float:
        """Margin of the grid transform around both models, in mm."""
        return 2.0 * self.sigma if self.margin is None else float(self.margin)
