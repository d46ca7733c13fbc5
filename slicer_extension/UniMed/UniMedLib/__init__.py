"""UniMed's Slicer-free library: build and run the inference command, read its outputs, compute findings.

Imports neither ``slicer`` nor ``qt`` (STYLE.md §9), so all of it is tested in plain Python.
"""

from .command import DEVICES, TASKS, InferenceRequest, build_command
from .findings import COLUMNS, Finding, box_voxel_mask, findings_rows, overlapping_segment
from .process import InferenceCancelled, InferenceFailed, ProcessResult, parse_progress, run_command
from .remote import remote_infer, request_params
from .results import Detection, InferenceOutputs, LabelEntry, label_entries, read_label_array, read_outputs

__all__ = [
    "COLUMNS",
    "DEVICES",
    "TASKS",
    "Detection",
    "Finding",
    "InferenceCancelled",
    "InferenceFailed",
    "InferenceOutputs",
    "InferenceRequest",
    "LabelEntry",
    "ProcessResult",
    "box_voxel_mask",
    "build_command",
    "findings_rows",
    "label_entries",
    "overlapping_segment",
    "parse_progress",
    "read_label_array",
    "read_outputs",
    "remote_infer",
    "request_params",
    "run_command",
]
