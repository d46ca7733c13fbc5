"""UniMed for 3D Slicer: segment, detect and classify a volume; segment what a click points at.

Three layers (STYLE.md §9, after SlicerMONAIAuto3DSeg):

- ``UniMedWidget``: the panel, kept in sync with a parameter node; it asks before installing dependencies;
- ``UniMedLogic``: volume node → temporary file → ``unimed-infer`` subprocess (or a MONAI Label server) →
  segmentation, ROI and table nodes with the input's geometry; progress through callbacks, never dialogs;
- ``UniMedLib``: everything computable without ``slicer`` and ``qt`` (command, process, outputs, findings).

torch never loads into Slicer's process: the model runs in the subprocess.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import slicer
import vtk

try:
    import ctk  # noqa: F401  (the .ui file's widgets)
    import qt
    from slicer.ScriptedLoadableModule import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
    )
    from slicer.util import VTKObservationMixin

    HAVE_GUI = True
except ImportError:  # PyPI ``slicer-core``: MRML without Qt. The Logic stays importable and testable.
    import unittest

    HAVE_GUI = False

    class ScriptedLoadableModule:  # noqa: D101
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleLogic:  # noqa: D101
        def __init__(self, parent=None):
            pass

    class ScriptedLoadableModuleWidget:  # noqa: D101
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleTest(unittest.TestCase):  # noqa: D101
        def delayDisplay(self, message, msec=0):
            logging.info(message)

    class VTKObservationMixin:  # noqa: D101
        def __init__(self):
            pass


from UniMedLib import (
    COLUMNS,
    TASKS,
    Finding,
    InferenceOutputs,
    InferenceRequest,
    LabelEntry,
    build_command,
    findings_rows,
    label_entries,
    read_outputs,
    remote_infer,
    run_command,
)
from UniMedLib.dependencies import missing_modules, pip_arguments

__all__ = ["UniMed", "UniMedWidget", "UniMedLogic", "UniMedResult", "UniMedTest", "HAVE_GUI"]

ProgressCallback = Callable[[float, str], None]
PROMPT_SEGMENT_COLOR = (1.0, 0.85, 0.1)
ROI_ATTRIBUTE = "UniMed.InputVolumeID"


# ----------------------------------------------------------------------------------------------- module
class UniMed(ScriptedLoadableModule):
    """Module description shown in Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        if parent is None:
            return
        self.parent.title = "UniMed"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["UniMed team"]
        self.parent.helpText = (
            "Segment, detect and classify findings in a CT or MR volume with one UniMed model, or segment the "
            "structure under clicked points or inside a box (a markups ROI). The model runs in a separate process "
            "(or on a MONAI Label server). Results on a scan unlike the training data come with warnings, in the "
            "findings table and the status line."
        )
        self.parent.acknowledgementText = "Built on MONAI and 3D Slicer. Research use only."


# ----------------------------------------------------------------------------------------------- parameters
UniMedParameterNode = None  # the panel's parameter node class; needs Qt (defined below when present)
if HAVE_GUI:
    from slicer.parameterNodeWrapper import parameterNodeWrapper

    @parameterNodeWrapper
    class UniMedParameterNode:
        """Everything the panel sets; the Widget's GUI is synced with it."""

        inputVolume: slicer.vtkMRMLScalarVolumeNode
        segment: bool = True
        detect: bool = True
        classify: bool = True
        classes: str = ""  # comma separated subset of label-map names; empty: all
        positivePoints: slicer.vtkMRMLMarkupsFiducialNode
        negativePoints: slicer.vtkMRMLMarkupsFiducialNode
        promptRoi: slicer.vtkMRMLMarkupsROINode
        useGPU: bool = False
        useServer: bool = False
        serverUrl: str = "http://127.0.0.1:8000"
        outputSegmentation: slicer.vtkMRMLSegmentationNode
        findingsTable: slicer.vtkMRMLTableNode


