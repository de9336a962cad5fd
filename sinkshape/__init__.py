"""Sinkhorn-normalized kernel diffusion on point clouds and surfaces."""

from sinkshape.diffusion import DiffusionOperator, diffusion_operator, make_kernel
from sinkshape.errors import InputError
from sinkshape.keops import KeOpsKernel
from sinkshape.kernels import DenseKernel, Kernel, SparseKernel, mesh_graph_kernel
from sinkshape.mesh import MeshWarning
from sinkshape.sinkhorn import (
    SinkhornConvergenceWarning,
    SinkhornResult,
    sinkhorn_scaling,
)

__version__ = "0.1.0"

__all__ = [
    "DenseKernel",
    "DiffusionOperator",
    "InputError",
    "KeOpsKernel",
    "Kernel",
    "MeshWarning",
    "SinkhornConvergenceWarning",
    "SinkhornResult",
    "SparseKernel",
    "__version__",
    "diffusion_operator",
    "make_kernel",
    "mesh_graph_kernel",
    "sinkhorn_scaling",
]
