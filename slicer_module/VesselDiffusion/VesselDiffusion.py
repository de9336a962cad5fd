"""3D Slicer module that smooths vessel models without shrinking them, and registers them.

The numerical work comes from sinkshape (Sinkhorn-normalized kernel diffusion).
The Logic that needs no GUI lives in ``VesselDiffusionLib`` so that it also runs
outside Slicer, on the MRML classes of the ``slicer-core`` wheel. sinkshape and
torch are installed on the first Apply, after the user agrees, never at load time.
"""

import enum
import logging
import os
from typing import Annotated, Optional

import slicer
import vtk
from slicer import vtkMRMLModelNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from VesselDiffusionLib.dependencies import PackagesDeclined, ensure_packages, slicer_installer
from VesselDiffusionLib.logic import CoreLogic
from VesselDiffusionLib.mrml import numeric_point_array_names
from VesselDiffusionLib.progress import Cancelled, Progress, run_with_progress
from VesselDiffusionLib.settings import BACKENDS, RegistrationSettings, SmoothingSettings

#: Name of the sample registered in the Sample Data module.
AORTA_SAMPLE_NAME = "Aorta lumen (vmtk)"

# Closed lumen surface of an abdominal aorta with its iliac bifurcation, from the
# test data of vmtk (BSD licence), at a pinned commit.
# NOTE: this address follows the layout of raw.githubusercontent.com at that
# commit; it has not been downloaded from inside Slicer. A wrong file fails the
# sha256 check of the Sample Data module.
AORTA_URL = (
    "https://raw.githubusercontent.com/vmtk/vmtk-test-data/"
    "7f5abc07a33e1037a106fa4e0ac6c320adb1baa1/input/aorta-surface.vtp"
)
AORTA_SHA256 = "18f4d019c7cc553ef20452f27fb5c2713637607c5e2ca7745579753fc89335ab"


#
# VesselDiffusion
#


class VesselDiffusion(ScriptedLoadableModule):
    """Module description shown by Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Vessel Diffusion")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Surface Models")]
        self.parent.dependencies = []
        self.parent.contributors = ["sinkshape developers"]
        self.parent.helpText = _(
            "Smooth vessel models without shrinking the lumen, and register one vessel "
            "tree to another. <b>Smooth</b> writes a new model and reports the change of "
            "the enclosed volume. <b>Register</b> writes the registered model, a grid "
            "transform that moves the CT, centerlines and fiducials the same way, and a "
            "table of surface distances. The first Apply offers to install the Python "
            "packages it needs (sinkshape, torch)."
        )
        self.parent.acknowledgementText = _(
            "Uses sinkshape (Sinkhorn-normalized kernel diffusion). The aorta sample comes "
            "from the test data of vmtk (BSD licence)."
        )
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Add the aorta surface to the Sample Data module."""
    import SampleData

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="Vessel Diffusion",
        sampleName=AORTA_SAMPLE_NAME,
        thumbnailFileName=os.path.join(os.path.dirname(__file__), "Resources", "Icons", "VesselDiffusion.png"),
        uris=AORTA_URL,
        fileNames="aorta-surface.vtp",
        checksums=f"SHA256:{AORTA_SHA256}",
        nodeNames="Aorta",
        loadFileType="ModelFile",
    )


#
# VesselDiffusionParameterNode
#


class InputKind(enum.Enum):
    """Source of the surface that the Smooth panel reads."""

    MODEL = "model"
    SEGMENT = "segment"

    def label(self) -> str:
        """Text shown in the combo box."""
        return _("Model") if self is InputKind.MODEL else _("Segment of a segmentation")


class SmoothingTarget(enum.Enum):
    """Target of the Smooth panel: the shape, or a point array."""

    SURFACE = "surface"
    POINT_ARRAY = "point_array"

    def label(self) -> str:
        """Text shown in the combo box."""
        return _("Surface shape") if self is SmoothingTarget.SURFACE else _("Point scalar array")


