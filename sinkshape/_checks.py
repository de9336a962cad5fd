"""Checks of user input, done once at the public boundary.

The inner loops of the solver and the kernels trust what passes here.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from sinkshape.errors import InputError

__all__ = ["as_tensor", "check_masses", "check_points", "check_positive", "check_sigma"]


def as_tensor(
    values,
    *,
    name: str,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, bool]:
    """Convert ``values`` to a floating-point tensor.

    Returns the tensor and whether the input was a numpy array (or a list), so that
    callers can return numpy arrays for numpy input. Integer input becomes float64
    unless ``dtype`` is given; float32 and float64 tensors keep their dtype.
    """
    from_numpy = not isinstance(values, torch.Tensor)
    if from_numpy:
        try:
            array = np.asarray(values)
        except (TypeError, ValueError) as error:
            msg = f"{name} must be an array of numbers, got {type(values).__name__}: {error}"
            raise InputError(msg) from error
        if array.dtype == object or not (
            np.issubdtype(array.dtype, np.number) or array.dtype == bool
        ):
            msg = f"{name} must be an array of numbers, got dtype {array.dtype}"
            raise InputError(msg)
        if array.dtype not in (np.float32, np.float64):
            array = array.astype(np.float64)
        if not array.flags.writeable:
            # torch.from_numpy would share the read-only buffer, which torch warns about.
            array = array.copy()
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    else:
        tensor = values
        if not tensor.is_floating_point():
            tensor = tensor.to(torch.float64)
        elif tensor.dtype not in (torch.float32, torch.float64):
            msg = (
                f"{name} has dtype {tensor.dtype}; use torch.float32 or torch.float64"
            )
            raise InputError(msg)

    if dtype is not None or device is not None:
        tensor = tensor.to(dtype=dtype or tensor.dtype, device=device or tensor.device)
    return tensor, from_numpy


def check_points(
    points,
    *,
    name: str = "points",
    require_finite: bool = True,
    fix: str = "remove them or repair the mesh",
    **kwargs,
) -> tuple[torch.Tensor, bool]:
    """Convert ``points`` to an (N, D) tensor of finite coordinates.

    Raises an :class:`InputError` that names the first vertex with a NaN or an
    infinite coordinate and ends with ``fix``. With ``require_finite=False``
    such vertices pass, for callers that drop them.
    """
    tensor, from_numpy = as_tensor(points, name=name, **kwargs)
    if tensor.ndim == 1:
        tensor = tensor[:, None]
    if tensor.ndim != 2 or tensor.shape[0] == 0:
        msg = f"{name} must have shape (N, D) with N >= 1, got shape {tuple(tensor.shape)}"
        raise InputError(msg)
    if not require_finite:
        return tensor, from_numpy

    finite = torch.isfinite(tensor).all(dim=1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten()
        first = int(bad[0])
        msg = (
            f"{name}: vertex {first} has a non-finite coordinate "
            f"{tensor[first].tolist()} ({bad.numel()} such vertices in all); {fix}"
        )
        raise InputError(msg)
    return tensor, from_numpy


def check_sigma(sigma, *, name: str = "sigma") -> float:
    """Return ``sigma`` as a positive finite Python float.

    Accepts ints, floats, numpy scalars and 0-d tensors.
    """
    return check_positive(sigma, name=name)


def check_positive(value, *, name: str) -> float:
    """Return ``value`` as a Python float after checking that it is finite and > 0."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            msg = f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}"
            raise InputError(msg)
        value = value.item()
    elif isinstance(value, np.ndarray):
        if value.size != 1:
            msg = f"{name} must be a scalar, got an array of shape {value.shape}"
            raise InputError(msg)
        value = value.item()

    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        msg = f"{name} must be a positive number, got {value!r}"
        raise InputError(msg)

    value = float(value)
    if not math.isfinite(value) or value <= 0:
        msg = f"{name} must be a positive finite number, got {value!r}"
        raise InputError(msg)
    return value


def check_masses(masses, *, n_points: int, like: torch.Tensor) -> torch.Tensor:
    """Convert ``masses`` to a positive finite (N,) tensor with the dtype of ``like``.

    ``None`` gives uniform masses 1 / N.
    """
    if masses is None:
        return torch.full((n_points,), 1.0 / n_points, dtype=like.dtype, device=like.device)

    tensor, _ = as_tensor(masses, name="masses", dtype=like.dtype, device=like.device)
    tensor = tensor.reshape(-1) if tensor.ndim == 2 and 1 in tensor.shape else tensor
    if tensor.shape != (n_points,):
        msg = f"masses must have shape ({n_points},), got {tuple(tensor.shape)}"
        raise InputError(msg)

    valid = torch.isfinite(tensor) & (tensor > 0)
    if not bool(valid.all()):
        first = int(torch.nonzero(~valid)[0])
        msg = (
            f"masses must be positive and finite; point {first} has mass "
            f"{tensor[first].item()!r}"
        )
        raise InputError(msg)
    return tensor
