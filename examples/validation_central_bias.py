"""Picture the central node bias of kernel smoothers on the unit square.

Run from the repository root::

    python examples/validation_central_bias.py

3,000 uniform random points in the unit square (seed 0), Gaussian kernel,
sigma = 0.05, uniform masses. For the raw kernel, row normalization, one-step
symmetric normalization and the Sinkhorn scaling, prints:

- the bias ratio: the total weight each point receives, sum_i m_i Q_ij / m_j,
  averaged over interior points (at least 3 sigma from the border) and divided
  by its average over border points (within sigma of the border);
- the mass kept after 20 steps from a unit mass on the point closest to the
  border, sum_i m_i (Q^20 f)_i with f = e_b / m_b.

Writes ``validation-central-bias.png``: the received weight of every point
for the three normalized operators on one colour scale, and the mass kept
against the number of steps.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import torch
from validation_samples import output_path

from sinkshape import DenseKernel, DiffusionOperator
from sinkshape.reference import KernelOperator

N_POINTS = 3000
SIGMA = 0.05
STEPS = 20


def received_weight(operator) -> np.ndarray:
    """(Q^T m)_j / m_j = sum_i m_i Q_ij / m_j."""
    masses = operator.masses.detach().to(torch.float64).numpy()
    return operator.as_linear_operator().rmatvec(masses) / masses


def mass_history(operator, start: int) -> np.ndarray:
    masses = operator.masses.detach().to(torch.float64).numpy()
    signal = np.zeros(len(masses))
    signal[start] = 1.0 / masses[start]
    history = [float((masses * signal).sum())]
    for _ in range(STEPS):
        signal = operator.apply(signal)
        history.append(float((masses * signal).sum()))
    return np.array(history)


def main() -> None:
    path = output_path(__doc__.splitlines()[0], "validation-central-bias.png")

    points = np.random.default_rng(0).uniform(size=(N_POINTS, 2))
    kernel = DenseKernel.from_points(points, SIGMA)
    operators = {
        "raw kernel": KernelOperator(kernel),
        "row normalization": KernelOperator(kernel, normalization="row"),
        "symmetric, one step": KernelOperator(kernel, normalization="symmetric"),
        "Sinkhorn": DiffusionOperator(kernel),
    }

    border_distance = np.minimum(points, 1.0 - points).min(axis=1)
    interior = border_distance >= 3 * SIGMA
    border = border_distance <= SIGMA
    start = int(np.argmin(border_distance))
    print(f"{interior.sum()} interior points, {border.sum()} border points, "
          f"unit mass on point {start} at distance {border_distance[start]:.2e} from the border")

    weights, histories = {}, {}
    for label, operator in operators.items():
        weights[label] = received_weight(operator)
        histories[label] = mass_history(operator, start)
        ratio = weights[label][interior].mean() / weights[label][border].mean()
        print(f"  {label}: bias ratio {ratio:.6f}, mass kept after {STEPS} steps "
              f"{histories[label][-1]:.6g}")

    figure, axes = plt.subplots(1, 4, figsize=(18, 4.4), layout="constrained")
    normalized = ["row normalization", "symmetric, one step", "Sinkhorn"]
    low = min(weights[label].min() for label in normalized)
    high = max(weights[label].max() for label in normalized)
    for axis, label in zip(axes[:3], normalized, strict=True):
        image = axis.scatter(
            points[:, 0], points[:, 1], c=weights[label], s=4, vmin=low, vmax=high
        )
        axis.set_aspect("equal")
        axis.set_title(label)
    figure.colorbar(image, ax=axes[2], label="received weight sum_i m_i Q_ij / m_j")

    for label in normalized:
        axes[3].plot(histories[label], label=label)
    axes[3].set_xlabel("steps")
    axes[3].set_ylabel("mass kept from a border point")
    axes[3].legend(fontsize=8)

    figure.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
