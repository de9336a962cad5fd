"""Show that masses proportional to 1 / density recover the circle's Laplacian.

Run from the repository root::

    python examples/validation_circle_density.py

3,000 points on the unit circle sampled with density proportional to
1 + 0.8 cos(theta), at the quantiles (i + 1/2) / N and, as a second sample,
independently at random. Gaussian kernel, sigma = 0.1. Prints the
Laplacian-like eigenvalues -log(mu) * 2 / sigma^2 for masses 1 / density and
for uniform masses, against k^2 = 0, 1, 1, 4, 4, and writes
``validation-circle-density.png``: the eigenvalues, and the pair of
eigenvectors of k = 1 drawn as a plane curve, which is a circle for the
Laplacian of the circle.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from validation_samples import circle_density, density_circle_angles, output_path

from sinkshape import diffusion_operator
from sinkshape.spectra import circle_gaussian_eigenvalues, diffusion_spectrum, gaussian_step_time

N_POINTS = 3000
SIGMA = 0.1
COUNT = 9
EXACT = np.array([0.0, 1.0, 1.0, 4.0, 4.0, 9.0, 9.0, 16.0, 16.0])


def spectra_of(theta: np.ndarray) -> dict[str, object]:
    points = np.column_stack([np.cos(theta), np.sin(theta)])
    masses = {
        "masses 1 / density": 1.0 / (N_POINTS * circle_density(theta)),
        "uniform masses": np.full(N_POINTS, 2.0 * np.pi / N_POINTS),
    }
    spectra = {}
    for label, values in masses.items():
        operator = diffusion_operator(points, SIGMA, masses=values, backend="dense")
        spectra[label] = diffusion_spectrum(operator, COUNT)
    return spectra


def report(title: str, spectra: dict) -> None:
    continuum = -np.log(circle_gaussian_eigenvalues([1, 1, 2, 2], SIGMA))
    continuum /= gaussian_step_time(SIGMA)
    print(f"{title} (continuum Gaussian limit for k = 1, 1, 2, 2: "
          f"{np.array2string(continuum, precision=4)})")
    for label, spectrum in spectra.items():
        converted = spectrum.laplacian_eigenvalues(gaussian_step_time(SIGMA))
        errors = np.abs(converted[1:5] / EXACT[1:5] - 1)
        print(f"  {label}: {np.array2string(converted[:5], precision=4)}, "
              f"max relative error for k^2 = 1, 1, 4, 4: {errors.max():.4f}")


def draw(theta: np.ndarray, spectra: dict, path) -> None:
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))

    left.step(np.arange(COUNT), EXACT, where="mid", color="black", label="k^2")
    for marker, (label, spectrum) in zip("ox", spectra.items(), strict=True):
        converted = spectrum.laplacian_eigenvalues(gaussian_step_time(SIGMA))
        left.plot(np.arange(COUNT), converted, marker, fillstyle="none", label=label)
    left.set_xlabel("eigenvalue index")
    left.set_ylabel("-log(mu) * 2 / sigma^2")
    left.set_title(f"circle, density 1 + 0.8 cos(theta), N = {N_POINTS}, sigma = {SIGMA}")
    left.legend()

    # The eigenvectors of k = 1 can be any rotation of (cos, sin), so draw the
    # pair as a curve: a circle of radius 1 for the Laplacian of the circle.
    for label, spectrum in spectra.items():
        pair = spectrum.eigenvectors[:, 1:3]
        # Scale for the arc-length measure, for which cos(theta) has mean square 1/2.
        pair = pair / np.sqrt(2.0 * np.mean(pair**2, axis=0))
        order = np.argsort(theta)
        closed = np.append(order, order[0])
        right.plot(pair[closed, 0], pair[closed, 1], label=label)
    angle = np.linspace(0.0, 2.0 * np.pi, 200)
    right.plot(np.cos(angle), np.sin(angle), "k--", label="(cos, sin)")
    right.set_aspect("equal")
    right.set_xlabel("eigenvector 2")
    right.set_ylabel("eigenvector 3")
    right.set_title("the k = 1 pair of eigenvectors as a curve")
    right.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))

    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    path = output_path(__doc__.splitlines()[0], "validation-circle-density.png")

    quantile_theta = density_circle_angles((np.arange(N_POINTS) + 0.5) / N_POINTS)
    quantile_spectra = spectra_of(quantile_theta)
    report("quantile sample", quantile_spectra)

    random_quantiles = np.sort(np.random.default_rng(0).uniform(size=N_POINTS))
    report("random sample, seed 0", spectra_of(density_circle_angles(random_quantiles)))

    draw(quantile_theta, quantile_spectra, path)


if __name__ == "__main__":
    main()
