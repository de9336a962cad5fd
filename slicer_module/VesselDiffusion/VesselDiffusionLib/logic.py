"""Smoothing and registration of vessel models on MRML nodes, without any GUI.

This part of the module's Logic needs only VTK, the MRML classes and sinkshape, so
it runs inside 3D Slicer and in a plain Python with the ``slicer-core`` wheel.
sinkshape and torch are imported when a computation starts, never at import time.

Each operation comes in three steps, so that the Widget can run the middle one off
the GUI thread:

1. ``prepare_*`` reads the input nodes and copies what the computation needs;
2. ``compute_*`` does the numerical work and touches no MRML node;
3. ``add_*_nodes`` writes the results into new nodes; the inputs are never changed.

:meth:`CoreLogic.smooth` and :meth:`CoreLogic.register` run the three steps in a row.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from VesselDiffusionLib import grid as grids
from VesselDiffusionLib.mrml import (
    SurfaceData,
    add_model_node,
    add_table_node,
    polydata_with_points,
    surface_distances,
    surface_from_model,
    surface_from_segment,
)
from VesselDiffusionLib.progress import Progress
from VesselDiffusionLib.registration import (
    RegistrationBackend,
    RegistrationOutput,
    register_with_sinkshape,
)
from VesselDiffusionLib.settings import RegistrationSettings, SmoothingSettings

__all__ = [
    "CoreLogic",
    "RegistrationComputation",
    "RegistrationJob",
    "RegistrationResult",
    "SmoothingComputation",
    "SmoothingJob",
    "SmoothingResult",
]

logger = logging.getLogger(__name__)

#: Prefix of the node attributes that record how an output node was made.
ATTRIBUTE_PREFIX = "VesselDiffusion."


# Smoothing


@dataclass
class SmoothingJob:
    """Inputs of one smoothing, copied out of the scene."""

    surface: SurfaceData
    settings: SmoothingSettings
    input_id: str
    array_values: np.ndarray | None = None


@dataclass
class SmoothingComputation:
    """Numerical result of one smoothing, not yet in the scene."""

    points: np.ndarray | None
    array_values: np.ndarray | None
    volume_change: float | None
    flipped_triangles: int | None
    iterations: int
    marginal_error: float
    steps: int
    backend: str
    seconds: float
    warnings: list[str] = field(default_factory=list)


@dataclass
class SmoothingResult:
    """A smoothing written to the scene.

    Attributes
    ----------
    output_node : vtkMRMLModelNode
        The new model; the input node is unchanged.
    volume_change : float or None
        Relative change of the enclosed volume, (V_after - V_before) / V_before,
        for a closed surface; None when a point array was smoothed.
    flipped_triangles : int or None
        Triangles whose normal turned by more than 90 degrees.
    iterations, marginal_error : int, float
        Sinkhorn iterations and the final marginal error of the operator.
    steps : int
        Applications of the operator per smoothing at scale sigma.
    backend : str
        Kernel backend used, after "auto" was resolved.
    seconds : float
        Duration of the computation.
    warnings : list of str
        Warnings raised during the computation, such as a Sinkhorn solve that did
        not reach its tolerance.
    """

    output_node: object
    volume_change: float | None
    flipped_triangles: int | None
    iterations: int
    marginal_error: float
    steps: int
    backend: str
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Return the figures as lines of text for the panel."""
        lines = []
        if self.volume_change is not None:
            lines.append(f"Volume change: {100.0 * self.volume_change:+.3f} %")
            lines.append(f"Flipped triangles: {self.flipped_triangles}")
        lines.append(
            f"Sinkhorn: {self.iterations} iterations, marginal error {self.marginal_error:.1e}"
        )
        lines.append(f"Backend {self.backend}, {self.steps} diffusion steps, {self.seconds:.1f} s")
        lines.extend(f"Warning: {message}" for message in self.warnings)
        return "\n".join(lines)


# Registration


@dataclass
class RegistrationJob:
    """Inputs of one registration, copied out of the scene in world coordinates."""

    moving: SurfaceData
    fixed: SurfaceData
    settings: RegistrationSettings


@dataclass
class RegistrationComputation:
    """Numerical result of one registration, not yet in the scene."""

    output: RegistrationOutput
    transform: object
    grid: object
    distances_before: tuple[np.ndarray, np.ndarray]
    distances_after: tuple[np.ndarray, np.ndarray]
    transform_residual: np.ndarray
    seconds: float


