"""Static checks of the 3D Slicer extension in slicer_module/: files that Slicer reads at load time.

Slicer's Qt and parameter-node machinery is not available outside the desktop
application, so the .ui file, the parameter node class, the CMake lists and the
catalog entry are checked by parsing them.
"""

from __future__ import annotations

import ast
import json
import py_compile
import re
import struct
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

EXTENSION_DIR = Path(__file__).parents[1] / "slicer_module"
MODULE_DIR = EXTENSION_DIR / "VesselDiffusion"
MODULE_FILE = MODULE_DIR / "VesselDiffusion.py"
LIB_DIR = MODULE_DIR / "VesselDiffusionLib"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "VesselDiffusion.ui"
CATALOG_FILE = EXTENSION_DIR / "SinkShape.json"

sys.path.insert(0, str(MODULE_DIR))

# Widget classes that Slicer's parameter node wrapper can bind to each kind of
# parameter, from the GUI connectors of Slicer/Base/Python/slicer/parameterNodeWrapper
# (5.x). A QComboBox binds an int, float, str or bool only with a Choice annotation.
CONNECTABLE_WIDGETS = {
    "bool": {"QCheckBox", "QPushButton"},
    "int": {"QSpinBox", "QSlider"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget"},
    "str": {"QLineEdit", "QTextEdit"},
    "enum": {"QComboBox"},
    "node": {"qMRMLNodeComboBox", "qMRMLSubjectHierarchyTreeView"},
}

# Keys allowed by the Extensions Index schema for catalog entries, version 1.0.1.
CATALOG_KEYS = {
    "$schema",
    "category",
    "scm_url",
    "scm_revision",
    "scm_type",
    "build_dependencies",
    "build_subdirectory",
    "enabled",
    "tier",
}
CATALOG_REQUIRED_KEYS = {"$schema", "category", "scm_url"}

# Packages installed on Apply: importing one at module level would make the module
# fail to load before the user agreed to install it.
INSTALLED_ON_APPLY = {"sinkshape", "torch", "pyvista"}
GUI_MODULES = {"qt", "ctk", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper", "slicer.util"}


def ui_widgets() -> list[ElementTree.Element]:
    return list(ElementTree.parse(UI_FILE).getroot().iter("widget"))


def bound_widgets() -> dict[str, ElementTree.Element]:
    """Return the .ui widgets that carry a SlicerParameterName, by parameter name."""
    bound = {}
    for widget in ui_widgets():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                name = prop.find("string").text
                assert name not in bound, f"parameter {name!r} is bound to two widgets"
                bound[name] = widget
    return bound


def module_tree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"))


def parameter_node_fields() -> dict[str, tuple[ast.expr, ast.expr | None]]:
    """Return annotation and default of each field of the @parameterNodeWrapper class."""
    for node in module_tree().body:
        if isinstance(node, ast.ClassDef) and any(
            isinstance(d, ast.Name) and d.id == "parameterNodeWrapper" for d in node.decorator_list
        ):
            return {
                statement.target.id: (statement.annotation, statement.value)
                for statement in node.body
                if isinstance(statement, ast.AnnAssign)
            }
    raise AssertionError("no class decorated with @parameterNodeWrapper in VesselDiffusion.py")


def enum_classes() -> set[str]:
    names = set()
    for node in module_tree().body:
        if isinstance(node, ast.ClassDef) and any(ast.unparse(base) == "enum.Enum" for base in node.bases):
            names.add(node.name)
    return names


def split_annotation(annotation: ast.expr) -> tuple[str, list[ast.Call]]:
    """Return the kind of a parameter (see CONNECTABLE_WIDGETS) and its Annotated extras."""
    extras = []
    if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value) == "Annotated":
        base, *rest = annotation.slice.elts
        extras = [extra for extra in rest if isinstance(extra, ast.Call)]
        annotation = base
    name = ast.unparse(annotation)
    if name in ("bool", "int", "float", "str"):
        return name, extras
    if name in enum_classes():
        return "enum", extras
    if name.startswith("vtkMRML"):
        return "node", extras
    raise AssertionError(f"unexpected parameter type {name!r}")


def cmake_list(text: str, variable: str, module_name: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.DOTALL)
    assert match, f"{variable} is not set"
    return [item.replace("${MODULE_NAME}", module_name) for item in match.group(1).split()]


def cmake_value(text: str, variable: str) -> str:
    match = re.search(rf'set\({variable}\s+"([^"]*)"\)', text)
    assert match, f"{variable} is not set"
    return match.group(1)


# The .ui file


def test_ui_parses():
    root = ElementTree.parse(UI_FILE).getroot()

    assert root.tag == "ui"
    assert root.find("widget").get("class") == "qMRMLWidget"


def test_ui_custom_widgets_declared():
    declared = {custom.find("class").text for custom in ElementTree.parse(UI_FILE).getroot().iter("customwidget")}
    used = {widget.get("class") for widget in ui_widgets()}

    assert {name for name in used if name.startswith(("ctk", "qMRML"))} <= declared


def test_ui_scene_reaches_mrml_widgets():
    connections = ElementTree.parse(UI_FILE).getroot().iter("connection")
    receivers = {c.find("receiver").text for c in connections if c.find("slot").text == "setMRMLScene(vtkMRMLScene*)"}
    mrml_widgets = {w.get("name") for w in ui_widgets() if w.get("class").startswith("qMRML") and w.get("class") != "qMRMLWidget"}

    assert mrml_widgets == receivers


def test_ui_parameters_exist():
    fields = parameter_node_fields()

    for name in bound_widgets():
        assert name in fields, f".ui binds {name!r}, which the parameter node does not declare"


def test_ui_widgets_can_bind():
    fields = parameter_node_fields()

    for name, widget in bound_widgets().items():
        kind, extras = split_annotation(fields[name][0])
        widget_class = widget.get("class")
        has_choice = any(ast.unparse(extra.func) == "Choice" for extra in extras)
        allowed = CONNECTABLE_WIDGETS[kind] | ({"QComboBox"} if has_choice else set())
        assert widget_class in allowed, f"{name!r} ({kind}) cannot bind to a {widget_class}"


def test_parameter_defaults_valid():
    from VesselDiffusionLib import settings

    for name, (annotation, default) in parameter_node_fields().items():
        _, extras = split_annotation(annotation)
        if default is None or not isinstance(default, ast.Constant):
            continue
        for extra in extras:
            arguments = [eval(ast.unparse(a), {"list": list, **vars(settings)}) for a in extra.args]  # noqa: S307
            if ast.unparse(extra.func) == "WithinRange":
                assert arguments[0] <= default.value <= arguments[1], name
            if ast.unparse(extra.func) == "Choice":
                assert default.value in arguments[0], name


def test_module_uses_existing_widgets():
    names = {widget.get("name") for widget in ui_widgets()}
    used = {
        node.attr
        for node in ast.walk(module_tree())
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "ui"
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id == "self"
    }

    assert used <= names, f"widgets missing from the .ui: {sorted(used - names)}"


# Python files


@pytest.mark.parametrize("path", [MODULE_FILE, *sorted(LIB_DIR.glob("*.py"))], ids=lambda p: p.name)
def test_python_compiles(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "compiled.pyc"), doraise=True)


