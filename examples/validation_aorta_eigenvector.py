"""Render eigenvectors of the diffusion operator and of the cotangent Laplacian on the aorta.

Run from the repository root, with ``SINKSHAPE_DATA_DIR`` naming the folder that
contains ``vmtk_aorta/``::

    python examples/validation_aorta_eigenvector.py

Eigenvectors 4 and 8 (counting the constant one as 1) of the cotangent
Laplacian, of the Sinkhorn-normalized Gaussian (sigma = 1 mm, vertex-area
masses) and of the one-ring graph operator, each rendered off-screen with
pyvista. Each eigenvector's sign is chosen to correlate positively with the
cotangent one. Prints the correlation |<phi, psi>_m| of each with the
cotangent eigenvector and writes ``validation-aorta-eigenvector.png``.
"""

from __future__ import annotations

import numpy as np
import pyvista as pv
from validation_samples import output_path

from sinkshape import DiffusionOperator, datasets, diffusion_operator, mesh_graph_kernel
from sinkshape.mesh import as_surface
from sinkshape.reference import cotangent_laplacian
from sinkshape.spectra import diffusion_spectrum

SIGMA_MM = 1.0
EIGENVECTOR_INDICES = (3, 7)
COUNT = 10


def main() -> None:
    path = output_path(__doc__.splitlines()[0], "validation-aorta-eigenvector.png")
    mesh = datasets.load("aorta-surface")
    surface = as_surface(mesh)
    points = surface.points.numpy()
    laplacian = cotangent_laplacian(points, triangles=surface.triangles)
    masses = laplacian.masses

    vectors = {
        "cotangent Laplacian": laplacian.spectrum(COUNT).eigenvectors,
        f"Sinkhorn Gaussian, sigma = {SIGMA_MM:g} mm": diffusion_spectrum(
            diffusion_operator(points, SIGMA_MM, masses=surface.masses, backend="sparse"),
            COUNT,
        ).eigenvectors,
        "Sinkhorn one-ring graph": diffusion_spectrum(
            DiffusionOperator(mesh_graph_kernel(points, surface.triangles), surface.masses),
            COUNT,
        ).eigenvectors,
    }

    reference = vectors["cotangent Laplacian"]
    plotter = pv.Plotter(
        shape=(len(EIGENVECTOR_INDICES), len(vectors)), off_screen=True, window_size=(1500, 1100)
    )
    for row, index in enumerate(EIGENVECTOR_INDICES):
        for column, (label, basis) in enumerate(vectors.items()):
            vector = basis[:, index]
            # Correlation in the cotangent masses, so all three use one inner product.
            correlation = float((masses * vector * reference[:, index]).sum())
            correlation /= np.sqrt((masses * vector**2).sum() * (masses * reference[:, index] ** 2).sum())
            vector = vector * np.sign(correlation)
            print(f"eigenvector {index + 1}, {label}: correlation with cotangent "
                  f"{abs(correlation):.3f}")

            plotter.subplot(row, column)
            coloured = mesh.copy()
            coloured.point_data["eigenvector"] = vector / np.abs(vector).max()
            plotter.add_mesh(
                coloured, scalars="eigenvector", cmap="coolwarm", clim=(-1, 1),
                show_scalar_bar=False,
            )
            plotter.add_text(f"{label}\neigenvector {index + 1}", font_size=10)
            plotter.view_xy()
            plotter.camera.zoom(1.15)
    plotter.screenshot(str(path))
    plotter.close()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
