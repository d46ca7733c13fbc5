"""``unimed-prepare-dataset``: a public dataset, in its own layout, → UniMed's datalist (DESIGN.md §4).

Examples:
    unimed-prepare-dataset msd /data/Task03_Liver --out data/liver
    unimed-prepare-dataset msd /data --download Task09_Spleen --out data/spleen
    unimed-prepare-dataset luna16 /data/LUNA16 --out data/luna16
    unimed-prepare-dataset totalsegmentator /data/Totalsegmentator_dataset_v201 --out data/tseg --structures liver spleen aorta
    unimed-prepare-dataset kits /data/kits23 --out data/kits

Each writes ``OUT/datalist.json`` (with the label map its classes use: the bundle's, extended by the dataset's
new classes) and, where ids had to be renumbered or masks merged, ``OUT/labels/``; the dataset's own files are
only read. Then train with ``python -m monai.bundle run --config_file bundle/configs/train.json
--dataset_dir OUT --label_map "\\$unimed_core.data.datalist.label_map_from_datalist(@datalist)"``
(bundle/docs/README.md has each recipe). Exit status 2 and one line naming the file for bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from unimed_core.label_map import DEFAULT_METADATA, LabelMap

__all__ = ["main"]


def _pair(text: str) -> tuple[str, str]:
    source, sep, target = text.partition("=")
    if not sep or not source or not target:
        raise argparse.ArgumentTypeError(f"expected DATASET_NAME=UNIMED_NAME, got {text!r}")
    return source, target


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unimed-prepare-dataset", description=__doc__.split("\n\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("dir", help="the dataset's folder")
    common.add_argument("--out", required=True, help="output folder for datalist.json (and renumbered labels)")
    common.add_argument(
        "--metadata", default=str(DEFAULT_METADATA), help="bundle metadata.json whose label map to extend"
    )
    common.add_argument("--validation-fraction", type=float, default=0.2, help="held-out part without a given split")
    common.add_argument("--seed", type=int, default=0, help="draws the validation studies")
    sub = parser.add_subparsers(dest="layout", required=True)
    msd = sub.add_parser("msd", parents=[common], help="a Medical Segmentation Decathlon task folder")
    msd.add_argument(
        "--lesion", action="append", help="a dataset class that is a finding (repeatable); default: by name"
    )
    msd.add_argument("--map", type=_pair, action="append", default=[], help="DATASET_NAME=UNIMED_NAME (repeatable)")
    msd.add_argument("--channel", type=int, help="modality index of multi-modal tasks (BrainTumour, Prostate)")
    msd.add_argument(
        "--download",
        metavar="TASK",
        help="first download TASK (e.g. Task09_Spleen) into DIR through MONAI; needs the internet",
    )
    sub.add_parser("luna16", parents=[common], help="LUNA16: annotations.csv and subset*/*.mhd")
    tseg = sub.add_parser("totalsegmentator", parents=[common], help="TotalSegmentator subject folders and meta.csv")
    tseg.add_argument("--structures", nargs="+", help="structures to merge (default: those in the label map)")
    sub.add_parser("kits", parents=[common], help="KiTS case folders (imaging.nii.gz, segmentation.nii.gz)")
    return parser


def _convert(args: argparse.Namespace) -> Path:
    from unimed_core.datasets import kits, luna16, msd, totalsegmentator

    base = LabelMap.from_metadata(args.metadata)
    common = {"label_map": base, "validation_fraction": args.validation_fraction, "seed": args.seed}
    if args.layout == "msd":
        root = msd.download_task(args.download, args.dir) if args.download else Path(args.dir)
        return msd.convert_msd(
            root, args.out, findings=args.lesion, rename=dict(args.map), channel=args.channel, **common
        )
    if args.layout == "luna16":
        return luna16.convert_luna16(args.dir, args.out, **common)
    if args.layout == "totalsegmentator":
        return totalsegmentator.convert_totalsegmentator(args.dir, args.out, structures=args.structures, **common)
    return kits.convert_kits(args.dir, args.out, **common)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        path = _convert(args)
    except (ValueError, OSError) as e:  # bad input: one clear line, exit status 2
        print(f"unimed-prepare-dataset: error: {e}", file=sys.stderr)
        return 2
    from unimed_core.data.datalist import load_datalist

    splits = load_datalist(path)
    counts = ", ".join(f"{len(items)} {split}" for split, items in splits.items())
    print(f"{path}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