# ----------------------------------------------------------------------------------------------- widget
class UniMedWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: thin, it only moves values between the GUI, the parameter node and the Logic."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._guiConnections = None
        self._cancelRequested = False
        self._result = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/UniMed.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = UniMedLogic()
        self.ui.positivePlaceWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.negativePlaceWidget.setMRMLScene(slicer.mrmlScene)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.segmentClicksButton.connect("clicked(bool)", self.onSegmentClicksButton)
        self.ui.segmentBoxButton.connect("clicked(bool)", self.onSegmentBoxButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.installButton.connect("clicked(bool)", self.onInstallButton)
        self.ui.findingsTableView.connect("selectionChanged()", self.onFindingSelected)
        self.ui.progressBar.hide()
        self.ui.cancelButton.enabled = False
        self._fillClassList()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._guiConnections)
            self._guiConnections = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first
        for attr, name in (("positivePoints", "UniMed positive"), ("negativePoints", "UniMed negative")):
            if not getattr(self._parameterNode, attr):
                node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
                node.CreateDefaultDisplayNodes()
                node.GetDisplayNode().SetSelectedColor((0.1, 0.9, 0.1) if attr == "positivePoints" else (0.9, 0.1, 0.1))
                setattr(self._parameterNode, attr, node)
        self.ui.positivePlaceWidget.setCurrentNode(self._parameterNode.positivePoints)
        self.ui.negativePlaceWidget.setCurrentNode(self._parameterNode.negativePoints)

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._guiConnections)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._guiConnections = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()

    def _updateButtons(self, caller=None, event=None) -> None:
        ready = bool(self._parameterNode and self._parameterNode.inputVolume)
        self.ui.applyButton.enabled = ready
        self.ui.segmentClicksButton.enabled = ready
        self.ui.segmentBoxButton.enabled = ready and bool(self._parameterNode.promptRoi)
        self.ui.installButton.visible = bool(missing_modules())

    def _fillClassList(self) -> None:
        """The class subset list, from the label map (empty until the dependencies are installed)."""
        self.ui.classList.clear()
        try:
            names = [entry.name for entry in self.logic.labelEntries()]
        except (ImportError, ValueError):  # unimed_core not installed yet, or no bundle metadata
            return
        for name in names:
            item = qt.QListWidgetItem(name)
            item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
            item.setCheckState(qt.Qt.Unchecked)
            self.ui.classList.addItem(item)

    def _checkedClasses(self) -> list[str] | None:
        items = [self.ui.classList.item(i) for i in range(self.ui.classList.count)]
        checked = [item.text() for item in items if item.checkState() == qt.Qt.Checked]
        return checked or None

    # -- dependencies ---------------------------------------------------------------------------------------
    def ensureDependencies(self) -> bool:
        """Ask, then install what is missing into Slicer's Python (only here: never inside the Logic)."""
        missing = missing_modules()
        if not missing:
            return True
        if not slicer.util.confirmOkCancelDisplay(
            f"UniMed needs these Python packages: {', '.join(missing)}. Install them now? "
            "This downloads several hundred MB and can take a few minutes."
        ):
            return False
        with slicer.util.tryWithErrorDisplay("Installing UniMed's dependencies failed.", waitCursor=True):
            if "torch" in missing:
                try:  # the PyTorch extension picks the CUDA build that matches this computer
                    import PyTorchUtils

                    PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)
                    missing.remove("torch")
                except ImportError:
                    pass
            slicer.util.pip_install(pip_arguments(missing))
            self._fillClassList()
        return not missing_modules()

    def onInstallButton(self) -> None:
        self.ensureDependencies()
        self._updateButtons()

    # -- running ---------------------------------------------------------------------------------------------
    def onApplyButton(self) -> None:
        tasks = [t for t in TASKS if getattr(self._parameterNode, t)]
        self._run(tasks=tasks, prompted=False)

    def onSegmentClicksButton(self) -> None:
        self._run(tasks=["segment"], prompted=True)

    def onSegmentBoxButton(self) -> None:
        self._run(tasks=["segment"], prompted=True, box=True)

    def onCancelButton(self) -> None:
        self._cancelRequested = True

    def _shouldCancel(self) -> bool:
        slicer.app.processEvents()  # keeps the panel (and its Cancel button) alive while the subprocess runs
        return self._cancelRequested

    def _onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = message[-120:]
        slicer.app.processEvents()

    def _run(self, tasks: Sequence[str], prompted: bool, box: bool = False) -> None:
        p = self._parameterNode
        if not p.useServer and not self.ensureDependencies():
            return
        self._cancelRequested = False
        self.ui.progressBar.value = 0
        self.ui.progressBar.show()
        self.ui.applyButton.enabled = self.ui.segmentClicksButton.enabled = self.ui.segmentBoxButton.enabled = False
        self.ui.cancelButton.enabled = True
        try:
            with slicer.util.tryWithErrorDisplay("UniMed failed.", waitCursor=True):
                positive = negative = roi = None
                if box:
                    roi = p.promptRoi
                    if roi is None:
                        raise ValueError("Choose or draw a box (ROI) first.")
                elif prompted:
                    positive = slicer.util.arrayFromMarkupsControlPoints(p.positivePoints, world=True)
                    negative = slicer.util.arrayFromMarkupsControlPoints(p.negativePoints, world=True)
                    if len(positive) == 0:
                        raise ValueError("Place at least one positive point first.")
                self._result = self.logic.process(
                    p.inputVolume,
                    tasks=tasks,
                    classes=self._checkedClasses(),
                    positivePoints=positive,
                    negativePoints=negative,
                    roi=roi,
                    device="cuda" if p.useGPU else "cpu",
                    serverUrl=p.serverUrl if p.useServer else "",
                    outputSegmentation=p.outputSegmentation,
                    findingsTable=p.findingsTable,
                    progressCallback=self._onProgress,
                    logCallback=logging.info,
                    shouldCancel=self._shouldCancel,
                )
                p.outputSegmentation = self._result.segmentationNode
                if self._result.tableNode is not None:
                    p.findingsTable = self._result.tableNode
                    self.ui.findingsTableView.setMRMLTableNode(self._result.tableNode)
                self.ui.statusLabel.text = self._result.statusMessage
        finally:
            self.ui.progressBar.hide()
            self.ui.cancelButton.enabled = False
            self._updateButtons()

    def onFindingSelected(self) -> None:
        table = self._parameterNode.findingsTable if self._parameterNode else None
        rows = self.ui.findingsTableView.selectedMRMLTableRows()
        if table is not None and rows:
            self.logic.centerViewsOnRow(table, rows[0])


