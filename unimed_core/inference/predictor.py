"""Whole-volume inference: automatic and prompted modes, on the input's own geometry (DESIGN.md §3, §5).

The volume is reoriented and resampled to the working grid, run through the model with MONAI's sliding-window
inferer (Gaussian blending, bounded memory: one window at a time), and every output goes back to the input:
the label volume on the input grid with the input affine, boxes and points in world RAS millimetres. Masks are
decided at the scan's resolution: the class scores (or a prompt's mask logits) are interpolated trilinearly onto
the input grid slab by slab and the label is taken there (``restore_labels``), never a nearest-neighbour copy of
the working grid's labels, whose blocks a 1 mm scan would show (issue 19).

Automatic segmentation follows Mask2Former's semantic inference: the score of class c at a voxel is
``sum_q p_q(c) * sigmoid(mask_q)`` over latent queries, and a voxel takes the best class when that score
exceeds ``mask_threshold``. Detection reads each latent query's class and box tokens (the decomposed path)
or generates a DET sequence (the composed path); classification reads the image query.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.data.box_utils import batched_nms
from monai.inferers import sliding_window_inference
from scipy import ndimage

from unimed_core.data.boxes import voxel_to_world_boxes, world_to_voxel_boxes, world_to_voxel_points
from unimed_core.data.image_io import Volume
from unimed_core.data.preprocess import PreparedVolume, prepare_image, resample_onto, restore_labels
from unimed_core.inference.boundary_refiner import BoundaryRefiner, load_boundary_refiner
from unimed_core.inference.candidate_rescorer import CandidateRescorer, candidate_features, load_rescorer
from unimed_core.inference.familiarity import FamiliarityReference, familiarity_warnings
from unimed_core.label_map import LabelMap
from unimed_core.model.inputs import PromptBatch
from unimed_core.tokenizer import SequenceGrammar, Tokenizer

__all__ = ["Prediction", "UniMedPredictor"]

DETECTION_PATHS = ("decomposed", "composed", "segmentation")
SEMANTIC_SOURCES = ("queries", "class_tokens", "both")
BOX_SOURCES = ("tokens", "masks")
# Mask logit of the working grid outside a prompt's window: background, and finite so that trilinear interpolation
# near the window's edge blends to it instead of giving NaN.
OUTSIDE_LOGIT = -20.0
# Score a lesion's region must reach to be a detection on the "segmentation" path, chosen for the shipped weights by
# benchmarks/component_threshold.py (bundle 0.5.0: 0.1; 0.4.0: 0.3; 0.2 for bundles 0.2.0 and 0.3.0)
COMPONENT_THRESHOLD = 0.1
COORDINATES = "world millimetres, RAS (as NIfTI and Slicer), MONAI box mode XYZXYZ (corner)"


@dataclass
class Prediction:
    """What a user gets for one volume, in the input's own geometry.

    Attributes:
        labels: label volume on the input grid (mask ids of the label map), int16.
        affine: the input's affine (voxel → RAS mm) for ``labels``.
        boxes: (N, 6) world RAS mm, ``XYZXYZ`` corners.
        box_labels: class name of each box.
        box_scores: confidence of each box in [0, 1].
        class_probabilities: image class name → probability.
        warnings: why the scan looks unlike the training data (``familiarity_warnings``), one dict per signal;
            the results above are still given.
        box_features: (N, F) ``candidate_features`` of each box on the "segmentation" detection path (what a
            candidate rescorer reads and is fitted on); (N, 0) on the other paths.
    """

    labels: np.ndarray
    affine: np.ndarray
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 6)))
    box_labels: list[str] = field(default_factory=list)
    box_scores: np.ndarray = field(default_factory=lambda: np.zeros((0,)))
    class_probabilities: dict[str, float] = field(default_factory=dict)
    warnings: list[dict] = field(default_factory=list)
    box_features: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))

    def detections(self) -> list[dict]:
        """Boxes as JSON-ready dicts."""
        return [
            {"label": name, "score": float(score), "box": [float(v) for v in box]}
            for box, name, score in zip(self.boxes, self.box_labels, self.box_scores)
        ]


class UniMedPredictor:
    """Runs a UniMed model on whole volumes.

    Args:
        model: a UniMed network (``unimed_core.model.factory``), with ``vocab`` and ``embedding_stride``.
        label_map: the label map the model was trained with.
        spacing: working spacing in mm (as in training).
        roi_size: sliding-window size on the working grid (multiples of 16).
        overlap: sliding-window overlap fraction.
        device: where the model runs ("cpu", "cuda"); the blended outputs stay on the CPU.
        amp: autocast (bfloat16; float16 on a GPU without bfloat16).
        mask_threshold: score above which a voxel is foreground.
        score_threshold: minimal detection score kept.
        nms_iou: IoU of per-class non-maximum suppression across queries and windows.
        detection_path: "decomposed" (per-query box tokens), "composed" (generated DET sequence) or
            "segmentation" (each connected component of a box class's score map, scored by its highest class
            score: boxes that agree with the segmentation).
        component_threshold: on the "segmentation" path, a box class's components are the regions where its own
            score is at least this, so that a lesion still found where an organ outscores it (the label volume
            draws the organ there) is reported, with its lower score; None: the label volume's components.
            0.3 was chosen for the shipped weights on 24 tuning studies of the learning benchmark
            (``benchmarks/component_threshold.py``).
        box_source: on the decomposed path, where a query's box comes from: "tokens" (its box tokens) or "masks"
            (the extent of its mask above ``mask_threshold``, its box tokens when the mask is empty).
        semantic_source: where the label volume's per-class scores come from: "queries" (Mask2Former's
            ``sum_q p_q(c) * sigmoid(mask_q)``), "class_tokens" (each class token's own mask,
            ``UniMed.class_masks``) or "both" (their mean).
        max_working_voxels: refuse volumes whose working grid exceeds this many voxels (memory bound).
        familiarity: statistics of the training scans (a ``FamiliarityReference`` or its JSON file) that every
            prediction's ``warnings`` are checked against; None: no checks.
        rescorer: on the "segmentation" path, a false-positive reduction stage (a ``CandidateRescorer`` or its
            weight file, hash checked) whose probability replaces each candidate's peak score, and whose
            candidates also inform the lesion classes' image probabilities; None: the peaks, and the image head.
        grid_shifts: automatic mode only: the class scores are the mean over the working grid and grids shifted by
            each of these fractions of a working voxel along every axis (test-time augmentation; each costs one
            more pass of the network). Prompted modes use one pass.
        boundary_refiner: automatic mode only: a ``BoundaryRefiner`` (or its weight file, hash checked) that
            decides the organs' boundary voxels again from their score and the study's intensities, on its own
            grid, before the label volume is restored to the input grid; None: the scores alone.

    Example:
        >>> predictor = UniMedPredictor(unimed_small(), LabelMap.default())  # doctest: +SKIP
        >>> prediction = predictor.predict(read_image("ct.nii.gz"))  # doctest: +SKIP
    """

    def __init__(
        self,
        model: torch.nn.Module,
        label_map: LabelMap,
        spacing: Sequence[float] = (2.0, 2.0, 2.0),
        roi_size: Sequence[int] = (64, 64, 64),
        overlap: float = 0.25,
        device: str | torch.device = "cpu",
        amp: bool = False,
        mask_threshold: float = 0.5,
        score_threshold: float = 0.3,
        nms_iou: float = 0.3,
        detection_path: str = "decomposed",
        component_threshold: float | None = COMPONENT_THRESHOLD,
        max_working_voxels: int = 512**3,
        semantic_source: str = "queries",
        box_source: str = "tokens",
        familiarity: FamiliarityReference | str | None = None,
        rescorer: CandidateRescorer | str | None = None,
        grid_shifts: Sequence[float] = (),
        boundary_refiner: BoundaryRefiner | str | None = None,
    ) -> None:
        if len(roi_size) != 3 or any(int(r) <= 0 or int(r) % 16 for r in roi_size):
            raise ValueError(f"roi_size must be three positive multiples of 16, got {roi_size}")
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        if detection_path not in DETECTION_PATHS:  # the benchmark decides the default
            raise ValueError(f"detection_path must be one of {DETECTION_PATHS}, got {detection_path!r}")
        self.model = model.to(device).eval()
        self.label_map = label_map
        self.tokenizer = Tokenizer(model.vocab)
        self.spacing = tuple(float(s) for s in spacing)
        self.roi_size = tuple(int(r) for r in roi_size)
        self.overlap, self.device, self.amp = overlap, torch.device(device), amp
        self.mask_threshold, self.score_threshold, self.nms_iou = mask_threshold, score_threshold, nms_iou
        self.detection_path = detection_path
        if component_threshold is not None and not 0.0 < component_threshold <= 1.0:
            raise ValueError(f"component_threshold must be in (0, 1] or None, got {component_threshold}")
        self.component_threshold = component_threshold
        if semantic_source not in SEMANTIC_SOURCES:
            raise ValueError(f"semantic_source must be one of {SEMANTIC_SOURCES}, got {semantic_source!r}")
        self.semantic_source = semantic_source
        if box_source not in BOX_SOURCES:
            raise ValueError(f"box_source must be one of {BOX_SOURCES}, got {box_source!r}")
        self.box_source = box_source
        self.max_working_voxels = max_working_voxels
        if familiarity is not None and not isinstance(familiarity, FamiliarityReference):
            familiarity = FamiliarityReference.load(familiarity)
        self.familiarity = familiarity
        self.rescorer = load_rescorer(rescorer) if isinstance(rescorer, (str, Path)) else rescorer
        if not all(np.isfinite(float(g)) and 0 < abs(float(g)) < 1 for g in grid_shifts):
            raise ValueError(
                f"grid_shifts must be fractions of a working voxel in (-1, 1) other than 0, got {grid_shifts}"
            )
        self.grid_shifts = tuple(float(g) for g in grid_shifts)
        if isinstance(boundary_refiner, (str, Path)):
            boundary_refiner = load_boundary_refiner(boundary_refiner)
        self.boundary_refiner = boundary_refiner
        num_fg = label_map.num_mask_classes - 1
        self._mask_classes = list(range(num_fg))  # class index i ↔ mask id i + 1
        self._box_classes = label_map.box_class_indices()
        self._image_classes = label_map.image_class_indices()

    # -- preparation -------------------------------------------------------------------------------------------
    def prepare(self, volume: Volume) -> PreparedVolume:
        """Estimate the working grid's size first and refuse (with the number) what would not fit, or what spans
        less than two working voxels along an axis (a spacing in the header that is wrong by orders of magnitude).
        """
        extent = np.abs(volume.affine[:3, :3]) @ np.asarray(volume.shape, dtype=np.float64)
        estimate = float(np.prod(np.maximum(extent / np.asarray(self.spacing), 1)))
        where = volume.path or "volume"
        if np.any(extent < 2 * np.asarray(self.spacing)):
            raise ValueError(
                f"{where}: the volume spans only {np.round(extent, 4).tolist()} mm (voxel spacing "
                f"{np.round(volume.spacing, 6).tolist()} mm); the model works at {self.spacing} mm: check the "
                "spacing in the file's header"
            )
        if estimate > self.max_working_voxels:
            raise ValueError(
                f"{where}: about {estimate:.3g} voxels at {self.spacing} mm exceed the limit of "
                f"{self.max_working_voxels:.3g}; use a coarser spacing or crop the volume"
            )
        return prepare_image(volume, self.spacing)

    def _autocast(self):
        # bfloat16 where the device has it, as in training (JointIteration): float16 overflowed to NaN in the base
        # variant's set-matching costs on an H200, and bfloat16 keeps float32's range
        cuda = self.device.type == "cuda"
        dtype = torch.float16 if cuda and not torch.cuda.is_bf16_supported() else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.amp)

    # -- automatic mode --------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self, volume: Volume, classes: Sequence[str] | None = None, prepared: PreparedVolume | None = None
    ) -> Prediction:
        """Segment, detect and classify everything (or only ``classes``) in ``volume``.

        ``prepared``: ``self.prepare(volume)`` when the caller already has it (several calls on one volume).
        """
        wanted = None if classes is None else {self.label_map.class_index(c) for c in classes}
        prepared = self.prepare(volume) if prepared is None else prepared
        windows: list[dict] = []

        def run_window(patch: torch.Tensor, slices) -> torch.Tensor:
            with self._autocast():
                embeddings, levels = self.model.encode(patch)
                out, class_masks = self.model.decode_with_class_masks(embeddings, levels, image=patch)
                generated = self._generate_detections(embeddings, out) if self.detection_path == "composed" else None
            scores = self._semantic_scores(out, class_masks)
            for b, sl in enumerate(slices):
                offset = [s.start for s in sl[2:]]
                windows.append(self._window_results(out, b, patch.shape[2:], offset, generated))
            return scores

        scores = self._sliding_scores(prepared, run_window)
        if self.grid_shifts:
            scores = self._with_shifted_grids(volume, prepared, scores)
        label_scores, label_grid = self.boundary_scores(volume, scores, prepared)
        # the label is taken on the input grid from the scores interpolated there (DESIGN.md §5), slab by slab
        restored = restore_labels(label_scores, label_grid, lambda slab: self._labels_from_scores(slab, wanted)).numpy()
        found = windows
        probs = self._image_probabilities(windows)
        if self.detection_path == "segmentation":
            # the label volume on the working grid is only needed for its own components (no threshold)
            labels = self._labels_from_scores(scores, wanted) if self.component_threshold is None else None
            box_classes = [c for c in self._box_classes if c < scores.shape[0]]
            found = [self._rescored(_component_boxes(scores, labels, box_classes, self.component_threshold), scores,
                                    prepared, box_classes, probs)]  # fmt: skip
            if self.rescorer is not None:
                probs = self._with_lesion_evidence(probs, found[0])
        boxes, box_labels, box_scores, features = self._merge_boxes(found, prepared, wanted)
        warnings = self.familiarity_warnings(volume)
        return Prediction(restored, prepared.source_affine.copy(), boxes, box_labels, box_scores, probs, warnings,
                          features)  # fmt: skip

    def _with_lesion_evidence(self, probs: dict[str, float], candidates: dict) -> dict[str, float]:
        """Image probabilities of the lesion classes that also read the rescored candidates: the mean of the image
        head's probability and the probability that at least one candidate of the class is a true lesion
        (``1 - prod(1 - p_i)``, the candidates taken as independent). The rescorer's probabilities are calibrated
        hit rates, which the peaks are not: with the peaks, detections did not help the image labels (bundle 0.5.0),
        with the rescorer the tumour label's AUC rose on all three study sets (``benchmarks/image_label_fusion.py``)."""
        out = dict(probs)
        for c in self._box_classes:
            name = self.label_map.class_names[c]
            if name not in out:
                continue
            own = candidates["scores"][candidates["labels"] == c].double()
            found = 1.0 - float(torch.prod(1.0 - own)) if len(own) else 0.0
            out[name] = 0.5 * (out[name] + found)
        return out

    def _rescored(self, candidates: dict, scores: torch.Tensor, prepared: PreparedVolume, box_classes, probs) -> dict:
        """The segmentation path's candidates with their ``candidate_features`` and, with a ``rescorer``, the
        rescorer's probabilities as their scores (the peaks are one of its features)."""
        threshold = self.mask_threshold if self.component_threshold is None else self.component_threshold
        if self.rescorer is not None and abs(float(self.rescorer.component_threshold) - threshold) > 1e-6:
            raise ValueError(
                f"the candidate rescorer was fitted on candidates at component threshold "
                f"{float(self.rescorer.component_threshold):g}, this predictor finds them at {threshold:g}"
            )
        names = [self.label_map.class_names[c] for c in box_classes]
        features = candidate_features(candidates["boxes"], candidates["scores"], candidates["labels"], scores,
                                      prepared.image[0], box_classes, threshold, self._labels_from_scores(scores, None),
                                      [probs.get(n, 0.0) for n in names])  # fmt: skip
        if self.rescorer is not None and len(features):
            if features.shape[1] != self.rescorer.num_features:
                raise ValueError(f"the candidate rescorer reads {self.rescorer.num_features} features, this label "
                                 f"map gives {features.shape[1]}")  # fmt: skip
            candidates = {**candidates, "scores": self.rescorer(features)}
        return {**candidates, "features": features}

    def _sliding_scores(self, prepared: PreparedVolume, run_window) -> torch.Tensor:
        """(K, D, H, W) class scores on ``prepared``'s working grid, the windows blended by MONAI's inferer."""
        image = prepared.image[None].to(self.device)
        scores = sliding_window_inference(
            image,
            self.roi_size,
            sw_batch_size=1,
            predictor=run_window,
            overlap=self.overlap,
            mode="gaussian",
            # A study smaller than the window is padded with air (its lowest value), as training pads a patch
            # (``crop_case_at``); MONAI's default 0 is mid-grey in the working range and reads as tissue.
            cval=float(image.min()),
            with_coord=True,
            sw_device=self.device,
            device="cpu",
        )[0]
        return F.interpolate(scores[None].float(), size=prepared.shape, mode="trilinear")[0]

    def _scores_window(self, patch: torch.Tensor, slices) -> torch.Tensor:
        """A sliding window's class scores, nothing else collected."""
        with self._autocast():
            embeddings, levels = self.model.encode(patch)
            out, class_masks = self.model.decode_with_class_masks(embeddings, levels, image=patch)
        return self._semantic_scores(out, class_masks)

    @torch.no_grad()
    def class_scores(self, volume: Volume, prepared: PreparedVolume | None = None) -> torch.Tensor:
        """(K, D, H, W) class scores on the working grid of ``prepared`` (``self.prepare(volume)`` when None), as
        ``predict`` decides the label volume from them (with ``grid_shifts``), before the boundary refiner."""
        prepared = self.prepare(volume) if prepared is None else prepared
        scores = self._sliding_scores(prepared, self._scores_window)
        return self._with_shifted_grids(volume, prepared, scores) if self.grid_shifts else scores

    def _with_shifted_grids(self, volume: Volume, prepared: PreparedVolume, scores: torch.Tensor) -> torch.Tensor:
        """The mean of ``scores`` and the scores of working grids shifted by each of ``grid_shifts`` (working voxels,
        along every axis), brought onto the unshifted grid: test-time augmentation that samples the anatomy at
        other sub-voxel positions, so a boundary is not decided by where one 6 mm grid happens to fall."""
        total = scores.clone()
        for shift in self.grid_shifts:
            shifted = prepare_image(volume, self.spacing, offset=(shift, shift, shift))
            total += resample_onto(self._sliding_scores(shifted, self._scores_window), shifted.affine, prepared)
        return total / (1 + len(self.grid_shifts))

    def boundary_scores(
        self, volume: Volume, scores: torch.Tensor, prepared: PreparedVolume
    ) -> tuple[torch.Tensor, PreparedVolume]:
        """The scores the label volume is decided from, and their grid: ``scores`` on ``prepared``'s working grid
        without a ``boundary_refiner``; with one, the scores brought onto its refinement grid (the scan resampled at
        the refiner's spacing) and refined there (``BoundaryRefiner.refine``)."""
        if self.boundary_refiner is None:
            return scores, prepared
        grid, on_grid, labels = self.on_refinement_grid(volume, scores, prepared, self.boundary_refiner.grid_spacing)
        return self.boundary_refiner.refine(grid.image[0], on_grid, labels), grid

    def on_refinement_grid(
        self, volume: Volume, scores: torch.Tensor, prepared: PreparedVolume, spacing: Sequence[float]
    ) -> tuple[PreparedVolume, torch.Tensor, torch.Tensor]:
        """What a boundary refiner reads (and ``benchmarks/boundary_refiner.py`` fits on): the scan resampled at
        ``spacing`` mm, working-grid ``scores`` brought onto that grid, and the mask ids decided there."""
        grid = prepare_image(volume, tuple(spacing))
        on_grid = resample_onto(scores, prepared.affine, grid)
        return grid, on_grid, self._labels_from_scores(on_grid, None)

    def familiarity_warnings(self, volume: Volume) -> list[dict]:
        """Why ``volume`` looks unlike the training scans (``unimed_core.inference.familiarity``); [] when it
        does not, or when the predictor has no statistics."""
        return [] if self.familiarity is None else familiarity_warnings(volume, self.familiarity)

    def _semantic_scores(self, out, class_masks: torch.Tensor) -> torch.Tensor:
        """(B, K, D', H', W') per-class scores in [0, 1] from ``semantic_source`` (``class_masks``: the class
        tokens' mask logits that ``decode_with_class_masks`` gave with ``out``). The class tokens' masks may be on a
        finer grid than the queries' (``FineClassHead``): the queries' scores are then interpolated to it."""
        parts = []
        if self.semantic_source in ("queries", "both"):
            latent = out.layout.latent
            cls = out.class_logits[:, latent].float().softmax(-1)[..., self._mask_classes]  # (B, N, K)
            masks = out.mask_logits[:, latent].float().sigmoid()  # (B, N, D', H', W')
            # Mask2Former's sum over queries exceeds 1 where several queries claim one class; it only needs the
            # argmax, but these scores are also the lesion detections' scores (probabilities, as users read them)
            parts.append(torch.einsum("bnk,bndhw->bkdhw", cls, masks).clamp_(max=1.0))
        if self.semantic_source in ("class_tokens", "both"):
            parts.append(class_masks[:, self._mask_classes].float().sigmoid())
        size = max((p.shape[2:] for p in parts), key=lambda shape: shape.numel())
        parts = [p if p.shape[2:] == size else F.interpolate(p, size=size, mode="trilinear") for p in parts]
        return sum(parts) / len(parts)

    def _labels_from_scores(self, scores: torch.Tensor, wanted: set[int] | None) -> torch.Tensor:
        if wanted is not None:
            keep = torch.tensor([c in wanted for c in self._mask_classes])
            scores = scores * keep[:, None, None, None]
        best, index = scores.max(0)
        labels = index + 1
        labels[best < self.mask_threshold] = 0
        return labels

    def _window_results(self, out, b: int, patch_shape, offset, generated=None) -> dict:
        """Per-window detections (working-grid voxels) and image probabilities."""
        image_probs = out.image_logits[b].float().sigmoid()[self._image_classes].cpu()
        if self.detection_path == "segmentation":  # boxes come from the label volume's components, in predict
            return {"image": image_probs}
        size = torch.tensor(list(patch_shape) * 2, dtype=torch.float32)
        shift = torch.tensor(list(offset) * 2, dtype=torch.float32)
        if generated is not None:
            return {**self._decoded_boxes(*generated, b, size, shift), "image": image_probs}
        latent = out.layout.latent
        probs = out.class_logits[b, latent].float().softmax(-1)[:, self._box_classes]
        score, which = probs.max(-1)
        bins = out.box_logits[b, latent].float().softmax(-1)
        centres = (torch.arange(bins.shape[-1], dtype=torch.float32, device=bins.device) + 0.5) / bins.shape[-1]
        coords = (bins * centres).sum(-1)  # (N, 6) expected normalised coordinate
        boxes = _ordered(coords).cpu() * size
        if self.box_source == "masks":
            from_masks, found = _mask_extents(out.mask_logits[b, latent].float(), patch_shape, self.mask_threshold)
            boxes = torch.where(found[:, None], from_masks, boxes)
        boxes = boxes + shift
        labels = torch.tensor(self._box_classes)[which.cpu()]
        return {"boxes": boxes, "scores": score.cpu(), "labels": labels, "image": image_probs}

    def _generate_detections(self, embeddings: torch.Tensor, out) -> tuple[torch.Tensor, torch.Tensor]:
        """The composed path: a grammar-constrained DET sequence per window (tokens, per-token probabilities)."""
        vocab = self.model.vocab
        grammar = SequenceGrammar(vocab, allowed_tasks=[vocab.det], allowed_classes=self._box_classes)
        length = min(grammar.max_length, self.model.composed_decoder.max_length)  # a short decoder ends early
        tokens, token_probs, _ = self.model.generate(embeddings, out, vocab.det, grammar, length)
        return tokens.cpu(), token_probs.float().cpu()

    def _decoded_boxes(self, tokens, token_probs, b: int, size: torch.Tensor, shift: torch.Tensor) -> dict:
        vocab = self.model.vocab
        sequence = tokens[b].tolist()
        decoded = self.tokenizer.decode(sequence)
        boxes = torch.as_tensor(decoded.boxes, dtype=torch.float32).reshape(-1, 6) * size + shift
        # an object's score: the probability the model gave its class token (the last of its 7 tokens)
        class_positions = [i for i, t in enumerate(sequence) if vocab.is_class(t)][: len(boxes)]
        scores = token_probs[b, class_positions].reshape(-1)
        return {"boxes": boxes, "scores": scores, "labels": torch.tensor(decoded.box_labels, dtype=torch.long)}

    def _merge_boxes(self, windows: list[dict], prepared: PreparedVolume, wanted: set[int] | None):
        boxes = torch.cat([w["boxes"] for w in windows]) if windows else torch.zeros((0, 6))
        scores = torch.cat([w["scores"] for w in windows]) if windows else torch.zeros((0,))
        labels = torch.cat([w["labels"] for w in windows]) if windows else torch.zeros((0,), dtype=torch.long)
        # the candidates' features (segmentation path) travel with them; the other paths have none
        features = (torch.cat([w["features"] for w in windows]) if windows and all("features" in w for w in windows)
                    else torch.zeros((len(boxes), 0)))  # fmt: skip
        keep = scores >= self.score_threshold
        if wanted is not None:
            keep &= torch.tensor([int(c) in wanted for c in labels], dtype=torch.bool)
        boxes, scores, labels, features = boxes[keep], scores[keep], labels[keep], features[keep]
        limit = torch.tensor(list(prepared.shape) * 2, dtype=torch.float32)
        boxes = torch.minimum(torch.clamp(boxes, min=0), limit)
        if len(boxes):
            order = batched_nms(boxes, scores, labels, self.nms_iou)
            boxes, scores, labels, features = boxes[order], scores[order], labels[order], features[order]
        world = voxel_to_world_boxes(boxes.double().numpy(), prepared.affine)
        # The working grid covers the input and up to one working voxel more (its extent is rounded up), so a box
        # clamped to it can still reach past the input: clip to the input's world box, and drop what lies outside.
        bounds = voxel_to_world_boxes(np.array([[0.0, 0.0, 0.0, *prepared.source_shape]]), prepared.source_affine)[0]
        world = np.concatenate([np.maximum(world[:, :3], bounds[:3]), np.minimum(world[:, 3:], bounds[3:])], axis=1)
        inside = np.all(world[:, :3] < world[:, 3:], axis=1)
        keep = torch.from_numpy(inside)
        world, scores, labels, features = world[inside], scores[keep], labels[keep], features[keep]
        names = [self.label_map.class_names[int(c)] for c in labels]
        return world, names, scores.numpy().astype(np.float64), features.numpy()

    def _image_probabilities(self, windows: list[dict]) -> dict[str, float]:
        # a finding anywhere makes the image positive: the most confident window speaks for the volume
        probs = torch.stack([w["image"] for w in windows]).max(0).values
        return {self.label_map.class_names[c]: float(p) for c, p in zip(self._image_classes, probs)}

    # -- prompted mode ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def segment_clicks(
        self,
        volume: Volume,
        positive: np.ndarray,
        negative: np.ndarray | None = None,
        prepared: PreparedVolume | None = None,
    ) -> np.ndarray:
        """Mask (on the input grid, uint8) of the structure under the positive clicks (world RAS mm).

        ``prepared``: ``self.prepare(volume)`` when the caller already has it (several calls on one volume).
        """
        positive = np.asarray(positive, dtype=np.float64).reshape(-1, 3)
        negative = np.zeros((0, 3)) if negative is None else np.asarray(negative, dtype=np.float64).reshape(-1, 3)
        if len(positive) == 0:
            raise ValueError("at least one positive click is needed")
        prepared = self.prepare(volume) if prepared is None else prepared
        pos = world_to_voxel_points(positive, prepared.affine)
        neg = world_to_voxel_points(negative, prepared.affine)
        start = self._window_around(pos.mean(0), prepared.shape)
        size = np.asarray(self.roi_size, dtype=np.float64)
        points = np.concatenate([pos, neg]) - start
        inside = np.all((points >= -0.5) & (points <= size - 0.5), axis=1)
        flags = [True] * len(pos) + [False] * len(neg)
        points, flags = points[inside], [f for f, ok in zip(flags, inside) if ok]
        if not any(flags):
            raise ValueError("the positive clicks lie outside the volume")
        tokens = self.tokenizer.encode_point_prompt((points + 0.5) / size, flags)
        clicked = np.clip(np.round(points[np.asarray(flags)]).astype(int), 0, size.astype(int) - 1)

        def honours_clicks(window_logits: torch.Tensor) -> bool:  # every positive click lies in the mask
            return bool((window_logits[tuple(clicked.T)] > 0).all())

        logits = self._prompt_logits(prepared, start, tokens, honours_clicks)
        return restore_labels(logits[None], prepared, lambda slab: slab[0] > 0, dtype=torch.uint8).numpy()

    @torch.no_grad()
    def segment_box(self, volume: Volume, box: np.ndarray, prepared: PreparedVolume | None = None) -> np.ndarray:
        """Mask (on the input grid, uint8) of the structure inside ``box``: ``x1, y1, z1, x2, y2, z2`` world RAS mm
        (two opposite corners, in any order), the model's ``BOX`` prompt.

        The box becomes normalised corner coordinates of the window centred on it, as training draws box prompts
        (``unimed_core.training.prompt_sampling``); only voxels whose centres lie inside the box are kept.

        ``prepared``: ``self.prepare(volume)`` when the caller already has it (several calls on one volume).
        """
        box = np.asarray(box, dtype=np.float64).reshape(-1)
        if box.shape != (6,) or not np.all(np.isfinite(box)):
            raise ValueError(f"a box is six finite numbers x1, y1, z1, x2, y2, z2 (RAS mm), got {box.tolist()}")
        box = np.concatenate([np.minimum(box[:3], box[3:]), np.maximum(box[:3], box[3:])])
        if np.any(box[3:] - box[:3] <= 0):
            raise ValueError(f"the box {box.tolist()} has no extent along an axis")
        prepared = self.prepare(volume) if prepared is None else prepared
        voxels = world_to_voxel_boxes(box[None], prepared.affine)[0]  # corners: voxel i spans [i, i + 1)
        shape = np.asarray(prepared.shape, dtype=np.float64)
        clipped = np.concatenate([np.maximum(voxels[:3], 0), np.minimum(voxels[3:], shape)])
        if np.any(clipped[3:] <= clipped[:3]):
            raise ValueError(f"the box {box.tolist()} lies outside the volume")
        start = self._window_around((clipped[:3] + clipped[3:]) / 2 - 0.5, prepared.shape)
        size = np.asarray(self.roi_size, dtype=np.float64)
        local = np.clip((clipped - np.tile(start, 2)) / np.tile(size, 2), 0.0, 1.0)
        # the box's voxels in the window (a box larger than the window starts before it: from 0, not from the end)
        lo = np.clip(np.floor(clipped[:3] - start), 0, size - 1).astype(int)
        hi = np.maximum(np.ceil(clipped[3:] - start).astype(int), lo + 1)
        inside = tuple(slice(a, b) for a, b in zip(lo, hi))

        def honours_box(window_logits: torch.Tensor) -> bool:
            # A box is drawn around its structure: the mask inside it spans at least half of it along every axis.
            # "Something inside the box" was too weak: on a test CT the last layer kept 4 voxels of a liver box (Dice
            # 0.0) while the first layer's mask filled it (its extent within 3 voxels of the box's on every side).
            in_box = window_logits[inside]
            held = torch.nonzero(in_box > 0)
            if len(held) == 0:
                return False
            span = held.max(0).values - held.min(0).values + 1
            return bool((2 * span >= torch.tensor(in_box.shape)).all())

        logits = self._prompt_logits(prepared, start, self.tokenizer.encode_box_prompt(local), honours_box)
        restored = restore_labels(logits[None], prepared, lambda slab: slab[0] > 0, dtype=torch.uint8).numpy()
        return restored * _inside_box(prepared.source_shape, prepared.source_affine, box)

    def _window_around(self, centre: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        start = np.round(centre - np.asarray(self.roi_size) / 2)
        return np.clip(start, 0, np.maximum(np.asarray(shape) - np.asarray(self.roi_size), 0)).astype(int)

    def _prompt_logits(
        self,
        prepared: PreparedVolume,
        start: np.ndarray,
        tokens: list[int],
        honours_prompt: Callable[[torch.Tensor], bool] | None = None,
    ) -> torch.Tensor:
        """Run one prompt on the window at ``start``; its mask logits are pasted back on the working grid (outside
        the window: :data:`OUTSIDE_LOGIT`, background).

        ``honours_prompt(window_logits) -> bool``: whether a mask does what its prompt says (a positive click lies
        in it, it spans a box). The mask is the last decoder layer's when it does, else the deepest
        earlier layer's that does (every layer is trained to give the prompt's mask: deep supervision), else the
        last layer's. Why: at every snapshot of the learning curve some clicks at an organ's centre came back
        empty. The prompt query's first mask was the organ (liver Dice 0.90), then from the second layer on its
        masked attention over that organ turned it into "no object" or a lesion, with every logit below -5.
        """
        shape = np.asarray(prepared.shape)
        stop = np.minimum(start + np.asarray(self.roi_size), shape)
        patch = torch.full((1, 1, *self.roi_size), float(prepared.image.min()))
        region = tuple(slice(a, b) for a, b in zip(start, stop))
        local = tuple(slice(0, b - a) for a, b in zip(start, stop))
        patch[(0, 0, *local)] = prepared.image[(0, *region)]
        prompts = PromptBatch(torch.tensor(tokens, dtype=torch.long, device=self.device)[None, None])
        with self._autocast():
            out = self.model(patch.to(self.device), prompts=prompts).decomposed

        def on_window(layer_logits: torch.Tensor) -> torch.Tensor:
            logits = layer_logits[0, out.layout.prompt][0].float()[None, None]
            return F.interpolate(logits, size=self.roi_size, mode="trilinear")[0, 0].cpu()

        logits = on_window(out.mask_logits)
        if honours_prompt is not None and not honours_prompt(logits):
            earlier = (on_window(aux["mask_logits"]) for aux in reversed(out.aux))  # deepest first
            logits = next((layer for layer in earlier if honours_prompt(layer)), logits)
        pasted = torch.full(tuple(int(s) for s in shape), OUTSIDE_LOGIT)
        pasted[region] = logits[local]
        return pasted


def _inside_box(shape: Sequence[int], affine: np.ndarray, box: np.ndarray) -> np.ndarray:
    """uint8 (``shape``): 1 where a voxel's centre lies in the world box ``x1, y1, z1, x2, y2, z2`` (any grid, oblique
    included; only the voxels of the box's bounding region are looked at)."""
    inside = np.zeros(tuple(shape), dtype=np.uint8)
    region = world_to_voxel_boxes(box[None], affine)[0]  # corner convention: centre i sits at i + 0.5
    lo = np.clip(np.floor(region[:3] - 0.5), 0, shape).astype(int)
    hi = np.clip(np.ceil(region[3:] - 0.5) + 1, 0, shape).astype(int)
    if np.any(hi <= lo):
        return inside
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1)
    world = grid @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
    eps = 1e-6  # a centre on a face counts as inside
    found = np.all((world >= box[:3] - eps) & (world <= box[3:] + eps), axis=-1)
    inside[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = found
    return inside


def _component_boxes(
    scores: torch.Tensor, labels: torch.Tensor | None, box_classes: Sequence[int], threshold: float | None = None
) -> dict:
    """Boxes (working-grid voxels), scores and class indices of the connected components (26-connected, scipy) of
    each box class: of ``scores[c] >= threshold``, or with ``threshold`` None of ``labels == c + 1`` (mask id =
    class index + 1); a component's score is its highest class score."""
    boxes, found, classes = [], [], []
    structure = np.ones((3, 3, 3), dtype=bool)
    for c in box_classes:
        region = labels == c + 1 if threshold is None else scores[c] >= threshold
        components, n = ndimage.label(region.numpy(), structure=structure)
        if not n:
            continue
        peak = ndimage.maximum(scores[c].numpy(), components, index=np.arange(1, n + 1))
        for (sx, sy, sz), score in zip(ndimage.find_objects(components), np.atleast_1d(peak)):
            boxes.append([sx.start, sy.start, sz.start, sx.stop, sy.stop, sz.stop])
            found.append(float(score))
            classes.append(int(c))
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 6),
        "scores": torch.tensor(found, dtype=torch.float32),
        "labels": torch.tensor(classes, dtype=torch.long),
    }


