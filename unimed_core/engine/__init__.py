"""What the MONAI bundle's configs wire around MONAI's engines (STYLE.md §7: configs stay thin).

- :mod:`.inputs`: the bundle folder, the volumes to run on, ``LoadVolumed``;
- :mod:`.inference`: ``PredictionIteration``, ``WritePredictiond``, ``InferenceSummary``, ``NetInOut``;
- :mod:`.validation`: ``CaseIteration``, ``UniMedMetric`` (Dice / mAP / AUC), ``WriteEvaluationReport``;
- :mod:`.training`: ``SetDatasetEpoch``, ``WeightHashes``, ``rank_handlers``;
- :mod:`.datasets`: ``training_dataset`` (in memory, or cached on disk for ``highres.json``);
- :mod:`.step_times`: ``StepTimes`` (data-wait and compute seconds per training step);
- :mod:`.checkpoints`: ``AtomicCheckpointSaver`` (checkpoints that survive a kill), ``latest_checkpoint``;
- :mod:`.fewshot`: ``fewshot_splits`` (a user's class names mapped onto the vocabulary);
- :mod:`.sample`: the shipped sample volume.
"""

from unimed_core.engine.checkpoints import AtomicCheckpointSaver, latest_checkpoint
from unimed_core.engine.datasets import training_dataset
from unimed_core.engine.fewshot import fewshot_splits, map_class_name
from unimed_core.engine.inference import (
    InferenceSummary,
    NetInOut,
    PredictionIteration,
    WritePredictiond,
    segment_volumes_ml,
)
from unimed_core.engine.inputs import IMAGE_SUFFIXES, LoadVolumed, bundle_root, inference_items
from unimed_core.engine.sample import SAMPLE_NAME, make_sample
from unimed_core.engine.step_times import StepTimes, summarise_steps
from unimed_core.engine.training import (
    EVERY_RANK,
    SetDatasetEpoch,
    WeightHashes,
    attach_handlers,
    rank_handlers,
)
from unimed_core.engine.validation import CaseIteration, UniMedMetric, WriteEvaluationReport

__all__ = [
    "IMAGE_SUFFIXES",
    "EVERY_RANK",
    "SAMPLE_NAME",
    "AtomicCheckpointSaver",
    "CaseIteration",
    "InferenceSummary",
    "LoadVolumed",
    "NetInOut",
    "PredictionIteration",
    "SetDatasetEpoch",
    "StepTimes",
    "UniMedMetric",
    "WeightHashes",
    "WriteEvaluationReport",
    "WritePredictiond",
    "attach_handlers",
    "bundle_root",
    "fewshot_splits",
    "inference_items",
    "latest_checkpoint",
    "make_sample",
    "map_class_name",
    "rank_handlers",
    "segment_volumes_ml",
    "summarise_steps",
    "training_dataset",
]
