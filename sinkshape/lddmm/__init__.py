"""LDDMM with Sinkhorn-normalized kernels: cometric, geodesic shooting, losses.

This package imports neither scikit-shapes nor pykeops. The scikit-shapes
deformation model, :class:`NormalizedKernelDeformation`, is imported from
:mod:`sinkshape.lddmm.skshapes_model` on first access.
"""

from sinkshape.lddmm.metric import HamiltonianSystem, KernelMetric, WarmStart
from sinkshape.lddmm.shooting import GeodesicPath, shoot

# NormalizedKernelDeformation stays out of __all__, so that a star import does
# not import scikit-shapes.
__all__ = [
    "GeodesicPath",
    "HamiltonianSystem",
    "KernelMetric",
    "WarmStart",
    "shoot",
]


def __getattr__(name: str):
    if name == "NormalizedKernelDeformation":
        from sinkshape.lddmm.skshapes_model import NormalizedKernelDeformation

        return NormalizedKernelDeformation
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