# ----------------------------------------------------------------------------------------------- logic
@dataclass
class UniMedResult:
    """Nodes made by one run, plus what they were made from.

    Attributes:
        segmentationNode: segments named and coloured from the label map (None if nothing to segment).
        roiNodes: one ``vtkMRMLMarkupsROINode`` per detection, named "label score".
        tableNode: findings table (None in prompted mode).
        findings: the table's rows.
        outputs: the parsed inference outputs.
        outputDir: where the outputs were written (deleted after loading unless ``keepFiles``).
        promptSegmentId: id of the segment made from click or box prompts (prompted mode).
        warnings: why the scan looks unlike the training data (``summary.json``); the results are loaded anyway.
    """

    segmentationNode: object = None
    roiNodes: list = field(default_factory=list)
    tableNode: object = None
    findings: list[Finding] = field(default_factory=list)
    outputs: InferenceOutputs | None = None
    outputDir: Path | None = None
    promptSegmentId: str = ""
    warnings: list = field(default_factory=list)

    @property
    def statusMessage(self) -> str:
        """ "Done", or the warnings for the status line."""
        if not self.warnings:
            return "Done"
        return "Done, with warnings: " + " | ".join(f"{w['signal']}: {w['message']}" for w in self.warnings)


def defaultPython() -> str:
    """The interpreter that runs the model: Slicer's ``PythonSlicer`` launcher inside Slicer."""
    return (shutil.which("PythonSlicer") if HAVE_GUI else None) or sys.executable


