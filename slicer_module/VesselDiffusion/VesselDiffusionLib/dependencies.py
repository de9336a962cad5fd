"""Python packages the module needs, and how they are installed inside 3D Slicer.

Nothing is installed when the module loads. When the user clicks Apply, the Widget
calls :func:`ensure_packages`. It lists the requirements that are not met, requests
one confirmation from the user, and installs them:

- torch through the PyTorch extension (``PyTorchUtils``) when that extension is
  installed, since it picks the build that matches the computer's GPU, and with pip
  otherwise;
- the packages of :data:`WITHOUT_DEPENDENCIES` with pip's ``--no-deps``, because
  they require the ``vtk`` wheel (directly or through pyvista), which would install
  a second VTK next to the one that Slicer ships;
- the other requirements with pip, dependencies included.

pip runs through ``slicer.packaging.pip_install`` where it exists (Slicer 5.11 and
later, with a progress dialog) and ``slicer.util.pip_install`` otherwise.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "TORCH",
    "WITHOUT_DEPENDENCIES",
    "InstallPlan",
    "Installer",
    "PackagesDeclined",
    "ensure_packages",
    "is_satisfied",
    "plan_installation",
    "read_requirements",
    "requirement_name",
    "slicer_installer",
]

logger = logging.getLogger(__name__)

TORCH = "torch"

#: Packages installed with ``pip install --no-deps``: each requires the vtk wheel.
WITHOUT_DEPENDENCIES = frozenset({"sinkshape", "pyvista"})

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


class PackagesDeclined(RuntimeError):
    """Raised when the user declines the installation of missing packages."""


def read_requirements(path: str | Path) -> list[str]:
    """Return the requirements of a pip requirements file, following ``-r`` includes.

    Comments, blank lines and other pip options are skipped.
    """
    path = Path(path)
    requirements = []
    for raw_line in path.read_text(encoding="utf-8").splitlines():
        line = raw_line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r ", "--requirement ")):
            included = line.split(maxsplit=1)[1]
            requirements.extend(read_requirements(path.parent / included))
        elif not line.startswith("-"):
            requirements.append(line)
    return requirements


def requirement_name(requirement: str) -> str:
    """Return the normalized project name of a requirement ("Scikit_Shapes" -> "scikit-shapes")."""
    match = _NAME.match(requirement)
    if match is None:
        msg = f"invalid requirement {requirement!r}; expected a name such as 'torch>=2.1'"
        raise ValueError(msg)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def is_satisfied(requirement: str) -> bool:
    """Return whether an installed distribution meets ``requirement``.

    Versions and environment markers are checked with the ``packaging`` library
    when it is importable; without it, only the presence of the distribution is.
    """
    try:
        from packaging.requirements import Requirement
    except ImportError:
        Requirement = None

    if Requirement is None:
        name = requirement_name(requirement)
        specifier = None
    else:
        parsed = Requirement(requirement)
        if parsed.marker is not None and not parsed.marker.evaluate():
            return True
        name = parsed.name
        specifier = parsed.specifier

    try:
        installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return specifier is None or specifier.contains(installed, prereleases=True)


@dataclass(frozen=True)
class InstallPlan:
    """Requirements that are not met, grouped by how they get installed."""

    torch: str | None
    with_dependencies: tuple[str, ...]
    without_dependencies: tuple[str, ...]

    @property
    def empty(self) -> bool:
        """Whether every requirement is met already."""
        return self.torch is None and not self.with_dependencies and not self.without_dependencies

    def describe(self, *, torch_through_extension: bool) -> str:
        """Return the text of the confirmation dialog."""
        lines = ["The VesselDiffusion module needs Python packages that are not installed:", ""]
        if self.torch is not None:
            via = "through the PyTorch extension" if torch_through_extension else "with pip"
            lines.append(f"- {self.torch} ({via})")
        lines.extend(f"- {requirement}" for requirement in self.with_dependencies)
        lines.extend(
            f"- {requirement} (without its dependencies)" for requirement in self.without_dependencies
        )
        lines += [
            "",
            "Installing downloads them from the internet, can take several minutes "
            "(torch alone is hundreds of megabytes) and changes the Python "
            "environment of 3D Slicer. Install them now?",
        ]
        return "\n".join(lines)


def plan_installation(
    requirements: Iterable[str],
    *,
    satisfied: Callable[[str], bool] = is_satisfied,
) -> InstallPlan:
    """Group the requirements that ``satisfied`` rejects by installation method."""
    torch = None
    with_dependencies = []
    without_dependencies = []
    for requirement in requirements:
        if satisfied(requirement):
            continue
        name = requirement_name(requirement)
        if name == TORCH:
            torch = requirement
        elif name in WITHOUT_DEPENDENCIES:
            without_dependencies.append(requirement)
        else:
            with_dependencies.append(requirement)
    return InstallPlan(torch, tuple(with_dependencies), tuple(without_dependencies))


class Installer:
    """Runs an :class:`InstallPlan` with the functions 3D Slicer provides.

    Parameters
    ----------
    pip_install : callable
        Called with a list of pip arguments, as ``slicer.packaging.pip_install``
        and ``slicer.util.pip_install`` accept them.
    pytorch_utils : module, optional
        The PyTorch extension's ``PyTorchUtils`` module, when it is installed.
    """

    def __init__(self, *, pip_install: Callable[[list[str]], object], pytorch_utils=None) -> None:
        self.pip_install = pip_install
        self.pytorch_utils = pytorch_utils

    def install(self, plan: InstallPlan) -> None:
        """Install torch first, then the other packages."""
        if plan.torch is not None:
            self._install_torch(plan.torch)
        if plan.without_dependencies:
            logger.info("Installing without dependencies: %s", ", ".join(plan.without_dependencies))
            self.pip_install(["--no-deps", *plan.without_dependencies])
        if plan.with_dependencies:
            logger.info("Installing: %s", ", ".join(plan.with_dependencies))
            self.pip_install(list(plan.with_dependencies))
        importlib.invalidate_caches()

    def _install_torch(self, requirement: str) -> None:
        if self.pytorch_utils is None:
            logger.info("Installing %s with pip", requirement)
            self.pip_install([requirement])
            return

        logger.info("Installing %s through the PyTorch extension", requirement)
        version_requirement = requirement[_NAME.match(requirement).end() :].strip()
        torch = self.pytorch_utils.PyTorchUtilsLogic().installTorch(
            askConfirmation=False, torchVersionRequirement=version_requirement
        )
        if torch is None:
            msg = (
                f"the PyTorch extension could not install {requirement}; open the "
                "PyTorch Utils module to install torch, then click Apply again"
            )
            raise RuntimeError(msg)


def slicer_installer(slicer_module) -> Installer:
    """Return an :class:`Installer` that uses the installation functions of this Slicer."""
    try:
        packaging = importlib.import_module("slicer.packaging")
    except ImportError:
        packaging = None

    if packaging is not None and hasattr(packaging, "pip_install"):
        # The keyword arguments of slicer.packaging.pip_install changed during its
        # development: some versions name the requester, others prompt again
        # unless interactive=False. The user has already agreed, so no new prompt.
        parameters = inspect.signature(packaging.pip_install).parameters
        options = {}
        if "requester" in parameters:
            options["requester"] = "VesselDiffusion"
        if "interactive" in parameters:
            options["interactive"] = False

        def pip_install(arguments: list[str]) -> object:
            return packaging.pip_install(arguments, **options)

    else:
        pip_install = slicer_module.util.pip_install

    try:
        pytorch_utils = importlib.import_module("PyTorchUtils")
    except ImportError:
        pytorch_utils = None
    return Installer(pip_install=pip_install, pytorch_utils=pytorch_utils)


def ensure_packages(
    requirements_file: str | Path,
    *,
    confirm: Callable[[str], bool],
    installer: Installer,
) -> bool:
    """Install the missing requirements of ``requirements_file`` after one confirmation.

    ``confirm`` shows the text of :meth:`InstallPlan.describe` and returns whether
    the user accepted. Returns whether anything was installed. Raises
    :class:`PackagesDeclined` when the user declines.
    """
    plan = plan_installation(read_requirements(requirements_file))
    if plan.empty:
        return False

    question = plan.describe(torch_through_extension=installer.pytorch_utils is not None)
    if not confirm(question):
        msg = "the required Python packages were not installed; click Apply again to install them"
        raise PackagesDeclined(msg)
    installer.install(plan)
    return True
