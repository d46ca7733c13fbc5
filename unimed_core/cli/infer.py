"""``unimed-infer``: run the shipped (or given) UniMed weights on volumes and write every output.

Examples:
    unimed-infer ct.nii.gz --out results/
    unimed-infer dicom_folder/ --out results/ --classes liver tumor
    unimed-infer dicom_folder/ --out results/ --series 1.2.840.113619.2.55.3.1234  # a folder of several series
    unimed-infer ct.nii.gz --out results/ --click 12.5,-40,88 --negative-click 20,-40,88
    unimed-infer ct.nii.gz --out results/ --box=-60,-80,20,40,10,120
    unimed-infer --datalist data/datalist.json --section test --out results/

Outputs per input (``unimed_core.inference.writers``): ``NAME_seg.nii.gz``, ``NAME.seg.nrrd``, ``NAME_seg.dcm``
and ``NAME_sr.dcm`` (DICOM input), ``NAME_boxes.json`` and ``NAME_boxes.mrk.json`` (world mm, RAS),
``NAME_classes.json``; with clicks, ``NAME_click.nii.gz`` instead, with a box ``NAME_box.nii.gz``. A
``summary.json`` lists what was written and, per input, its ``warnings``: why the scan looks unlike the training
data (``unimed_core.inference.familiarity``), also printed on stderr; the results are written all the same.
Exit status 2 and a message naming the file for bad input; nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser

from unimed_core.data.atomic import atomic_write_json
from unimed_core.data.image_io import read_image, write_label
from unimed_core.inference.familiarity import warning_lines
from unimed_core.inference.writers import case_name, write_prediction
from unimed_core.label_map import LabelMap
from unimed_core.paths import BUNDLE_DIR, DEFAULT_BOUNDARY_REFINER, DEFAULT_RESCORER, DEFAULT_WEIGHTS

# predictor options the learning benchmark chooses for the shipped weights, read from the bundle's inference config
PREDICTOR_CHOICES = ("detection_path", "component_threshold", "semantic_source", "box_source", "score_threshold",
                     "grid_shifts")  # fmt: skip

__all__ = ["main", "build_predictor", "parse_point", "parse_box", "FAMILIARITY"]

# statistics of the training scans that every result is checked against (benchmarks/familiarity_calibration.py)
FAMILIARITY = BUNDLE_DIR / "configs" / "familiarity.json"


def _numbers(text: str, count: int, what: str) -> list[float]:
    """``count`` finite comma-separated numbers, or an argparse error saying what ``what`` should look like."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != count or not all(np.isfinite(values)):
        raise argparse.ArgumentTypeError(f"{what} in RAS mm, got {text!r}")
    return values


def parse_point(text: str) -> list[float]:
    """``"x,y,z"`` in world RAS mm → three floats (argparse type)."""
    return _numbers(text, 3, "a point is three finite numbers 'x,y,z'")


def parse_box(text: str) -> list[float]:
    """``"x1,y1,z1,x2,y2,z2"`` (two opposite corners, world RAS mm) → six floats (argparse type)."""
    values = _numbers(text, 6, "a box is six finite numbers 'x1,y1,z1,x2,y2,z2'")
    if any(a == b for a, b in zip(values[:3], values[3:])):
        raise argparse.ArgumentTypeError(f"the box {text!r} has no extent along an axis")
    return values


def build_predictor(weights: str | Path = DEFAULT_WEIGHTS, device: str = "auto", variant: str = "small", **kwargs):
    """The model from its factory, its weights checked and loaded safely, wrapped in a predictor."""
    from unimed_core.inference.boundary_refiner import bundle_boundary_refiner
    from unimed_core.inference.candidate_rescorer import bundle_rescorer
    from unimed_core.inference.predictor import UniMedPredictor
    from unimed_core.model.factory import unimed_base, unimed_small
    from unimed_core.model.weights import load_weights

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    label_map = LabelMap.from_metadata(BUNDLE_DIR / "configs" / "metadata.json")
    factory = {"small": unimed_small, "base": unimed_base}[variant]
    model = load_weights(factory(label_map), weights)
    # the working grid the weights were trained on and the benchmark's choices of output paths: one place, the
    # bundle's inference config
    config = ConfigParser.load_config_file(BUNDLE_DIR / "configs" / "inference.json")
    chosen = {k: config["predictor"][k] for k in PREDICTOR_CHOICES if k in config["predictor"]}
    kwargs = {"spacing": config["spacing"], "roi_size": config["roi_size"], **chosen, **kwargs}
    if FAMILIARITY.is_file():
        kwargs.setdefault("familiarity", FAMILIARITY)
    if DEFAULT_RESCORER.is_file() and "rescorer" not in kwargs:  # only for the weights it was fitted for
        kwargs["rescorer"] = bundle_rescorer(DEFAULT_RESCORER, weights)
    if DEFAULT_BOUNDARY_REFINER.is_file() and "boundary_refiner" not in kwargs:  # likewise
        kwargs["boundary_refiner"] = bundle_boundary_refiner(DEFAULT_BOUNDARY_REFINER, weights)
    return UniMedPredictor(model, label_map, device=device, amp=device.startswith("cuda"), **kwargs)