class UniMedLogic(ScriptedLoadableModuleLogic):
    """Nodes → arrays/files → UniMed → nodes, with the input's geometry. Reports through callbacks only.

    Args:
        python: interpreter with ``unimed_core`` installed (default :func:`defaultPython`).
        weights: weight file for local inference (default: the installed bundle's ``models/model.pt``).
        metadata: bundle ``metadata.json`` with the label map (default: the installed bundle's).

    Example (Slicer's Python console)::

        logic = UniMedLogic()
        result = logic.process(getNode("CTChest"), progressCallback=lambda f, m: print(f, m))
    """

    def __init__(self, python: str | None = None, weights: str | None = None, metadata: str | None = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.python = python or defaultPython()
        self.weights = weights
        self.metadata = metadata
        self._entries: list[LabelEntry] | None = None

    def getParameterNode(self):
        return UniMedParameterNode(super().getParameterNode())

    def labelEntries(self) -> list[LabelEntry]:
        """Label id, name and colour of every foreground label (from the one label map)."""
        if self._entries is None:
            self._entries = label_entries(self.metadata)
        return self._entries

    # -- the whole path ---------------------------------------------------------------------------------------
    def process(
        self,
        inputVolume,
        tasks: Sequence[str] = TASKS,
        classes: Sequence[str] | None = None,
        positivePoints=None,
        negativePoints=None,
        roi=None,
        device: str = "auto",
        serverUrl: str = "",
        outputSegmentation=None,
        findingsTable=None,
        progressCallback: ProgressCallback | None = None,
        logCallback: Callable[[str], None] | None = None,
        shouldCancel: Callable[[], bool] | None = None,
        keepFiles: bool = False,
    ) -> UniMedResult:
        """Run UniMed on ``inputVolume`` and load the results into nodes.

        Args:
            inputVolume: a scalar volume node (any IJK-to-RAS, oblique included).
            tasks: any of "segment", "detect", "classify" (which results to load).
            classes: only these label-map classes (None: all).
            positivePoints: click prompts, world RAS (N, 3) array or a markups node; prompted mode when given.
            negativePoints: negative clicks, likewise.
            roi: a box prompt: a ``vtkMRMLMarkupsROINode`` (its world bounds) or ``(x1, y1, z1, x2, y2, z2)``
                world RAS mm; prompted mode, the structure inside it becomes a segment. Not with clicks.
            device: "auto", "cpu", "cuda".
            serverUrl: a MONAI Label server instead of the local subprocess.
            outputSegmentation: segmentation node to fill (new one if None).
            findingsTable: table node to fill (new one if None).
            progressCallback: ``(fraction, message)``.
            logCallback: each line of the subprocess output.
            shouldCancel: polled while the model runs; True cancels (raises ``InferenceCancelled``).
            keepFiles: keep the temporary input and outputs (``result.outputDir``).
        """
        if inputVolume is None or not inputVolume.IsA("vtkMRMLScalarVolumeNode"):
            raise ValueError("inputVolume must be a scalar volume node")
        if inputVolume.GetImageData() is None:
            raise ValueError(f"{inputVolume.GetName()}: the volume has no image data")
        unknown = set(tasks) - set(TASKS)
        if unknown or not tasks:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {list(tasks)}")
        report = progressCallback or (lambda fraction, message: None)
        positive = self._pointsInVolumeSpace(inputVolume, positivePoints)
        negative = self._pointsInVolumeSpace(inputVolume, negativePoints)
        box = self._boxInVolumeSpace(inputVolume, roi)
        workDir = Path(tempfile.mkdtemp(prefix="UniMed-", dir=self._tempRoot()))
        try:
            report(0.0, "Writing the input volume")
            name = "input"
            inputPath = workDir / f"{name}.nrrd"
            self.writeVolume(inputVolume, inputPath)
            request = InferenceRequest(
                inputPath,
                workDir / "out",
                weights=self.weights,
                device=device,
                classes=tuple(classes) if classes else None,
                positive_points=[tuple(p) for p in positive],
                negative_points=[tuple(p) for p in negative],
                box=box,
                python=self.python,
            )
            report(0.05, "Running UniMed")
            outputs = self.runInference(request, name, serverUrl, report, logCallback, shouldCancel)
            report(0.9, "Loading the results")
            result = self.loadResults(outputs, inputVolume, tasks, request.prompted, outputSegmentation, findingsTable)
            result.outputDir = workDir if keepFiles else None
            report(1.0, result.statusMessage)
            return result
        finally:
            if not keepFiles:
                shutil.rmtree(workDir, ignore_errors=True)

    def runInference(
        self,
        request: InferenceRequest,
        name: str,
        serverUrl: str = "",
        progressCallback: ProgressCallback | None = None,
        logCallback: Callable[[str], None] | None = None,
        shouldCancel: Callable[[], bool] | None = None,
    ) -> InferenceOutputs:
        """Run ``request`` in the subprocess (or on ``serverUrl``) and read its outputs."""
        if serverUrl:
            return remote_infer(request, name, serverUrl)
        report = progressCallback or (lambda fraction, message: None)
        cmd = build_command(request)
        logging.debug("UniMed command: %s", cmd)
        env = slicer.util.startupEnvironment() if HAVE_GUI else None
        run_command(
            cmd,
            progress_callback=lambda fraction, line: report(0.05 + 0.85 * fraction, line),
            log_callback=logCallback,
            should_cancel=shouldCancel,
            env=env,
        )
        return read_outputs(request.out_dir, name)

    # -- nodes → files ----------------------------------------------------------------------------------------
    def _tempRoot(self) -> str | None:
        return slicer.app.temporaryPath if HAVE_GUI else None

    @staticmethod
    def writeVolume(volumeNode, path: str | Path) -> Path:
        """Write the node's voxels and IJK-to-RAS (parent transforms are not applied) with Slicer's writer."""
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        storage.SetUseCompression(False)
        if not storage.WriteData(volumeNode):
            raise OSError(f"cannot write {volumeNode.GetName()} to {path}")
        return Path(path)

    @staticmethod
    def _pointsInVolumeSpace(volumeNode, points) -> np.ndarray:
        """World RAS points → the volume's local RAS (differs only when the volume is under a transform)."""
        if points is None:
            return np.zeros((0, 3))
        if hasattr(points, "IsA") and points.IsA("vtkMRMLMarkupsNode"):
            points = slicer.util.arrayFromMarkupsControlPoints(points, world=True)
        points = np.asarray(points, dtype=np.float64)
        if points.size and (points.ndim > 2 or points.shape[-1] != 3 or not np.isfinite(points).all()):
            raise ValueError(f"points must be (N, 3) finite RAS millimetres, got shape {points.shape}")
        points = points.reshape(-1, 3)
        parent = volumeNode.GetParentTransformNode()
        if parent is None or len(points) == 0:
            return points
        worldToLocal = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, parent, worldToLocal)
        return np.array([worldToLocal.TransformPoint(p) for p in points])

    @classmethod
    def _boxInVolumeSpace(cls, volumeNode, roi) -> tuple[float, ...] | None:
        """A box prompt (ROI node or six world RAS numbers) → ``(x1, y1, z1, x2, y2, z2)`` in the volume's local RAS
        (the bounds of its corners there, when the volume is under a transform); None without a box."""
        if roi is None:
            return None
        if hasattr(roi, "IsA") and roi.IsA("vtkMRMLMarkupsROINode"):
            bounds = [0.0] * 6
            roi.GetRASBounds(bounds)  # world, axis-aligned: x_min, x_max, y_min, y_max, z_min, z_max
            box = np.array([bounds[0], bounds[2], bounds[4], bounds[1], bounds[3], bounds[5]])
        else:
            box = np.asarray(roi, dtype=np.float64).reshape(-1)
        if box.shape != (6,) or not np.isfinite(box).all() or np.any(box[3:] <= box[:3]):
            raise ValueError(f"the box must be x1, y1, z1, x2, y2, z2 RAS mm with an extent, got {box.tolist()}")
        corners = np.array([[box[3 * a + i] for i, a in enumerate(bits)] for bits in np.ndindex(2, 2, 2)])
        local = cls._pointsInVolumeSpace(volumeNode, corners)
        return tuple(float(v) for v in (*local.min(0), *local.max(0)))

    # -- files → nodes ----------------------------------------------------------------------------------------
    def loadResults(
        self,
        outputs: InferenceOutputs,
        inputVolume,
        tasks: Sequence[str] = TASKS,
        prompted: bool = False,
        outputSegmentation=None,
        findingsTable=None,
    ) -> UniMedResult:
        """Turn the outputs into nodes placed like ``inputVolume`` (same grid, same parent transform)."""
        scene = slicer.mrmlScene
        result = UniMedResult(outputs=outputs, warnings=list(outputs.warnings))
        entries = {e.value: e for e in self.labelEntries()}
        segmentation = outputSegmentation or scene.AddNewNodeByClass(
            "vtkMRMLSegmentationNode", f"{inputVolume.GetName()} UniMed"
        )
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(inputVolume)
        segmentation.SetAndObserveTransformNodeID(inputVolume.GetTransformNodeID())
        if segmentation.GetDisplayNode() is None:
            segmentation.CreateDefaultDisplayNodes()
        result.segmentationNode = segmentation
        labels = affine = None
        if prompted:
            if outputs.prompt_path is None:
                raise ValueError("the prompted run returned no mask")
            count = sum(
                segmentation.GetSegmentation().GetNthSegment(i).GetName().startswith("UniMed prompt")
                for i in range(segmentation.GetSegmentation().GetNumberOfSegments())
            )
            prompt = LabelEntry(1, f"UniMed prompt {count + 1}", PROMPT_SEGMENT_COLOR)
            ids = self.importLabelVolume(outputs.prompt_path, segmentation, {1: prompt}, replace=False)
            result.promptSegmentId = ids.get(1, "")
            return result
        if outputs.labels_path is not None:
            labelNode = self.readLabelVolume(outputs.labels_path)
            try:
                labels = slicer.util.arrayFromVolume(labelNode).transpose(2, 1, 0)  # KJI → IJK
                affine = self._ijkToRas(labelNode)
                if "segment" in tasks:
                    self._importLabelNode(labelNode, segmentation, entries, replace=True)
            finally:
                scene.RemoveNode(labelNode)
        if "detect" in tasks:
            result.roiNodes = self.createRoiNodes(outputs.detections, inputVolume)
        detections = outputs.detections if "detect" in tasks else []
        probabilities = outputs.class_probabilities if "classify" in tasks else {}
        names = {value: entry.name for value, entry in entries.items()}
        result.findings = findings_rows(
            detections, probabilities, labels, affine, names if labels is not None else None, outputs.warnings
        )
        if "detect" in tasks or "classify" in tasks:
            result.tableNode = self.createFindingsTable(result.findings, result.roiNodes, findingsTable)
        return result

    @staticmethod
    def _ijkToRas(volumeNode) -> np.ndarray:
        matrix = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(matrix)
        return slicer.util.arrayFromVTKMatrix(matrix)

    @staticmethod
    def readLabelVolume(path: str | Path):
        """A temporary label map volume node read with Slicer's own reader (its geometry is Slicer's)."""
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "UniMed labels")
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        if not storage.ReadData(node):
            slicer.mrmlScene.RemoveNode(node)
            raise OSError(f"cannot read the label volume {path}")
        return node

    def importLabelVolume(self, path, segmentation, entries: dict[int, LabelEntry], replace: bool) -> dict[int, str]:
        """Read a label file and add its labels as segments; returns label value → segment id."""
        labelNode = self.readLabelVolume(path)
        try:
            return self._importLabelNode(labelNode, segmentation, entries, replace)
        finally:
            slicer.mrmlScene.RemoveNode(labelNode)

    @staticmethod
    def _importLabelNode(labelNode, segmentation, entries: dict[int, LabelEntry], replace: bool) -> dict[int, str]:
        """Segments named and coloured by ``entries`` through a colour table, as Slicer's import does it."""
        scene = slicer.mrmlScene
        present = {int(v) for v in np.unique(slicer.util.arrayFromVolume(labelNode)) if v > 0}
        unknown = present - set(entries)
        if unknown:
            raise ValueError(f"the label volume has ids {sorted(unknown)} that the label map does not name")
        segs = segmentation.GetSegmentation()
        if replace:  # a new run replaces the segments of the previous one, not the user's own
            for entry in entries.values():
                existing = segs.GetSegmentIdBySegmentName(entry.name)
                if existing:
                    segs.RemoveSegment(existing)
        if not present:
            return {}
        colors = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "UniMed colors")
        try:
            colors.SetTypeToUser()
            colors.SetNumberOfColors(max(present) + 1)
            colors.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
            for value in range(1, max(present) + 1):
                entry = entries.get(value, LabelEntry(value, f"label {value}", (0.5, 0.5, 0.5)))
                colors.SetColor(value, entry.name, *entry.color, 1.0)
            labelNode.CreateDefaultDisplayNodes()
            labelNode.GetDisplayNode().SetAndObserveColorNodeID(colors.GetID())
            before = {segs.GetNthSegmentID(i) for i in range(segs.GetNumberOfSegments())}
            if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
                labelNode, segmentation, ""
            ):
                raise RuntimeError("importing the label volume into the segmentation failed")
        finally:
            scene.RemoveNode(colors)
        ids = {}
        for i in range(segs.GetNumberOfSegments()):
            segmentId = segs.GetNthSegmentID(i)
            if segmentId in before:
                continue
            segment = segs.GetSegment(segmentId)
            value = next(v for v in present if entries[v].name == segment.GetName())
            segment.SetColor(*entries[value].color)  # exact colour (the table quantises to 8 bits)
            ids[value] = segmentId
        return ids

    @staticmethod
    def createRoiNodes(detections, inputVolume) -> list:
        """One axis-aligned ROI per detection, named "label score", replacing those of an earlier run."""
        scene = slicer.mrmlScene
        for old in list(slicer.util.getNodesByClass("vtkMRMLMarkupsROINode")):
            if old.GetAttribute(ROI_ATTRIBUTE) == inputVolume.GetID():
                scene.RemoveNode(old)
        nodes = []
        entries = None
        for det in detections:
            roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", det.name)
            roi.SetCenter(*det.center)
            roi.SetSize(*det.size)
            roi.SetAttribute(ROI_ATTRIBUTE, inputVolume.GetID())
            roi.SetAttribute("UniMed.Label", det.label)
            roi.SetAttribute("UniMed.Score", repr(det.score))
            roi.SetAndObserveTransformNodeID(inputVolume.GetTransformNodeID())
            roi.CreateDefaultDisplayNodes()
            if entries is None:
                try:
                    entries = {e.name: e.color for e in label_entries()}
                except (ImportError, ValueError):
                    entries = {}
            if roi.GetDisplayNode() is not None and det.label in entries:
                roi.GetDisplayNode().SetSelectedColor(entries[det.label])
            nodes.append(roi)
        return nodes

    @staticmethod
    def createFindingsTable(findings: Sequence[Finding], roiNodes: Sequence, tableNode=None):
        """Image classes with probabilities, then detections with score, size, overlapping segment and ROI id."""
        table = tableNode or slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "UniMed findings")
        table.RemoveAllColumns()
        columns = (*COLUMNS, "ROI")
        for name in columns:
            column = vtk.vtkDoubleArray() if name == "Score" else vtk.vtkStringArray()
            column.SetName(name)
            table.AddColumn(column)
        rois = iter(roiNodes)
        for finding in findings:
            row = table.AddEmptyRow()
            roi = next(rois, None) if finding.kind == "detection" else None
            cells = (*finding.cells(), roi.GetID() if roi is not None else "")
            for col, text in enumerate(cells):
                if columns[col] == "Score":
                    table.GetTable().SetValue(row, col, vtk.vtkVariant(finding.score))
                else:
                    table.SetCellText(row, col, text)
        table.Modified()
        return table

    @staticmethod
    def centerViewsOnRow(tableNode, row: int) -> bool:
        """Centre the slice views on the ROI of a detection row (GUI only); False for rows without a place."""
        column = tableNode.GetColumnIndex("ROI")
        if column < 0 or not 0 <= row < tableNode.GetNumberOfRows():
            return False
        roi = slicer.mrmlScene.GetNodeByID(tableNode.GetCellText(row, column))
        if roi is None:
            return False
        center = [0.0, 0.0, 0.0]
        roi.GetCenterWorld(center)
        slicer.modules.markups.logic().JumpSlicesToLocation(*center, True)
        return True