@pytest.mark.parametrize("path", [MODULE_FILE, *sorted(LIB_DIR.glob("*.py"))], ids=lambda p: p.name)
def test_load_imports_nothing_installed_on_apply(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = set()
    for statement in tree.body:
        if isinstance(statement, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in statement.names}
        elif isinstance(statement, ast.ImportFrom) and statement.module:
            imported.add(statement.module.split(".")[0])

    assert not imported & INSTALLED_ON_APPLY


def test_load_installs_nothing():
    calls = {
        ast.unparse(node.func)
        for statement in module_tree().body
        if not isinstance(statement, (ast.FunctionDef, ast.ClassDef))
        for node in ast.walk(statement)
        if isinstance(node, ast.Call)
    }

    assert not {call for call in calls if "install" in call or "ensure" in call}


@pytest.mark.parametrize("path", sorted(LIB_DIR.glob("*.py")), ids=lambda p: p.name)
def test_lib_has_no_gui_imports(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)

    assert not imported & GUI_MODULES


# CMake lists, resources and catalog entry


def test_cmake_module_files_exist():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    module_name = re.search(r"set\(MODULE_NAME\s+(\w+)\)", text).group(1)
    listed = cmake_list(text, "MODULE_PYTHON_SCRIPTS", module_name) + cmake_list(
        text, "MODULE_PYTHON_RESOURCES", module_name
    )

    assert module_name == MODULE_DIR.name
    for relative in listed:
        assert (MODULE_DIR / relative).is_file(), relative


def test_cmake_lists_every_lib_file():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts = set(cmake_list(text, "MODULE_PYTHON_SCRIPTS", MODULE_DIR.name))
    on_disk = {path.relative_to(MODULE_DIR).as_posix() for path in LIB_DIR.glob("*.py")}

    assert on_disk <= scripts


def test_cmake_extension_files_exist():
    text = (EXTENSION_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    subdirectories = re.findall(r"add_subdirectory\((\w+)\)", text)

    assert subdirectories == ["VesselDiffusion"]
    for name in subdirectories:
        assert (EXTENSION_DIR / name / "CMakeLists.txt").is_file()


def test_cmake_extension_metadata():
    text = (EXTENSION_DIR / "CMakeLists.txt").read_text(encoding="utf-8")

    for variable in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert cmake_value(text, f"EXTENSION_{variable}")
    assert re.search(r"project\(SinkShape\)", text)


def test_cmake_urls_name_existing_files():
    text = (EXTENSION_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    urls = [cmake_value(text, "EXTENSION_ICONURL"), *cmake_value(text, "EXTENSION_SCREENSHOTURLS").split()]

    for url in urls:
        relative = url.split("/main/", 1)[1]
        assert (EXTENSION_DIR / relative).is_file(), relative


def test_catalog_entry_valid():
    entry = json.loads(CATALOG_FILE.read_text(encoding="utf-8"))
    cmake = (EXTENSION_DIR / "CMakeLists.txt").read_text(encoding="utf-8")

    assert CATALOG_REQUIRED_KEYS <= set(entry)
    assert set(entry) <= CATALOG_KEYS
    assert entry["category"] == cmake_value(cmake, "EXTENSION_CATEGORY")
    assert entry["build_dependencies"] == cmake_value(cmake, "EXTENSION_DEPENDS").split()
    assert entry["scm_type"] in ("git", "local")
    assert 1 <= entry["tier"] <= 5
    assert CATALOG_FILE.stem == re.search(r"project\((\w+)\)", cmake).group(1)


def test_icon_is_128_png():
    data = (MODULE_DIR / "Resources" / "Icons" / "VesselDiffusion.png").read_bytes()
    width, height, bit_depth, color_type = struct.unpack(">IIBB", data[16:26])

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert (width, height) == (128, 128)
    assert color_type == 6, "the icon has no alpha channel"


@pytest.mark.parametrize("name", ["requirements.txt", "requirements-registration.txt"])
def test_requirements_parse(name):
    from packaging.requirements import Requirement

    from VesselDiffusionLib.dependencies import read_requirements

    requirements = [Requirement(line) for line in read_requirements(MODULE_DIR / "Resources" / name)]

    assert requirements
    # Slicer ships these; upgrading them from an extension can break Slicer.
    assert not {r.name for r in requirements} & {"numpy", "scipy", "vtk", "SimpleITK"}