def _inputs(args: argparse.Namespace) -> list[Path]:
    if args.datalist:
        from unimed_core.data.datalist import load_datalist

        items = load_datalist(args.datalist, LabelMap.default(), check_files=True)
        return [Path(item["image"]) for item in items.get(args.section, [])]
    return [Path(p) for p in args.inputs]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="unimed-infer", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="*", help="NIfTI / NRRD / MHA files or DICOM series folders")
    parser.add_argument("--datalist", help="a datalist JSON instead of inputs")
    parser.add_argument("--section", default="test", help="datalist section to run (default: test)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS), help="weights file (sha256 beside it)")
    parser.add_argument("--variant", default="small", choices=["small", "base"])
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    parser.add_argument("--classes", nargs="+", help="only these classes (names from the label map)")
    parser.add_argument("--click", type=parse_point, action="append", default=[], help="positive click x,y,z")
    parser.add_argument("--negative-click", type=parse_point, action="append", default=[], help="negative click")
    parser.add_argument("--series", help="SeriesInstanceUID to read from DICOM folders holding several series")
    parser.add_argument("--box", type=parse_box, help="segment the structure in this box: x1,y1,z1,x2,y2,z2 RAS mm")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (warnings are still printed)")
    args = parser.parse_args(argv)
    if not args.inputs and not args.datalist:
        parser.error("give input volumes or --datalist")
    if args.box and (args.click or args.negative_click):
        parser.error("give either --box or clicks, not both")
    try:
        from tqdm import tqdm

        inputs = _inputs(args)
        predictor = build_predictor(args.weights, args.device, args.variant)
        out_dir = Path(args.out)
        summary = []
        for path in tqdm(inputs, desc="UniMed", unit="volume", disable=args.quiet):
            volume = read_image(path, series_uid=args.series)
            name = case_name(path)
            if args.click or args.box:
                if args.box:
                    kind, mask = "box", predictor.segment_box(volume, np.array(args.box))
                else:
                    kind = "click"
                    mask = predictor.segment_clicks(
                        volume, np.array(args.click), np.array(args.negative_click).reshape(-1, 3)
                    )
                warnings = predictor.familiarity_warnings(volume)
                _print_warnings(path, warnings)
                out_dir.mkdir(parents=True, exist_ok=True)
                written = {f"{kind}_mask": write_label(mask, volume, out_dir / f"{name}_{kind}.nii.gz")}
                summary.append(
                    {
                        "input": str(path),
                        "outputs": {k: str(v) for k, v in written.items()},
                        "voxels": int(mask.sum()),
                        "warnings": warnings,
                    }
                )
                continue
            prediction = predictor.predict(volume, classes=args.classes)
            _print_warnings(path, prediction.warnings)
            written = write_prediction(prediction, volume, out_dir, predictor.label_map, name)
            summary.append(
                {
                    "input": str(path),
                    "outputs": {k: str(v) for k, v in written.items()},
                    "segments": {
                        predictor.label_map.mask_classes[int(i)]: int(n)
                        for i, n in zip(*np.unique(prediction.labels, return_counts=True))
                        if i > 0
                    },
                    "detections": prediction.detections(),
                    "classes": prediction.class_probabilities,
                    "warnings": prediction.warnings,
                }
            )
        atomic_write_json(out_dir / "summary.json", summary)
    except (ValueError, OSError) as e:  # bad input: one clear line, exit status 2
        print(f"unimed-infer: error: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(json.dumps(summary, indent=2))
    return 0


def _print_warnings(path: Path, warnings: Sequence[dict]) -> None:
    """Warnings go to stderr whatever ``--quiet`` says: they are about the results, not the progress."""
    for line in warning_lines(warnings):
        print(f"unimed-infer: {path}: {line}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