# ----------------------------------------------------------------------------------------------- test
class UniMedTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Reload and Test, or ctest): the same path as the panel, on an oblique volume.

    ``weights`` may point at a weight file; by default the installed bundle's weights are used.
    """

    weights: str | None = None

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_UniMedObliqueEndToEnd()

    def _obliqueVolume(self):
        """A 48 x 48 x 40 volume with a bright ball, rotated 30 degrees about two axes."""
        shape = (40, 48, 48)  # KJI
        k, j, i = np.indices(shape)
        ball = (i - 24) ** 2 + (j - 24) ** 2 + ((k - 20) * 1.2) ** 2 < 10**2
        array = np.where(ball, 200.0, -100.0).astype(np.float32) + np.random.default_rng(0).normal(0, 5, shape)
        volume = slicer.util.addVolumeFromArray(array.astype(np.float32), name="UniMedTestVolume")
        c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
        rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
        ijkToRas = np.eye(4)
        ijkToRas[:3, :3] = rotation @ np.diag([2.5, 2.5, 3.0])
        ijkToRas[:3, 3] = [-60.0, -40.0, -50.0]
        volume.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijkToRas))
        return volume, ijkToRas

    def test_UniMedObliqueEndToEnd(self) -> None:
        self.delayDisplay("UniMed: automatic run on an oblique volume")
        volume, ijkToRas = self._obliqueVolume()
        logic = UniMedLogic(weights=self.weights)
        progress = []
        result = logic.process(volume, device="cpu", progressCallback=lambda f, m: progress.append(f))
        self.assertEqual(progress[-1], 1.0)
        self.assertTrue(all(a <= b for a, b in zip(progress, progress[1:])))
        names = {entry.name for entry in logic.labelEntries()}
        segs = result.segmentationNode.GetSegmentation()
        for index in range(segs.GetNumberOfSegments()):
            segmentId = segs.GetNthSegmentID(index)
            self.assertIn(segs.GetSegment(segmentId).GetName(), names)
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(result.segmentationNode, segmentId, volume)
            self.assertEqual(mask.shape, slicer.util.arrayFromVolume(volume).shape)
        self.assertEqual(len(result.roiNodes), len(result.outputs.detections))
        self.assertEqual(result.tableNode.GetNumberOfRows(), len(result.findings))
        for roi, det in zip(result.roiNodes, result.outputs.detections):
            self.assertTrue(np.allclose(roi.GetCenter(), det.center, atol=1e-3))
        self.delayDisplay("UniMed: click prompt inside the ball")
        centre = (ijkToRas @ np.array([24.0, 24.0, 20.0, 1.0]))[:3]
        clicked = logic.process(
            volume, positivePoints=[centre], device="cpu", outputSegmentation=result.segmentationNode
        )
        # Prompted mode: no findings, no ROIs. A ball is not anatomy the model knows, so the mask may be empty; when
        # it is not, it is a new segment named after the prompt (tests/slicer checks coverage on an abdomen).
        self.assertIsNone(clicked.tableNode)
        self.assertEqual(clicked.roiNodes, [])
        if clicked.promptSegmentId:
            segment = clicked.segmentationNode.GetSegmentation().GetSegment(clicked.promptSegmentId)
            self.assertTrue(segment.GetName().startswith("UniMed prompt"))
        self.delayDisplay("UniMed test passed")
