"""How the 3D Slicer module finds and installs its Python packages, with fake installers.

Nothing is installed: the installers record what they would run.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).parents[1] / "slicer_module" / "VesselDiffusion"
RESOURCES = MODULE_DIR / "Resources"
sys.path.insert(0, str(MODULE_DIR))

from VesselDiffusionLib.dependencies import (  # noqa: E402
    Installer,
    PackagesDeclined,
    ensure_packages,
    is_satisfied,
    plan_installation,
    read_requirements,
    requirement_name,
    slicer_installer,
)


class RecordingPip:
    """Stands in for slicer.util.pip_install: records the argument lists."""

    def __init__(self):
        self.calls = []

    def __call__(self, arguments):
        self.calls.append(list(arguments))


def fake_pytorch_utils(returned_torch):
    """A PyTorchUtils module whose logic records installTorch calls."""
    calls = []

    class PyTorchUtilsLogic:
        def installTorch(self, askConfirmation, torchVersionRequirement):  # noqa: N802, N803
            calls.append((askConfirmation, torchVersionRequirement))
            return returned_torch

    module = types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic)
    return module, calls


def write_requirements(folder: Path, lines: list[str]) -> Path:
    path = folder / "requirements.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_read_requirements_follows_include():
    smoothing = read_requirements(RESOURCES / "requirements.txt")
    registration = read_requirements(RESOURCES / "requirements-registration.txt")

    assert smoothing == ["torch>=2.1", "sinkshape>=0.1"]
    assert registration[: len(smoothing)] == smoothing
    assert "pyvista>=0.44" in registration


def test_read_requirements_skips_comments(tmp_path):
    path = write_requirements(tmp_path, ["# comment", "", "numpy>=1.24  # inline", "--index-url https://x"])

    assert read_requirements(path) == ["numpy>=1.24"]


@pytest.mark.parametrize(
    ("requirement", "name"),
    [("torch>=2.1", "torch"), ("Scikit_Shapes==0.3", "scikit-shapes"), ("pyvista.validation", "pyvista-validation")],
)
def test_requirement_name_normalized(requirement, name):
    assert requirement_name(requirement) == name


def test_is_satisfied_checks_version():
    import pytest as installed

    assert is_satisfied("pytest")
    assert is_satisfied(f"pytest=={installed.__version__}")
    assert not is_satisfied("pytest<1")
    assert not is_satisfied("no-such-package-vesseldiffusion")
    assert is_satisfied("no-such-package-vesseldiffusion; sys_platform == 'nonexistent'")


def test_plan_groups_by_method():
    requirements = ["torch>=2.1", "sinkshape>=0.1", "pyvista>=0.44", "pooch>=1.7", "numpy"]
    plan = plan_installation(requirements, satisfied=lambda requirement: requirement == "numpy")

    assert plan.torch == "torch>=2.1"
    assert plan.without_dependencies == ("sinkshape>=0.1", "pyvista>=0.44")
    assert plan.with_dependencies == ("pooch>=1.7",)
    assert not plan.empty


def test_plan_describes_every_package():
    plan = plan_installation(["torch>=2.1", "sinkshape>=0.1", "pooch"], satisfied=lambda requirement: False)
    text = plan.describe(torch_through_extension=True)

    assert "- torch>=2.1 (through the PyTorch extension)" in text
    assert "- sinkshape>=0.1 (without its dependencies)" in text
    assert "- pooch\n" in text
    assert text.endswith("Install them now?")


def test_ensure_asks_once(tmp_path):
    path = write_requirements(tmp_path, ["no-such-package-a>=1", "no-such-package-b"])
    questions = []
    pip = RecordingPip()

    installed = ensure_packages(
        path, confirm=lambda text: questions.append(text) or True, installer=Installer(pip_install=pip)
    )

    assert installed
    assert len(questions) == 1
    assert pip.calls == [["no-such-package-a>=1", "no-such-package-b"]]


def test_ensure_declined_installs_nothing(tmp_path):
    path = write_requirements(tmp_path, ["no-such-package-a"])
    pip = RecordingPip()

    with pytest.raises(PackagesDeclined, match="click Apply again"):
        ensure_packages(path, confirm=lambda text: False, installer=Installer(pip_install=pip))
    assert pip.calls == []


def test_ensure_nothing_missing_asks_nothing(tmp_path):
    path = write_requirements(tmp_path, ["pytest"])
    questions = []

    installed = ensure_packages(
        path, confirm=lambda text: questions.append(text) or True, installer=Installer(pip_install=RecordingPip())
    )

    assert not installed
    assert questions == []


def test_installer_order_and_no_deps():
    plan = plan_installation(
        ["torch>=2.1", "sinkshape>=0.1", "pooch>=1.7"], satisfied=lambda requirement: False
    )
    pip = RecordingPip()

    Installer(pip_install=pip).install(plan)

    assert pip.calls == [["torch>=2.1"], ["--no-deps", "sinkshape>=0.1"], ["pooch>=1.7"]]


def test_installer_torch_through_extension():
    plan = plan_installation(["torch>=2.1"], satisfied=lambda requirement: False)
    pytorch_utils, calls = fake_pytorch_utils(returned_torch=object())
    pip = RecordingPip()

    Installer(pip_install=pip, pytorch_utils=pytorch_utils).install(plan)

    assert calls == [(False, ">=2.1")]
    assert pip.calls == []


def test_installer_torch_extension_failure():
    plan = plan_installation(["torch>=2.1"], satisfied=lambda requirement: False)
    pytorch_utils, _ = fake_pytorch_utils(returned_torch=None)

    with pytest.raises(RuntimeError, match="PyTorch Utils module"):
        Installer(pip_install=RecordingPip(), pytorch_utils=pytorch_utils).install(plan)


def test_slicer_installer_without_packaging(monkeypatch):
    """Before Slicer 5.11 there is no slicer.packaging: slicer.util.pip_install is used."""
    pip = RecordingPip()
    fake_slicer = types.SimpleNamespace(util=types.SimpleNamespace(pip_install=pip))
    monkeypatch.setitem(sys.modules, "slicer.packaging", None)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)

    installer = slicer_installer(fake_slicer)
    installer.pip_install(["pooch"])

    assert installer.pytorch_utils is None
    assert pip.calls == [["pooch"]]


def test_slicer_installer_with_packaging(monkeypatch):
    """Slicer 5.11 and later: slicer.packaging.pip_install, with the module named as requester."""
    calls = []
    packaging = types.ModuleType("slicer.packaging")
    packaging.pip_install = lambda arguments, requester=None: calls.append((arguments, requester))
    pytorch_utils, _ = fake_pytorch_utils(returned_torch=object())
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", pytorch_utils)
    fake_slicer = types.SimpleNamespace(util=types.SimpleNamespace(pip_install=RecordingPip()))

    installer = slicer_installer(fake_slicer)
    installer.pip_install(["--no-deps", "sinkshape>=0.1"])

    assert installer.pytorch_utils is pytorch_utils
    assert calls == [(["--no-deps", "sinkshape>=0.1"], "VesselDiffusion")]


def test_slicer_installer_no_second_prompt(monkeypatch):
    """A slicer.packaging.pip_install that prompts unless interactive=False gets False."""
    calls = []
    packaging = types.ModuleType("slicer.packaging")
    packaging.pip_install = lambda args=None, *, requirements=None, interactive=True: calls.append(
        (args, interactive)
    )
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)

    installer = slicer_installer(types.SimpleNamespace(util=None))
    installer.pip_install(["pooch"])

    assert calls == [(["pooch"], False)]
