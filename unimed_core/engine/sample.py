"""The sample volume shipped in ``bundle/sample/``: one generated CT-like study at 5 mm, with both lesion kinds.

Regenerate with ``python -m unimed_core.engine.sample bundle/sample``. Its reference annotation goes to
``reference/`` (a sub-folder, so a run on ``bundle/sample/`` does not take it for an input).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from unimed_core.data.atomic import atomic_write_json
from unimed_core.data.datalist import COORDINATES
from unimed_core.synthetic.case import SyntheticConfig, generate_case
from unimed_core.synthetic.reproducible_nifti import save_nifti_reproducible

__all__ = ["SAMPLE_NAME", "SAMPLE_SEED", "make_sample", "main"]

SAMPLE_NAME = "sample_ct"
SAMPLE_SEED = (2026, 1)
# 77 x 77 x 72 voxels at 5 mm cover the generated field of view (385 x 385 x 360 mm), the working grid.
SAMPLE_CONFIG = SyntheticConfig(domain="ct", shape=(77, 77, 72), spacing=(5.0, 5.0, 5.0), lesion_presence=1.0)


def make_sample(out_dir: str | Path) -> dict[str, Path]:
    """Write ``sample_ct.nii.gz`` (int16 HU) and ``reference/`` (label volume and findings JSON)."""
    out_dir = Path(out_dir)
    case = generate_case(list(SAMPLE_SEED), SAMPLE_CONFIG)
    image = np.round(case.image).astype(np.int16)  # stored as a scanner would: integer HU
    paths = {
        "image": save_nifti_reproducible(image, case.affine, out_dir / f"{SAMPLE_NAME}.nii.gz", compresslevel=9),
        "label": save_nifti_reproducible(
            case.label, case.affine, out_dir / "reference" / f"{SAMPLE_NAME}_label.nii.gz", compresslevel=9
        ),
    }
    findings = {
        "coordinates": COORDINATES,
        "boxes": case.boxes.tolist(),
        "box_labels": case.box_labels,
        "class": case.image_labels,
    }
    paths["findings"] = atomic_write_json(out_dir / "reference" / f"{SAMPLE_NAME}_findings.json", findings)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the sample into (e.g. bundle/sample)")
    args = parser.parse_args(argv)
    for kind, path in make_sample(args.out_dir).items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
