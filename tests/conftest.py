"""Shared pytest fixtures.

The tests read the datasets from the ``shared/data`` folder beside the
repository checkout unless ``SINKSHAPE_DATA_DIR`` is already set. Without
that folder, :func:`sinkshape.datasets.fetch` downloads the files.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sinkshape import datasets

os.environ.setdefault("SINKSHAPE_DATA_DIR", str(Path(__file__).parents[2] / "shared" / "data"))


@pytest.fixture
def aorta():
    """Closed aorta lumen surface: 6,468 points, 12,932 triangles."""
    return datasets.load("aorta-surface")