@dataclass
class RegistrationResult:
    """A registration written to the scene.

    Attributes
    ----------
    registered_node : vtkMRMLModelNode
        New model: the moving model after registration, in world coordinates.
    transform_node : vtkMRMLGridTransformNode
        Grid transform in the modeling direction: nodes placed under it (the CT,
        centerline curves, fiducials) move as the moving model did.
    table_node : vtkMRMLTableNode
        Mean and maximum surface distance to the fixed model, before and after.
    mean_distance, max_distance : tuple of float
        (before, after) mean and maximum surface distances in mm.
    transform_residual : float
        Largest distance in mm between a moving vertex moved by the grid
        transform and the same vertex moved by the registration.
    grid_shape : tuple of int
        Number of grid nodes along R, A and S.
    grid_spacing : float
        Distance between grid nodes in mm; coarser than requested when the
        requested spacing needed more than ``grid.MAX_GRID_NODES`` nodes.
    losses : numpy.ndarray
        Value of the objective at each evaluation.
    seconds : float
        Duration of the computation.
    """

    registered_node: object
    transform_node: object
    table_node: object
    mean_distance: tuple[float, float]
    max_distance: tuple[float, float]
    transform_residual: float
    grid_shape: tuple[int, int, int]
    grid_spacing: float
    losses: np.ndarray
    seconds: float

    def summary(self) -> str:
        """Return the figures as lines of text for the panel."""
        lines = [
            f"Mean surface distance: {self.mean_distance[0]:.2f} mm before, "
            f"{self.mean_distance[1]:.2f} mm after",
            f"Maximum surface distance: {self.max_distance[0]:.2f} mm before, "
            f"{self.max_distance[1]:.2f} mm after",
            "Grid transform: {} nodes, spacing {:.3g} mm; residual at the moving "
            "vertices at most {:.3f} mm".format(
                " x ".join(str(n) for n in self.grid_shape), self.grid_spacing, self.transform_residual
            ),
        ]
        if len(self.losses):
            lines.append(
                f"{len(self.losses)} evaluations of the objective, final value {self.losses[-1]:.4g}"
            )
        lines.append(f"{self.seconds:.1f} s")
        return "\n".join(lines)


