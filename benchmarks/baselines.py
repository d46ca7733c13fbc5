"""MONAI's single-task networks as baselines for UniMed: SegResNet, RetinaNet, DenseNet121.

Each baseline is MONAI's network (none is written here), configured as a MONAI bundle or tutorial configures it
for this kind of data; where this benchmark cannot (a CPU, a 6 mm grid, generated CT *and* MR studies) the
deviation and its reason are written next to the setting. Recipes (Project-MONAI/model-zoo unless said otherwise):

- SegResNet: ``models/brats_mri_segmentation/configs/train.json`` (``network_def``: blocks_down 1-2-2-4,
  blocks_up 1-1-1, init_filters 16, dropout 0.2), the loss of Project-MONAI/research-contributions
  ``auto3dseg/algorithm_templates/segresnet/configs/hyper_parameters.yaml`` (DiceCE with the background,
  squared_pred, smooth_nr 0, smooth_dr 1e-5, softmax). Deviation: init_filters 16 (the BraTS bundle's), not the
  32 of ``wholeBody_ct_segmentation`` and Auto3DSeg: 32 costs 9 CPU-s a step at 64^3 on one thread (16: 3 s).
- RetinaNet: ``models/lung_nodule_ct_detection/configs/train.json`` (``anchor_generator``, ``detector_ops``: the
  ATSS matcher with 4 candidates, the hard-negative sampler 64 / 0.3 / 20 / 16; 3 anchor shapes per level; three
  FPN levels, the finest at the backbone's stride 8 here). Deviations: a half-width ResNet-10 instead of ResNet-50
  (CPU), and anchors of 2-32 voxels (12-192 mm on the 6 mm grid: the lesions are 16-60 mm) where LUNA16's
  6-40 voxels at 0.7 mm cover nodules of 4-28 mm.
- DenseNet121: Project-MONAI/tutorials ``3d_classification/torch/densenet_training_array.py`` (DenseNet121,
  spatial_dims 3, one input channel). Deviation: one logit per image class with binary cross-entropy, since the
  image labels here are multi-label (a study may hold a cyst *and* a tumour), where the tutorial has one
  single-label softmax.

Every baseline is trained (``benchmarks.baseline_training``, with each recipe's optimiser, schedule and
augmentation) on the same datalist items, working grid and crops as UniMed
(``unimed_core.data.training_data.load_case`` / ``crop_case``), and evaluated through :class:`BaselinePredictor`,
which returns UniMed's :class:`Prediction` (labels on the input grid, boxes in world RAS mm), so that
``unimed_core.evaluation.evaluate`` scores both with the same functions. The input is UniMed's too
(``unimed_core.data.preprocess.prepare_image``: reoriented, resampled, intensities equalised onto [-1, 1]); the
recipes' CT windows (``ScaleIntensityRanged``) do not apply to studies that mix CT and MR.

A baseline sees only the annotation it can use: SegResNet the items with a mask, RetinaNet the items with
boxes, DenseNet121 the items with image labels (:data:`NEEDS`).

Example:
    >>> seg = build_segresnet(LabelMap.default())  # doctest: +SKIP
    >>> loss = baseline_loss("segmentation", seg, cases, LabelMap.default())  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNet, resnet_fpn_feature_extractor
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.networks.nets import DenseNet121, SegResNet, resnet
from monai.transforms import SpatialPad

from unimed_core.data.boxes import clip_boxes_to_shape, voxel_to_world_boxes
from unimed_core.data.image_io import Volume
from unimed_core.data.preprocess import PreparedVolume, prepare_image, restore_labels
from unimed_core.data.training_data import LoadedCase
from unimed_core.inference.predictor import Prediction
from unimed_core.label_map import LabelMap

__all__ = [
    "TASKS",
    "NEEDS",
    "build_segresnet",
    "build_retinanet",
    "build_densenet",
    "BUILDERS",
    "SEGMENTATION_LOSS",
    "items_for",
    "baseline_loss",
    "BaselinePredictor",
]

TASKS = ("segmentation", "detection", "classification")
# The datalist key a task's training item must carry: a baseline never sees annotation it cannot use.
NEEDS = {"segmentation": "label", "detection": "boxes", "classification": "class"}


def build_segresnet(label_map: LabelMap, init_filters: int = 16) -> SegResNet:
    """MONAI's SegResNet as the BraTS bundle sets it up, one output channel per mask id (background included).

    ``models/brats_mri_segmentation/configs/train.json`` ``network_def``: blocks_down (1, 2, 2, 4), blocks_up
    (1, 1, 1), init_filters 16, dropout 0.2 (``wholeBody_ct_segmentation`` is the same network at width 32).
    """
    return SegResNet(
        spatial_dims=3, in_channels=1, out_channels=label_map.num_mask_classes, init_filters=init_filters,
        blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), dropout_prob=0.2,
    )  # fmt: skip


def build_retinanet(label_map: LabelMap) -> RetinaNetDetector:
    """MONAI's RetinaNet on a ResNet-10 FPN, set up as ``lung_nodule_ct_detection``'s ``train.json`` sets it up.

    From the bundle: three anchor shapes per level on three FPN levels (two backbone levels and the FPN's max-pool
    level), ``set_atss_matcher(num_candidates=4, center_in_gt=False)`` and
    ``set_hard_negative_sampler(batch_size_per_image=64, positive_fraction=0.3, pool_size=20, min_neg=16)``.
    CPU-sized: ``resnet_fpn_feature_extractor`` fixes the FPN at 256 channels, so the heads run on the stride-8
    and stride-16 levels (layers 2 and 3; the bundle's stride-4 level costs 8x more) of a half-width ResNet-10
    (the bundle: ResNet-50). Anchors are 2-32 voxels (12-192 mm on the 6 mm grid; the lesions are 16-60 mm
    across), as the bundle's 6-40 voxels span its nodules.
    """
    backbone = resnet.ResNet(
        block=resnet.ResNetBlock, layers=[1, 1, 1, 1], block_inplanes=[32, 64, 128, 256], spatial_dims=3,
        n_input_channels=1, conv1_t_size=7, conv1_t_stride=(2, 2, 2),
    )  # fmt: skip
    returned_layers = [2, 3]
    features = resnet_fpn_feature_extractor(backbone, 3, returned_layers=returned_layers)
    anchors = AnchorGeneratorWithAnchorShape(
        feature_map_scales=[2**level for level in range(len(returned_layers) + 1)],
        base_anchor_shapes=((2, 2, 2), (4, 4, 4), (8, 8, 8)),
    )
    network = RetinaNet(
        spatial_dims=3, num_classes=len(label_map.box_classes), num_anchors=anchors.num_anchors_per_location()[0],
        feature_extractor=features, size_divisible=[2 * 2 * 2 ** max(returned_layers)] * 3,
    )  # fmt: skip
    detector = RetinaNetDetector(network, anchors)
    detector.set_atss_matcher(num_candidates=4, center_in_gt=False)
    detector.set_hard_negative_sampler(batch_size_per_image=64, positive_fraction=0.3, pool_size=20, min_neg=16)
    return detector


def build_densenet(label_map: LabelMap) -> DenseNet121:
    """MONAI's DenseNet121 as the 3D classification tutorial builds it, with one logit per image class.

    Project-MONAI/tutorials ``3d_classification/torch/densenet_training_array.py``: ``DenseNet121(spatial_dims=3,
    in_channels=1, out_channels=2)`` with a softmax over two exclusive classes; here the image classes are not
    exclusive, so one logit each (binary cross-entropy in :func:`baseline_loss`).
    """
    return DenseNet121(spatial_dims=3, in_channels=1, out_channels=len(label_map.image_classes))


# research-contributions auto3dseg/algorithm_templates/segresnet/configs/hyper_parameters.yaml, ``loss``: the
# background channel counts, squared predictions in the Dice denominator, no smoothing of the numerator.
SEGMENTATION_LOSS = {"include_background": True, "to_onehot_y": True, "softmax": True, "squared_pred": True,
                     "smooth_nr": 0.0, "smooth_dr": 1e-5}  # fmt: skip

BUILDERS = {"segmentation": build_segresnet, "detection": build_retinanet, "classification": build_densenet}


def items_for(task: str, items: Sequence[dict]) -> list[dict]:
    """The items a baseline for ``task`` can learn from (those carrying its annotation)."""
    if task not in NEEDS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return [item for item in items if item.get(NEEDS[task]) is not None]


def _box_targets(cases: Sequence[LoadedCase], label_map: LabelMap) -> list[dict]:
    # LoadedCase box labels index label_map.class_names; RetinaNet's labels index the box classes.
    box_index = {label_map.class_index(n): i for i, n in enumerate(label_map.box_classes)}
    return [
        {
            "boxes": torch.as_tensor(np.asarray(c.boxes, dtype=np.float32).reshape(-1, 6)),
            "labels": torch.as_tensor([box_index[int(v)] for v in c.box_labels], dtype=torch.long),
        }
        for c in cases
    ]


def baseline_loss(task: str, model: torch.nn.Module, cases: Sequence[LoadedCase], label_map: LabelMap) -> torch.Tensor:
    """The task's standard loss on a batch of cropped cases (all with the annotation ``task`` needs).

    Segmentation: MONAI's ``DiceCELoss`` with Auto3DSeg SegResNet's settings (:data:`SEGMENTATION_LOSS`);
    detection: RetinaNet's own classification + box-regression losses, weighted 1 : 1 as the detection bundle's
    trainer does; classification: binary cross-entropy per image class.
    """
    images = torch.stack([c.image for c in cases])
    if task == "segmentation":
        semantic = torch.stack([c.semantic for c in cases])[:, None]
        return DiceCELoss(**SEGMENTATION_LOSS)(model(images), semantic)
    if task == "detection":
        losses = model(images, _box_targets(cases, label_map))
        return losses[model.cls_key] + losses[model.box_reg_key]
    if task == "classification":
        wanted = [label_map.class_index(n) for n in label_map.image_classes]
        truth = torch.tensor([[float(k in c.image_classes) for k in wanted] for c in cases])
        return torch.nn.functional.binary_cross_entropy_with_logits(model(images), truth)
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


class BaselinePredictor:
    """The three baselines in turn on one volume, with UniMed's predictor interface and output conventions.

    ``prepare`` puts the volume on the working grid once (``unimed_core.data.preprocess``); ``predict`` runs
    each given baseline and returns a :class:`Prediction`: labels restored to the input grid, boxes mapped to
    world RAS mm (``unimed_core.data.boxes``), image-class probabilities. A missing baseline leaves its part
    empty (no labels, no boxes, probability 0.5). ``timings`` holds the seconds of each part of the last call.

    Args:
        segmenter, detector, classifier: trained baselines or None.
        label_map: the label map.
        spacing, roi_size, overlap: working grid and sliding window, as for ``UniMedPredictor``.
        score_threshold, nms_iou: detection post-processing (pass UniMed predictor's, for a like-for-like test).
    """

    def __init__(
        self,
        segmenter: torch.nn.Module | None,
        detector: RetinaNetDetector | None,
        classifier: torch.nn.Module | None,
        label_map: LabelMap,
        spacing: Sequence[float] = (6.0, 6.0, 6.0),
        roi_size: Sequence[int] = (64, 64, 64),
        overlap: float = 0.25,
        score_threshold: float = 0.3,
        nms_iou: float = 0.3,
    ) -> None:
        self.segmenter = segmenter.eval() if segmenter is not None else None
        self.detector = detector.eval() if detector is not None else None
        self.classifier = classifier.eval() if classifier is not None else None
        self.label_map = label_map
        self.spacing = tuple(float(s) for s in spacing)
        self.roi_size = tuple(int(r) for r in roi_size)
        self.overlap = overlap
        if self.detector is not None:
            self.detector.set_box_selector_parameters(
                score_thresh=score_threshold, nms_thresh=nms_iou, detections_per_img=100
            )
            self.detector.set_sliding_window_inferer(
                roi_size=self.roi_size, overlap=overlap, sw_batch_size=1, mode="gaussian", device="cpu"
            )
        self.timings: dict[str, float] = {}

    def prepare(self, volume: Volume) -> PreparedVolume:
        return prepare_image(volume, self.spacing)

    def _timed(self, name: str, start: float) -> float:
        now = time.perf_counter()
        self.timings[name] = now - start
        return now

    @torch.no_grad()
    def predict(self, volume: Volume, prepared: PreparedVolume | None = None) -> Prediction:
        start = time.perf_counter()
        prepared = self.prepare(volume) if prepared is None else prepared
        start = self._timed("prepare", start)
        image = prepared.image[None]
        labels = np.zeros(prepared.source_shape, dtype=np.int16)
        if self.segmenter is not None:
            logits = sliding_window_inference(image, self.roi_size, 1, self.segmenter, self.overlap, mode="gaussian")
            # like UniMed's: class probabilities onto the input grid, the label taken there (DESIGN.md §5)
            labels = restore_labels(logits[0].float().softmax(0), prepared, lambda p: p.argmax(0)).numpy()
            start = self._timed("segmentation", start)
        boxes, names, scores = np.zeros((0, 6)), [], np.zeros((0,))
        if self.detector is not None:
            found = self.detector(image, use_inferer=True)[0]
            voxel, keep = clip_boxes_to_shape(found["boxes"].double().numpy().reshape(-1, 6), prepared.shape)
            boxes = voxel_to_world_boxes(voxel, prepared.affine)
            names = [self.label_map.box_classes[int(i)] for i in found["labels"][torch.as_tensor(keep)]]
            scores = found["labels_scores"][torch.as_tensor(keep)].double().numpy()
            start = self._timed("detection", start)
        probs = {name: 0.5 for name in self.label_map.image_classes}
        if self.classifier is not None:
            # the whole working grid at once (DenseNet pools globally), padded up to the training patch if smaller
            padded = SpatialPad(self.roi_size, mode="replicate")(image[0])[None]
            values = torch.sigmoid(self.classifier(padded))[0].tolist()
            probs = dict(zip(self.label_map.image_classes, values))
            self._timed("classification", start)
        return Prediction(labels, prepared.source_affine.copy(), boxes, names, scores, probs)