@parameterNodeWrapper
class VesselDiffusionParameterNode:
    """Parameters of both panels, saved with the scene.

    Smooth panel: the input (a model, or a segment), sigma in mm, what to smooth,
    the kernel backend and the filter order. Register panel: the moving and fixed
    models, sigma in mm, iterations, control points (0: the moving vertices) and
    the spacing of the grid transform in mm.
    """

    inputKind: InputKind = InputKind.MODEL
    inputModel: vtkMRMLModelNode
    inputSegmentation: vtkMRMLSegmentationNode
    inputSegmentId: str = ""
    smoothingSigma: Annotated[float, WithinRange(0.1, 20.0)] = 2.0
    smoothingTarget: SmoothingTarget = SmoothingTarget.SURFACE
    pointArrayName: str = ""
    smoothingBackend: Annotated[str, Choice(list(BACKENDS))] = "auto"
    filterOrder: Annotated[int, WithinRange(1, 12)] = 6

    movingModel: vtkMRMLModelNode
    fixedModel: vtkMRMLModelNode
    registrationSigma: Annotated[float, WithinRange(1.0, 100.0)] = 10.0
    registrationIterations: Annotated[int, WithinRange(1, 1000)] = 50
    controlPoints: Annotated[int, WithinRange(0, 10000)] = 0
    gridSpacing: Annotated[float, WithinRange(0.5, 10.0)] = 2.0


#
# VesselDiffusionWidget
#


class VesselDiffusionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The Smooth and Register panels."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._running = False

    def setup(self) -> None:
        """Load the panel from its .ui file and connect it to the parameter node."""
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/VesselDiffusion.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = VesselDiffusionLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # The segment selector and the point array list have no parameter node
        # connector, so they are kept in sync here.
        self.ui.segmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentSelectionChanged)
        self.ui.segmentSelector.connect("currentSegmentChanged(QString)", self.onSegmentSelectionChanged)
        self.ui.pointArrayComboBox.connect("currentTextChanged(QString)", self.onPointArrayChanged)
        self.ui.applySmoothingButton.connect("clicked(bool)", self.onApplySmoothing)
        self.ui.applyRegistrationButton.connect("clicked(bool)", self.onApplyRegistration)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Remove observers when the application closes."""
        self.removeObservers()

    def enter(self) -> None:
        """Make sure a parameter node exists each time the module is shown."""
        self.initializeParameterNode()

    def exit(self) -> None:
        """Stop syncing the GUI while another module is shown."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)

    def onSceneStartClose(self, caller, event) -> None:
        """Forget the parameter node of the scene being closed."""
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Create a new parameter node if the module is shown."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Set the parameter node, and select the first model of the scene as input."""
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputModel:
            self._parameterNode.inputModel = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLModelNode")

    def setParameterNode(self, inputParameterNode: Optional[VesselDiffusionParameterNode]) -> None:
        """Connect the GUI to a parameter node, and observe it."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets with a "SlicerParameterName" property in the .ui file are bound here.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
            self._updateGui()

    # Widgets that the parameter node does not bind

    def onSegmentSelectionChanged(self, *_arguments) -> None:
        """Copy the segment selection into the parameter node."""
        if self._parameterNode is None:
            return
        self._parameterNode.inputSegmentation = self.ui.segmentSelector.currentNode()
        self._parameterNode.inputSegmentId = self.ui.segmentSelector.currentSegmentID() or ""

    def onPointArrayChanged(self, name: str) -> None:
        """Copy the point array selection into the parameter node."""
        if self._parameterNode is not None and name:
            self._parameterNode.pointArrayName = name

    def _updateGui(self, caller=None, event=None) -> None:
        parameters = self._parameterNode
        if parameters is None:
            return

        fromModel = parameters.inputKind == InputKind.MODEL
        self.ui.inputModelLabel.visible = fromModel
        self.ui.inputModelSelector.visible = fromModel
        self.ui.segmentLabel.visible = not fromModel
        self.ui.segmentSelector.visible = not fromModel
        if self.ui.segmentSelector.currentNode() != parameters.inputSegmentation:
            self.ui.segmentSelector.setCurrentNode(parameters.inputSegmentation)
        if parameters.inputSegmentId and self.ui.segmentSelector.currentSegmentID() != parameters.inputSegmentId:
            self.ui.segmentSelector.setCurrentSegmentID(parameters.inputSegmentId)

        # Point arrays exist on models only; a segment's surface has none.
        smoothArray = parameters.smoothingTarget == SmoothingTarget.POINT_ARRAY
        names = numeric_point_array_names(parameters.inputModel) if fromModel else []
        self._fillPointArrays(names, parameters.pointArrayName)
        self.ui.pointArrayLabel.visible = smoothArray
        self.ui.pointArrayComboBox.visible = smoothArray

        self._updateApplyButtons()

    def _fillPointArrays(self, names, selected: str) -> None:
        comboBox = self.ui.pointArrayComboBox
        current = [comboBox.itemText(index) for index in range(comboBox.count)]
        if current != names:
            wasBlocked = comboBox.blockSignals(True)
            comboBox.clear()
            comboBox.addItems(names)
            comboBox.blockSignals(wasBlocked)
        if selected in names:
            comboBox.setCurrentIndex(comboBox.findText(selected))
        elif names:
            self._parameterNode.pointArrayName = comboBox.currentText

    def _updateApplyButtons(self) -> None:
        parameters = self._parameterNode
        if parameters.inputKind == InputKind.MODEL:
            hasInput = parameters.inputModel is not None
        else:
            hasInput = parameters.inputSegmentation is not None and bool(parameters.inputSegmentId)
        hasArray = parameters.smoothingTarget == SmoothingTarget.SURFACE or bool(self.ui.pointArrayComboBox.currentText)
        canSmooth = hasInput and hasArray and not self._running
        self.ui.applySmoothingButton.enabled = canSmooth
        self.ui.applySmoothingButton.toolTip = (
            _("Smooth the input into a new model") if canSmooth else _("Select an input surface (and a point array)")
        )

        models = (parameters.movingModel, parameters.fixedModel)
        canRegister = all(models) and models[0] != models[1] and not self._running
        self.ui.applyRegistrationButton.enabled = canRegister
        self.ui.applyRegistrationButton.toolTip = (
            _("Register the moving model to the fixed model")
            if canRegister
            else _("Select two different models: a moving one and a fixed one")
        )

    # Apply

    def onApplySmoothing(self) -> None:
        """Smooth the selected input into a new model node."""
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Smoothing failed."), waitCursor=False):
            if not self._ensurePackages("requirements.txt"):
                return
            settings = SmoothingSettings(
                sigma=parameters.smoothingSigma,
                target=parameters.smoothingTarget.value,
                array_name=parameters.pointArrayName,
                backend=parameters.smoothingBackend,
                order=parameters.filterOrder,
            )
            if parameters.inputKind == InputKind.MODEL:
                job = self.logic.prepare_smoothing(parameters.inputModel, settings)
            else:
                job = self.logic.prepare_smoothing(
                    parameters.inputSegmentation, settings, segment_id=parameters.inputSegmentId
                )

            computation = self._runInBackground(_("Smoothing"), lambda progress: self.logic.compute_smoothing(job, progress))
            if computation is None:
                return
            result = self.logic.add_smoothing_nodes(slicer.mrmlScene, job, computation)
            self.ui.smoothingResultsLabel.text = result.summary()

    def onApplyRegistration(self) -> None:
        """Register the moving model to the fixed model."""
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Registration failed."), waitCursor=False):
            if not self._ensurePackages("requirements-registration.txt"):
                return
            settings = RegistrationSettings(
                sigma=parameters.registrationSigma,
                iterations=parameters.registrationIterations,
                control_points=parameters.controlPoints,
                grid_spacing=parameters.gridSpacing,
            )
            job = self.logic.prepare_registration(parameters.movingModel, parameters.fixedModel, settings)

            computation = self._runInBackground(
                _("Registration"), lambda progress: self.logic.compute_registration(job, progress)
            )
            if computation is None:
                return
            result = self.logic.add_registration_nodes(slicer.mrmlScene, job, computation)
            self.ui.registrationResultsLabel.text = result.summary()
            slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(result.table_node.GetID())
            slicer.app.applicationLogic().PropagateTableSelection()

    def _ensurePackages(self, requirementsFileName: str) -> bool:
        """Install the missing packages after one confirmation; return False if declined."""
        try:
            ensure_packages(
                self.resourcePath(requirementsFileName),
                confirm=lambda text: slicer.util.confirmOkCancelDisplay(
                    text, windowTitle=_("Vessel Diffusion: install Python packages")
                ),
                installer=slicer_installer(slicer),
            )
        except PackagesDeclined as error:
            slicer.util.showStatusMessage(str(error), 5000)
            return False
        return True

    def _runInBackground(self, title: str, compute):
        """Run ``compute(progress)`` off the GUI thread with a progress dialog.

        Returns its result, or None when the user cancelled. Errors are raised
        again here, on the GUI thread.
        """
        progress = Progress()
        dialog = slicer.util.createProgressDialog(
            windowTitle=title, labelText=title, maximum=100, autoClose=False, autoReset=False
        )
        dialog.setCancelButtonText(_("Cancel"))

        def update(fraction: float, message: str) -> None:
            dialog.value = int(round(100 * fraction))
            if progress.cancelled:
                dialog.labelText = _("Cancelling at the next step...")
            elif message:
                dialog.labelText = message

        self._running = True
        self._updateApplyButtons()
        try:
            return run_with_progress(
                lambda: compute(progress),
                progress,
                update=update,
                cancel_requested=lambda: dialog.wasCanceled,
                process_events=slicer.app.processEvents,
            )
        except Cancelled:
            logging.info("%s cancelled by the user; no node was added", title)
            slicer.util.showStatusMessage(_("{title} cancelled; nothing was added to the scene.").format(title=title), 5000)
            return None
        finally:
            dialog.close()
            self._running = False
            self._updateApplyButtons()


#
# VesselDiffusionLogic
#


class VesselDiffusionLogic(ScriptedLoadableModuleLogic, CoreLogic):
    """Smoothing and registration of vessel models; usable without the GUI.

    The methods come from :class:`VesselDiffusionLib.logic.CoreLogic`:
    ``smooth``, ``register`` and ``apply_transform``, each also split into the
    steps that the Widget runs on and off the GUI thread.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        CoreLogic.__init__(self)

    def getParameterNode(self):
        """Return the module's parameter node, typed."""
        return VesselDiffusionParameterNode(super().getParameterNode())


