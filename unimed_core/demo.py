"""``make demo``: run the bundle's inference config on the shipped sample and say what it found.

    python -m unimed_core.demo [--input PATH] [--output DIR] [--weights FILE]

Runs ``bundle/configs/inference.json`` through MONAI's bundle API (``ConfigWorkflow``, as
``python -m monai.bundle run`` does), then prints the segments found (name, volume in mL), the detections
(label, score, world box in RAS mm), the image class probabilities and where the files are.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from unimed_core.paths import BUNDLE_DIR, DEFAULT_WEIGHTS, SAMPLE_DIR, output_dir

__all__ = ["run_inference_config", "format_summary", "main"]


def run_inference_config(
    input_path: str | Path = SAMPLE_DIR,
    out_dir: str | Path | None = None,
    weights: str | Path = DEFAULT_WEIGHTS,
    bundle_dir: str | Path = BUNDLE_DIR,
    **overrides,
) -> list[dict]:
    """Run the bundle's inference workflow; returns the rows of its ``summary.json``.

    Args:
        input_path: a volume file, a folder of volumes or a DICOM series folder.
        out_dir: output folder (default ``outputs/demo``, or ``$UNIMED_OUTPUT/demo``).
        weights: weight file with its ``.sha256`` beside it.
        bundle_dir: the bundle folder (``configs/inference.json``, ``configs/metadata.json``).
        overrides: further config overrides (``spacing``, ``roi_size``, ``device``, ...).
    """
    from monai.bundle import ConfigWorkflow

    bundle_dir = Path(bundle_dir)
    out_dir = Path(out_dir) if out_dir is not None else output_dir() / "demo"
    if not Path(weights).is_file():
        raise ValueError(f"weights {weights} not found: train them (bundle/docs/README.md) or pass --weights")
    workflow = ConfigWorkflow(
        config_file=str(bundle_dir / "configs" / "inference.json"),
        meta_file=str(bundle_dir / "configs" / "metadata.json"),
        logging_file=str(bundle_dir / "configs" / "logging.conf"),
        workflow_type="infer",
        bundle_root=str(bundle_dir),
        input_path=str(input_path),
        output_dir=str(out_dir),
        ckpt_path=str(weights),
        **overrides,
    )
    workflow.initialize()
    missing = workflow.check_properties()
    if missing:
        raise ValueError(f"the inference config lacks the MONAI properties {missing}")
    workflow.run()
    workflow.finalize()
    return json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))


def format_summary(rows: Sequence[dict]) -> str:
    """Human-readable lines for the rows of ``summary.json``."""
    lines = []
    for row in rows:
        lines.append(f"Input: {row['input']}")
        segments = row.get("segments_ml", {})
        lines.append("  Segments:" if segments else "  Segments: none found")
        lines += [f"    {name:<14} {ml:10.1f} mL" for name, ml in segments.items()]
        detections = row.get("detections", [])
        lines.append(f"  Detections ({row.get('coordinates', 'world mm')}):" if detections else "  Detections: none")
        for det in detections:
            box = ", ".join(f"{v:.1f}" for v in det["box"])
            lines.append(f"    {det['label']:<8} score {det['score']:.2f}  box [{box}]")
        classes = row.get("classes", {})
        lines.append("  Image classes: " + ", ".join(f"{k} {v:.2f}" for k, v in classes.items()))
        lines.append("  Files:")
        lines += [f"    {kind:<16} {path}" for kind, path in row.get("outputs", {}).items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unimed_core.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", default=str(SAMPLE_DIR), help="volume, folder or DICOM series (default: sample)")
    parser.add_argument("--output", default=None, help="output folder (default: outputs/demo)")
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS), help="weights file (sha256 beside it)")
    args = parser.parse_args(argv)
    try:
        rows = run_inference_config(args.input, args.output, args.weights)
    except (ValueError, OSError) as e:
        print(f"unimed demo: error: {e}", file=sys.stderr)
        return 2
    print()
    print(format_summary(rows))
    if rows:
        print(f"\nAll outputs and summary.json are in {Path(rows[0]['outputs']['label_nifti']).parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