def _mask_extents(
    mask_logits: torch.Tensor, shape: Sequence[int], threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (N, 6) in window voxels, corner convention, of N masks (N, D', H', W') resized to ``shape``, and
    whether each mask has any voxel above ``threshold`` (an empty one gets a zero box)."""
    fg = F.interpolate(mask_logits[None], size=tuple(shape), mode="trilinear")[0].sigmoid() > threshold
    boxes = torch.zeros(fg.shape[0], 6)
    for axis in range(3):
        hit = fg.any(dim=[a + 1 for a in range(3) if a != axis]).cpu()  # (N, size along axis)
        idx = torch.arange(hit.shape[1], dtype=torch.float32)
        boxes[:, axis] = torch.where(hit, idx, float("inf")).amin(1)
        boxes[:, axis + 3] = torch.where(hit, idx + 1, float("-inf")).amax(1)
    found = fg.flatten(1).any(1).cpu()
    return torch.where(found[:, None], boxes, torch.zeros_like(boxes)), found


def _ordered(boxes: torch.Tensor) -> torch.Tensor:
    """Make x1 <= x2 etc. for boxes whose corners were predicted independently."""
    return torch.cat([torch.minimum(boxes[:, :3], boxes[:, 3:]), torch.maximum(boxes[:, :3], boxes[:, 3:])], dim=1)
