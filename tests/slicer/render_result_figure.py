"""Render what the UniMed module puts into a Slicer scene, as a PNG for the documentation.

    .venv/bin/python tests/slicer/render_result_figure.py [volume] --out docs/figures/slicer_result.png

Runs ``UniMedLogic.process`` on a volume node in a real MRML scene (PyPI ``slicer-core``, no Qt), exactly as the
module's Apply button does, then draws the nodes it made: the segmentation's segments (their own names and
colours), the ROI markups and the findings table. Slicer's views need its Qt application, which does not run
here, so this is a drawing of the scene's nodes, not a screenshot of the Slicer window.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from unimed_slicer_helpers import MODULE_DIR, ijk_to_ras, load_volume_node, mrml_scene  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _roi_voxel_extent(roi, ras_to_ijk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ROI's extent in the volume's IJK space (lower, upper corners), from its centre and size in RAS."""
    centre = np.zeros(3)
    roi.GetCenter(centre)
    size = np.asarray(roi.GetSize(), dtype=float)
    corners = centre + (np.array(list(np.ndindex(2, 2, 2))) - 0.5) * size
    ijk = (ras_to_ijk @ np.c_[corners, np.ones(8)].T)[:3].T
    return ijk.min(0), ijk.max(0)


def _cell(text: str) -> str:
    try:
        return f"{float(text):.2f}"
    except ValueError:
        return text


def render(volume_path: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    with mrml_scene() as scene:
        import slicer
        from UniMed import UniMedLogic

        node = load_volume_node(volume_path, "volume")
        result = UniMedLogic().process(node, device="cpu")
        image = slicer.util.arrayFromVolume(node).transpose(2, 1, 0)  # KJI → IJK
        ras_to_ijk = np.linalg.inv(ijk_to_ras(node))
        segmentation = result.segmentationNode.GetSegmentation()
        overlay = np.zeros((*image.shape, 4))
        legend = []
        for index in range(segmentation.GetNumberOfSegments()):
            segment_id = segmentation.GetNthSegmentID(index)
            segment = segmentation.GetSegment(segment_id)
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(result.segmentationNode, segment_id, node)
            colour = segment.GetColor()
            overlay[mask.transpose(2, 1, 0) > 0] = (*colour, 0.45)
            legend.append((segment.GetName(), colour))
        rois = [(roi.GetName(), *_roi_voxel_extent(roi, ras_to_ijk)) for roi in result.roiNodes]
        table = result.tableNode.GetTable()
        shown = [c for c in range(table.GetNumberOfColumns()) if table.GetColumnName(c) != "ROI"]  # a node id
        columns = [table.GetColumnName(c) for c in shown]
        rows = [[_cell(table.GetValue(r, c).ToString()) for c in shown] for r in range(table.GetNumberOfRows())]
        del scene

    centre = np.array(image.shape) // 2
    if rois:  # cut through the first detection so that its ROI shows
        centre = np.round((rois[0][1] + rois[0][2]) / 2).astype(int).clip(0, np.array(image.shape) - 1)
    fig = plt.figure(figsize=(12, 6.5))
    views = [("axial (k)", 2), ("coronal (j)", 1), ("sagittal (i)", 0)]
    for col, (title, axis) in enumerate(views):
        ax = fig.add_subplot(2, 3, col + 1)
        cut = [slice(None)] * 3
        cut[axis] = int(centre[axis])
        shown = [a for a in range(3) if a != axis]
        ax.imshow(image[tuple(cut)].T, cmap="gray", origin="lower")
        ax.imshow(overlay[tuple(cut)].transpose(1, 0, 2), origin="lower")
        for name, lo, hi in rois:
            if lo[axis] <= centre[axis] <= hi[axis]:
                a, b = shown
                ax.add_patch(Rectangle((lo[a], lo[b]), hi[a] - lo[a], hi[b] - lo[b], fill=False, color="yellow"))
                ax.text(lo[a], hi[b] + 1, name, color="yellow", fontsize=8)
        ax.set_title(f"{title} = {centre[axis]}")
        ax.set_axis_off()
    ax = fig.add_subplot(2, 1, 2)
    ax.set_axis_off()
    if rows:
        cell = ax.table(cellText=rows[:14], colLabels=columns, loc="upper center", fontsize=8)
        cell.auto_set_font_size(False)
        cell.set_fontsize(8)
    handles = [Rectangle((0, 0), 1, 1, color=c) for _, c in legend]
    fig.legend(handles, [n for n, _ in legend], loc="lower center", ncols=len(legend), fontsize=8)
    fig.suptitle(f"UniMed module results in an MRML scene (slicer-core): {volume_path.name}\n"
                 "segments with the label map's names and colours, ROI markups (yellow), findings table")  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    tmp.replace(out)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("volume", type=Path, nargs="?", default=REPO / "bundle" / "sample" / "sample_ct.nii.gz")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "figures" / "slicer_result.png")
    args = parser.parse_args(argv)
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))
    print(render(args.volume, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
