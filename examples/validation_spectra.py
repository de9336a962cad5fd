"""Compare Laplacian-like spectra of the diffusion operator with the cotangent Laplacian.

Run from the repository root, with ``SINKSHAPE_DATA_DIR`` naming the folder that
contains ``vmtk_aorta/``::

    python examples/validation_spectra.py

Left: the unit sphere, 5,000 points, Gaussian sigma = 0.1, eigenvalues
-log(mu) * 2 / sigma^2 for independent random points with spherical Voronoi
masses and with uniform masses, for the Fibonacci lattice, the cotangent
Laplacian of the random points' convex hull, and l (l + 1). Right: the vmtk
aorta, cotangent Laplacian against the Gaussian backend (sigma = 1 mm,
vertex-area masses) and the one-ring graph backend converted with its
measured diffusion time. Prints every figure the picture shows and writes
``validation-spectra.png``.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from scipy.spatial import ConvexHull
from validation_samples import fibonacci_sphere, output_path, random_sphere, voronoi_areas

from sinkshape import DiffusionOperator, datasets, diffusion_operator, mesh_graph_kernel
from sinkshape.mesh import as_surface
from sinkshape.reference import cotangent_laplacian
from sinkshape.spectra import (
    diffusion_spectrum,
    gaussian_step_time,
    graph_step_time,
    sphere_gaussian_eigenvalues,
)

SPHERE_POINTS = 5000
SPHERE_SIGMA = 0.1
SPHERE_COUNT = 25
AORTA_SIGMA_MM = 1.0
AORTA_COUNT = 30


def degrees_up_to(max_degree: int) -> np.ndarray:
    return np.repeat(np.arange(max_degree + 1), 2 * np.arange(max_degree + 1) + 1)


def sphere_spectra() -> dict[str, np.ndarray]:
    random_points = random_sphere(SPHERE_POINTS, seed=0)
    lattice = fibonacci_sphere(SPHERE_POINTS)
    time = gaussian_step_time(SPHERE_SIGMA)

    spectra = {}
    cases = {
        "Sinkhorn, random points, Voronoi masses": (random_points, voronoi_areas(random_points)),
        "Sinkhorn, random points, uniform masses": (random_points, None),
        "Sinkhorn, Fibonacci lattice": (lattice, None),
    }
    for label, (points, masses) in cases.items():
        operator = diffusion_operator(points, SPHERE_SIGMA, masses=masses, backend="sparse")
        spectra[label] = diffusion_spectrum(operator, SPHERE_COUNT).laplacian_eigenvalues(time)

    hull = cotangent_laplacian(random_points, triangles=ConvexHull(random_points).simplices)
    spectra["cotangent, hull of random points"] = hull.spectrum(SPHERE_COUNT).eigenvalues
    return spectra


def aorta_spectra() -> dict[str, np.ndarray]:
    surface = as_surface(datasets.load("aorta-surface"))
    points = surface.points.numpy()

    laplacian = cotangent_laplacian(points, triangles=surface.triangles)
    gaussian = diffusion_operator(
        points, AORTA_SIGMA_MM, masses=surface.masses, backend="sparse"
    )
    graph = DiffusionOperator(mesh_graph_kernel(points, surface.triangles), surface.masses)
    graph_time = graph_step_time(graph, points)
    print(f"aorta graph backend: measured diffusion time per step {graph_time:.4f} mm^2")

    cotangent = laplacian.spectrum(AORTA_COUNT)
    report_rayleigh_times(graph, cotangent)

    return {
        "cotangent Laplacian": cotangent.eigenvalues,
        f"Sinkhorn Gaussian, sigma = {AORTA_SIGMA_MM:g} mm": diffusion_spectrum(
            gaussian, AORTA_COUNT
        ).laplacian_eigenvalues(gaussian_step_time(AORTA_SIGMA_MM)),
        "Sinkhorn graph, measured time": diffusion_spectrum(
            graph, AORTA_COUNT
        ).laplacian_eigenvalues(graph_time),
    }


def report_rayleigh_times(graph: DiffusionOperator, cotangent) -> None:
    """Print the diffusion time per step that the graph walk gives each cotangent eigenvector.

    For an eigenvector phi of eigenvalue lambda, heat diffusion for tau keeps
    exp(-tau lambda) of it, so the walk's Rayleigh quotient
    r = <phi, (I - Q) phi>_m gives tau = -log(1 - r) / lambda.
    """
    vectors = cotangent.eigenvectors[:, 1:16]
    masses = graph.masses.numpy()
    quotients = (masses[:, None] * vectors * (vectors - graph.apply(vectors))).sum(axis=0)
    times = -np.log(1.0 - quotients) / cotangent.eigenvalues[1:16]
    print(f"aorta graph backend: Rayleigh-quotient time per step on cotangent eigenvectors "
          f"2..16: min {times.min():.4f}, median {np.median(times):.4f}, "
          f"max {times.max():.4f} mm^2")


def report_sphere(spectra: dict[str, np.ndarray]) -> None:
    degrees = degrees_up_to(3)
    exact = degrees * (degrees + 1.0)
    continuum = -np.log(sphere_gaussian_eigenvalues(degrees, SPHERE_SIGMA))
    continuum /= gaussian_step_time(SPHERE_SIGMA)
    print(f"sphere, N = {SPHERE_POINTS}, sigma = {SPHERE_SIGMA}: l <= 3 against l (l + 1)")
    print(f"  continuum Gaussian limit: max relative error "
          f"{np.abs(continuum[1:] / exact[1:] - 1).max():.4f}")
    for label, values in spectra.items():
        errors = np.abs(values[1:16] / exact[1:] - 1)
        print(f"  {label}: max relative error {errors.max():.4f}, "
              f"eigenvalue 17 (degree 4, exact 20) {values[16]:.3f}")


def report_aorta(spectra: dict[str, np.ndarray]) -> None:
    reference = spectra["cotangent Laplacian"][1:]
    print("aorta: ratio to the cotangent eigenvalues 2..30 (median, min, max)")
    for label, values in spectra.items():
        ratio = values[1:] / reference
        print(f"  {label}: {np.median(ratio):.3f}, {ratio.min():.3f}, {ratio.max():.3f}")


def draw(sphere: dict, aorta: dict, path) -> None:
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))

    degrees = degrees_up_to(4)[:SPHERE_COUNT]
    index = np.arange(SPHERE_COUNT)
    left.step(index, degrees * (degrees + 1), where="mid", color="black", label="l (l + 1)")
    markers = iter(["o", "x", "s", "^"])
    for label, values in sphere.items():
        left.plot(index, values, next(markers), fillstyle="none", label=label)
    left.set_xlabel("eigenvalue index")
    left.set_ylabel("Laplacian-like eigenvalue")
    left.set_title(f"unit sphere, N = {SPHERE_POINTS}, sigma = {SPHERE_SIGMA}")
    left.legend(fontsize=8)

    markers = iter(["o", "x", "s"])
    for label, values in aorta.items():
        right.plot(np.arange(AORTA_COUNT), values, next(markers), fillstyle="none", label=label)
    right.set_xlabel("eigenvalue index")
    right.set_ylabel("Laplacian-like eigenvalue (1/mm^2)")
    right.set_title("vmtk aorta, 6,468 vertices")
    right.legend(fontsize=8)

    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    path = output_path(__doc__.splitlines()[0], "validation-spectra.png")
    sphere = sphere_spectra()
    report_sphere(sphere)
    aorta = aorta_spectra()
    report_aorta(aorta)
    draw(sphere, aorta, path)


if __name__ == "__main__":
    main()