#
# VesselDiffusionTest
#


class VesselDiffusionTest(ScriptedLoadableModuleTest):
    """Smoothing and registration on the aorta sample, inside Slicer.

    Needs the module's Python packages (click Apply once, or install them with
    pip) and an internet connection for the first download of the sample.
    """

    def setUp(self):
        """Start from an empty scene."""
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Run all tests."""
        self.setUp()
        self.test_smoothing_keeps_volume()
        self.setUp()
        self.test_registration_transform_matches()

    def _loadAorta(self):
        import SampleData

        registerSampleData()
        self.delayDisplay("Loading the aorta sample")
        return SampleData.downloadSample(AORTA_SAMPLE_NAME)

    @staticmethod
    def _addModelCopy(polyData, name):
        copy = vtk.vtkPolyData()
        copy.DeepCopy(polyData)
        node = slicer.modules.models.logic().AddModel(copy)
        node.SetName(name)
        return node

    def test_smoothing_keeps_volume(self):
        """Smoothing writes a new model and keeps the enclosed volume within 0.5%."""
        import numpy as np

        aorta = self._loadAorta()
        pointsBefore = slicer.util.arrayFromModelPoints(aorta).copy()

        self.delayDisplay("Smoothing at sigma = 2 mm")
        result = VesselDiffusionLogic().smooth(aorta, SmoothingSettings(sigma=2.0))

        self.assertIsNot(result.output_node, aorta)
        np.testing.assert_array_equal(slicer.util.arrayFromModelPoints(aorta), pointsBefore)
        self.assertLess(abs(result.volume_change), 0.005)
        self.assertEqual(result.flipped_triangles, 0)
        moved = np.linalg.norm(slicer.util.arrayFromModelPoints(result.output_node) - pointsBefore, axis=1)
        self.assertGreater(moved.mean(), 0.01)
        self.delayDisplay(result.summary())

    def test_registration_transform_matches(self):
        """A short registration whose hardened transform moves a model as the registration did."""
        import numpy as np

        aorta = self._loadAorta()
        decimate = vtk.vtkQuadricDecimation()
        decimate.SetInputData(aorta.GetPolyData())
        decimate.SetTargetReduction(0.97)
        decimate.Update()
        moving = self._addModelCopy(decimate.GetOutput(), "Aorta moving")

        # The fixed model is the moving one bent by a known smooth displacement, so
        # its vertices correspond and the fast point-to-point loss applies.
        fixed = self._addModelCopy(decimate.GetOutput(), "Aorta fixed")
        points = slicer.util.arrayFromModelPoints(fixed)
        center = points.mean(axis=0)
        points[:] = points + 2.0 * np.sin((points - center) / 40.0)
        slicer.util.arrayFromModelPointsModified(fixed)

        self.delayDisplay("Registering (5 iterations)")
        logic = VesselDiffusionLogic()
        settings = RegistrationSettings(
            sigma=10.0, iterations=5, n_steps=4, loss="point-to-point", grid_spacing=4.0, margin=5.0
        )
        result = logic.register(moving, fixed, settings)
        self.assertLess(result.mean_distance[1], result.mean_distance[0])

        copy = self._addModelCopy(decimate.GetOutput(), "Aorta copy")
        logic.apply_transform(result.transform_node, copy, harden=True)
        error = np.linalg.norm(
            slicer.util.arrayFromModelPoints(copy) - slicer.util.arrayFromModelPoints(result.registered_node), axis=1
        )
        logging.info("Hardened transform error: max %.4f mm", error.max())
        self.assertLess(error.max(), 0.1)
        self.delayDisplay(result.summary())