def _symmetric_figures(distances: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    """Return the mean over the vertices of both surfaces, and the maximum."""
    both = np.concatenate(distances)
    return float(both.mean()), float(both.max())


class CoreLogic:
    """Smoothing and registration of models in an MRML scene.

    Attributes
    ----------
    registration_backend : callable
        Function that registers two surfaces (see
        :mod:`VesselDiffusionLib.registration`); sinkshape's by default.
    """

    def __init__(self) -> None:
        self.registration_backend: RegistrationBackend = register_with_sinkshape

    # Smoothing

    def prepare_smoothing(
        self,
        input_node,
        settings: SmoothingSettings,
        *,
        segment_id: str | None = None,
    ) -> SmoothingJob:
        """Copy the surface to smooth out of a model node, or out of a segment.

        ``input_node`` is a vtkMRMLModelNode, or a vtkMRMLSegmentationNode together
        with ``segment_id``. Raises ValueError for an empty input, a surface
        without triangles, or a point array that is missing or not numeric.
        """
        if input_node is not None and input_node.IsA("vtkMRMLSegmentationNode"):
            surface = surface_from_segment(input_node, segment_id)
        else:
            surface = surface_from_model(input_node)

        array_values = None
        if settings.target == "point_array":
            array = surface.polydata.GetPointData().GetArray(settings.array_name)
            if array is None:
                msg = (
                    f"point array {settings.array_name!r} not found, or not numeric, in "
                    f"{surface.name!r}; choose one of its numeric point arrays"
                )
                raise ValueError(msg)
            array_values = numpy_support.vtk_to_numpy(array).astype(np.float64)
        return SmoothingJob(surface, settings, input_node.GetID(), array_values)

    @staticmethod
    def compute_smoothing(job: SmoothingJob, progress: Progress | None = None) -> SmoothingComputation:
        """Smooth the surface, or the point array, of a prepared job."""
        from sinkshape.smoothing import Smoother, surface_report

        progress = progress or Progress()
        settings = job.settings
        started = time.perf_counter()

        progress.report(
            0.05,
            f"Building the diffusion operator (sigma {settings.sigma:g} mm, "
            f"backend {settings.backend})",
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            smoother = Smoother(
                job.surface.points,
                settings.sigma,
                triangles=job.surface.triangles,
                backend=settings.backend,
            )
            operator = smoother.operator
            progress.report(
                0.6,
                f"Sinkhorn: {operator.n_iter} iterations, marginal error "
                f"{operator.marginal_error:.1e}; smoothing",
            )

            points = array_values = None
            volume_change = flipped = None
            if settings.target == "surface":
                points = smoother.smooth_points(order=settings.order).detach().cpu().numpy()
                report = surface_report(smoother.surface, points)
                volume_change = report.volume_change
                flipped = report.flipped_triangles
            else:
                array_values = smoother.smooth(job.array_values)

        messages = [str(warning.message) for warning in caught]
        if flipped:
            messages.append(
                f"{flipped} triangles flipped; try a smaller sigma or the graph backend"
            )
        progress.report(1.0, "Smoothing done")
        return SmoothingComputation(
            points=points,
            array_values=array_values,
            volume_change=volume_change,
            flipped_triangles=flipped,
            iterations=operator.n_iter,
            marginal_error=operator.marginal_error,
            steps=smoother.steps,
            backend=smoother.backend,
            seconds=time.perf_counter() - started,
            warnings=messages,
        )

    @staticmethod
    def add_smoothing_nodes(scene, job: SmoothingJob, computation: SmoothingComputation) -> SmoothingResult:
        """Write a smoothing into a new model node under the input's parent transform."""
        surface = job.surface
        settings = job.settings
        if computation.points is not None:
            polydata = polydata_with_points(surface, computation.points)
            name = f"{surface.name} smoothed {settings.sigma:g} mm"
        else:
            polydata = vtk.vtkPolyData()
            polydata.DeepCopy(surface.polydata)
            _replace_point_array(polydata, settings.array_name, computation.array_values)
            name = f"{surface.name} {settings.array_name} smoothed {settings.sigma:g} mm"

        node = add_model_node(
            scene,
            polydata,
            name=name,
            parent_transform_id=surface.parent_transform_id,
            color=surface.color,
        )
        if computation.array_values is not None:
            node.GetDisplayNode().SetActiveScalarName(settings.array_name)
            node.GetDisplayNode().SetScalarVisibility(True)

        attributes = {
            "Input": job.input_id,
            "Sigma": settings.sigma,
            "Target": settings.target,
            "Backend": computation.backend,
            "SinkhornIterations": computation.iterations,
            "MarginalError": computation.marginal_error,
            "VolumeChange": computation.volume_change,
        }
        for key, value in attributes.items():
            if value is not None:
                node.SetAttribute(ATTRIBUTE_PREFIX + key, str(value))

        logger.info(
            "Smoothed %r into %r at sigma %g mm: volume change %s, %d Sinkhorn iterations",
            surface.name,
            node.GetName(),
            settings.sigma,
            "n/a" if computation.volume_change is None else f"{100.0 * computation.volume_change:+.3f} %",
            computation.iterations,
        )
        return SmoothingResult(
            output_node=node,
            volume_change=computation.volume_change,
            flipped_triangles=computation.flipped_triangles,
            iterations=computation.iterations,
            marginal_error=computation.marginal_error,
            steps=computation.steps,
            backend=computation.backend,
            seconds=computation.seconds,
            warnings=computation.warnings,
        )

    def smooth(
        self,
        input_node,
        settings: SmoothingSettings,
        *,
        segment_id: str | None = None,
        progress: Progress | None = None,
    ) -> SmoothingResult:
        """Smooth a model, or a segment, into a new model node.

        Examples
        --------
        >>> settings = SmoothingSettings(sigma=2.0)  # doctest: +SKIP
        >>> result = CoreLogic().smooth(model_node, settings)  # doctest: +SKIP
        >>> print(result.summary())  # doctest: +SKIP
        """
        job = self.prepare_smoothing(input_node, settings, segment_id=segment_id)
        computation = self.compute_smoothing(job, progress)
        return self.add_smoothing_nodes(input_node.GetScene(), job, computation)

    # Registration

    def prepare_registration(
        self, moving_node, fixed_node, settings: RegistrationSettings
    ) -> RegistrationJob:
        """Copy the moving and fixed models out of the scene, in world coordinates."""
        if moving_node is None or fixed_node is None:
            msg = "select both a moving model and a fixed model"
            raise ValueError(msg)
        if moving_node is fixed_node:
            msg = f"the moving and fixed models are the same node ({moving_node.GetName()!r}); select two models"
            raise ValueError(msg)
        moving = surface_from_model(moving_node, world=True)
        fixed = surface_from_model(fixed_node, world=True)
        return RegistrationJob(moving, fixed, settings)

    def compute_registration(
        self, job: RegistrationJob, progress: Progress | None = None
    ) -> RegistrationComputation:
        """Register, sample the grid transform and measure the surface distances."""
        progress = progress or Progress()
        settings = job.settings
        moving = job.moving
        started = time.perf_counter()

        progress.report(0.0, "Registering the moving model to the fixed model")
        output = self.registration_backend(moving, job.fixed, settings, progress)
        registered = np.asarray(output.registered_points, dtype=np.float64)
        if registered.shape != moving.points.shape:
            msg = (
                f"the registration returned {registered.shape} registered points for a "
                f"moving model of shape {moving.points.shape}"
            )
            raise RuntimeError(msg)

        progress.report(0.8, "Sampling the displacement on the grid")
        deform = output.deform
        if deform is None:
            deform = grids.displacement_by_kernel(
                moving.points, registered - moving.points, bandwidth=settings.grid_spacing
            )
        grid = grids.sample_grid(
            deform,
            [moving.points, job.fixed.points, registered],
            spacing=settings.grid_spacing,
            margin=settings.grid_margin,
            progress=lambda done: progress.report(
                0.8 + 0.15 * done, "Sampling the displacement on the grid"
            ),
        )
        transform = grids.grid_transform(grid)

        progress.report(0.96, "Measuring surface distances")
        residual = np.linalg.norm(grids.move_points(transform, moving.points) - registered, axis=1)
        registered_polydata = polydata_with_points(moving, registered)
        before = surface_distances(moving.polydata, job.fixed.polydata)
        after = surface_distances(registered_polydata, job.fixed.polydata)

        progress.report(1.0, "Registration done")
        return RegistrationComputation(
            output=output,
            transform=transform,
            grid=grid,
            distances_before=before,
            distances_after=after,
            transform_residual=residual,
            seconds=time.perf_counter() - started,
        )

    @staticmethod
    def add_registration_nodes(
        scene, job: RegistrationJob, computation: RegistrationComputation
    ) -> RegistrationResult:
        """Write the registered model, the grid transform and the distance table."""
        moving = job.moving
        fixed_name = job.fixed.name
        registered_points = np.asarray(computation.output.registered_points, dtype=np.float64)

        registered_node = add_model_node(
            scene,
            polydata_with_points(moving, registered_points),
            name=f"{moving.name} registered",
            color=moving.color,
        )
        transform_node = grids.add_grid_transform_node(
            scene, computation.transform, name=f"{moving.name} to {fixed_name}"
        )
        residual = float(computation.transform_residual.max())
        transform_node.SetAttribute(ATTRIBUTE_PREFIX + "ResidualMax", f"{residual:.6g}")
        transform_node.SetAttribute(ATTRIBUTE_PREFIX + "Sigma", str(job.settings.sigma))

        mean_before, max_before = _symmetric_figures(computation.distances_before)
        mean_after, max_after = _symmetric_figures(computation.distances_after)
        table_node = add_table_node(
            scene,
            name=f"{moving.name} to {fixed_name} surface distance",
            labels=["Mean surface distance", "Maximum surface distance"],
            columns={
                "Before registration": [mean_before, max_before],
                "After registration": [mean_after, max_after],
            },
        )
        logger.info(
            "Registered %r to %r: mean surface distance %.3f -> %.3f mm, grid residual %.3g mm",
            moving.name,
            fixed_name,
            mean_before,
            mean_after,
            residual,
        )
        return RegistrationResult(
            registered_node=registered_node,
            transform_node=transform_node,
            table_node=table_node,
            mean_distance=(mean_before, mean_after),
            max_distance=(max_before, max_after),
            transform_residual=residual,
            grid_shape=tuple(computation.grid.shape),
            grid_spacing=float(computation.grid.spacing[0]),
            losses=computation.output.losses,
            seconds=computation.seconds,
        )

    def register(
        self,
        moving_node,
        fixed_node,
        settings: RegistrationSettings,
        *,
        progress: Progress | None = None,
    ) -> RegistrationResult:
        """Register a moving model to a fixed model; write the results to new nodes."""
        job = self.prepare_registration(moving_node, fixed_node, settings)
        computation = self.compute_registration(job, progress)
        return self.add_registration_nodes(moving_node.GetScene(), job, computation)

    # Transforms

    @staticmethod
    def apply_transform(transform_node, node, *, harden: bool = False) -> None:
        """Place ``node`` (a volume, model, markups...) under ``transform_node``.

        With ``harden=True`` the transform is then applied to the node's data and
        the node leaves the transform; a volume is resampled.
        """
        node.SetAndObserveTransformNodeID(transform_node.GetID())
        if harden and not slicer.vtkSlicerTransformLogic().hardenTransform(node):
            msg = f"hardening the transform {transform_node.GetName()!r} on {node.GetName()!r} failed"
            raise RuntimeError(msg)


def _replace_point_array(polydata, name: str, values: np.ndarray) -> None:
    """Replace a point array by ``values``, keeping its name, float type and role."""
    point_data = polydata.GetPointData()
    old = point_data.GetArray(name)
    old_type = numpy_support.get_numpy_array_type(old.GetDataType())
    values = np.ascontiguousarray(values)
    if np.issubdtype(old_type, np.floating):
        values = values.astype(old_type)

    new = numpy_support.numpy_to_vtk(values, deep=True)
    new.SetName(name)
    active = point_data.GetScalars()
    was_active = active is not None and active.GetName() == name
    point_data.RemoveArray(name)
    point_data.AddArray(new)
    if was_active:
        point_data.SetActiveScalars(name)
