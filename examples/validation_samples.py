"""Samples, masses and measures shared by the ``validation_*`` example scripts.

This module draws no picture; each ``examples/validation_<name>.py`` script
imports it and writes one PNG under ``docs/images/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.spatial import SphericalVoronoi

from sinkshape.reference import ImplicitHeatOperator

IMAGES_DIR = Path(__file__).resolve().parents[1] / "docs" / "images"

#: Implicit substeps used to approximate exp(-t Delta) with the implicit heat step.
HEAT_SUBSTEPS = 16


def output_path(description: str, file_name: str) -> Path:
    """Parse ``--output-dir`` (default docs/images) and return the picture's path."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=IMAGES_DIR,
        help="folder for the PNG picture (default: docs/images of this checkout)",
    )
    arguments = parser.parse_args()
    arguments.output_dir.mkdir(parents=True, exist_ok=True)
    return arguments.output_dir / file_name


def random_sphere(n_points: int, *, seed: int) -> np.ndarray:
    """Independent uniform points on the unit sphere."""
    normal = np.random.default_rng(seed).normal(size=(n_points, 3))
    return normal / np.linalg.norm(normal, axis=1, keepdims=True)


def fibonacci_sphere(n_points: int) -> np.ndarray:
    """Quasi-uniform points on the unit sphere: the Fibonacci lattice."""
    index = np.arange(n_points) + 0.5
    z = 1.0 - 2.0 * index / n_points
    angle = np.pi * (1.0 + 5.0**0.5) * index
    ring = np.sqrt(1.0 - z**2)
    return np.column_stack([ring * np.cos(angle), ring * np.sin(angle), z])


def voronoi_areas(points: np.ndarray) -> np.ndarray:
    """Areas of the spherical Voronoi cells of points on the unit sphere."""
    return SphericalVoronoi(points).calculate_areas()


def circle_density(theta: np.ndarray) -> np.ndarray:
    """Sampling density (1 + 0.8 cos theta) / (2 pi) on the unit circle."""
    return (1.0 + 0.8 * np.cos(theta)) / (2.0 * np.pi)


def density_circle_angles(quantiles: np.ndarray) -> np.ndarray:
    """Invert the distribution function of :func:`circle_density` by bisection."""
    low = np.zeros_like(quantiles)
    high = np.full_like(quantiles, 2.0 * np.pi)
    for _ in range(60):
        middle = 0.5 * (low + high)
        below = (middle + 0.8 * np.sin(middle)) / (2.0 * np.pi) < quantiles
        low = np.where(below, middle, low)
        high = np.where(below, high, middle)
    return 0.5 * (low + high)


def mass_norm(values: np.ndarray, masses: np.ndarray) -> float:
    """sqrt(sum_i m_i |v_i|^2)."""
    squared = values**2 if values.ndim == 1 else (values**2).sum(axis=1)
    return float(np.sqrt((masses * squared).sum()))


def relative_difference(values, reference, masses) -> float:
    """Relative L2 difference for the mass inner product."""
    return mass_norm(values - reference, masses) / mass_norm(reference, masses)


def implicit_heat(laplacian, signal: np.ndarray, time: float) -> np.ndarray:
    """exp(-time Delta) signal, by HEAT_SUBSTEPS implicit steps of time / HEAT_SUBSTEPS."""
    step = ImplicitHeatOperator(laplacian, time / HEAT_SUBSTEPS)
    return step.apply(signal, steps=HEAT_SUBSTEPS)


def fitted_slope(sizes, errors) -> float:
    """Least-squares slope of log(error) against log(size)."""
    return float(np.polyfit(np.log(sizes), np.log(errors), 1)[0])
