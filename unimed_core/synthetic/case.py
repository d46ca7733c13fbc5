"""Synthetic 3D abdominal studies (CT-like and MR-like) with masks, lesion boxes and image labels.

A case is an anatomy drawn in world millimetres (RAS) from a seed — a trunk with fat and muscle layers, spine,
aorta and IVC, a liver, a spleen and two kidneys as deformed superquadrics — plus lesions of two kinds that
look different ("cyst": round, homogeneous, sharp; "tumor": irregular, heterogeneous, often with a necrotic
core). Anatomy and lesions are fixed in world space before any grid exists, so the same seed gives the same
physical anatomy at any shape, spacing and orientation; the grid is then sampled from the case's affine.

Everything is vectorised and evaluated inside bounding boxes (organs, lesions) or slabs (the trunk), so a
256³ case takes a few seconds and 512×512×300 fits in memory.

Example:
    >>> case = generate_case(0, SyntheticConfig(shape=(48, 48, 40), spacing=(8.0, 8.0, 9.0)))
    >>> case.image.shape, case.image.dtype, case.label.dtype
    ((48, 48, 40), dtype('float32'), dtype('int16'))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from unimed_core.label_map import LabelMap

__all__ = [
    "SyntheticConfig",
    "SyntheticLesion",
    "SyntheticCase",
    "orientation_affine",
    "generate_case",
    "DOMAINS",
]

# Tissue codes of the internal "what is here" volume; label ids and intensities are looked up from them.
# Organ codes are above VISCERA so that an organ may only replace abdominal cavity (or an earlier organ).
AIR, FAT, MUSCLE, BONE, AORTA, IVC, VISCERA, LIVER, SPLEEN, KIDNEY_L, KIDNEY_R, CYST, TUMOR, CORE = range(14)
N_CODES = 14
ORGANS = {"liver": LIVER, "spleen": SPLEEN, "kidney_left": KIDNEY_L, "kidney_right": KIDNEY_R}
LESION_KINDS = ("cyst", "tumor")

# (mean, per-case jitter sd) per tissue code. CT in Hounsfield units (portal-venous-like contrast);
# MR is T2-like in arbitrary units: the contrast order differs (cyst brightest, spleen brighter than liver).
_CT = {AIR: (-1000, 0), FAT: (-100, 8), MUSCLE: (50, 4), BONE: (450, 60), AORTA: (180, 20), IVC: (140, 15),
       VISCERA: (35, 5), LIVER: (60, 5), SPLEEN: (50, 5), KIDNEY_L: (150, 12), KIDNEY_R: (150, 12),
       CYST: (10, 4), TUMOR: (105, 8), CORE: (25, 6)}  # fmt: skip
_MR = {AIR: (0, 0), FAT: (650, 40), MUSCLE: (180, 15), BONE: (320, 30), AORTA: (60, 10), IVC: (90, 10),
       VISCERA: (350, 30), LIVER: (250, 20), SPLEEN: (460, 30), KIDNEY_L: (520, 30), KIDNEY_R: (520, 30),
       CYST: (1500, 80), TUMOR: (650, 50), CORE: (1100, 60)}  # fmt: skip
_DOMAINS = {"ct": _CT, "mr": _MR}
DOMAINS = tuple(_DOMAINS)  # the imaging domains a case can have


@dataclass
class SyntheticConfig:
    """How one synthetic case is drawn and sampled.

    Args:
        domain: "ct" (Hounsfield-like, Gaussian noise, slight blur) or "mr" (T2-like arbitrary units,
            multiplicative bias field, Rician noise).
        shape: grid size (X, Y, Z) in voxels.
        spacing: voxel size in mm along the three array axes (anisotropic allowed).
        orientation: axis code of the array axes ("RAS", "LPS", "PIL", ...) or a 4×4 voxel→world (RAS mm)
            affine; with a code the grid is centred on the world origin. The anatomy is centred on the grid.
        lesion_presence: probability that a lesion kind is present in a case (per kind).
        lesions_per_kind: (min, max) number of lesions of a kind when that kind is present.
        lesion_radius_mm: (min, max) lesion radius; drawn log-uniformly, capped by the host organ's size.
        organ_weights: relative frequency of lesion hosts (liver, spleen, kidney_left, kidney_right).
        min_lesion_voxels: lesions covering fewer voxels at this spacing are dropped (too small to see).
        noise: noise sd (HU for CT, units for MR); None for the domain default (10 HU / 20 units).
        blur_voxels: Gaussian blur sigma in voxels (partial volume).
    """

    domain: str = "ct"
    shape: tuple[int, int, int] = (96, 96, 80)
    spacing: tuple[float, float, float] = (4.0, 4.0, 4.5)
    orientation: str | np.ndarray = "RAS"
    lesion_presence: float = 0.5
    lesions_per_kind: tuple[int, int] = (1, 3)
    lesion_radius_mm: tuple[float, float] = (3.0, 30.0)
    organ_weights: dict[str, float] = field(
        default_factory=lambda: {"liver": 0.65, "spleen": 0.1, "kidney_left": 0.125, "kidney_right": 0.125}
    )
    min_lesion_voxels: int = 3
    noise: float | None = None
    blur_voxels: float = 0.6

    def __post_init__(self) -> None:
        if self.domain not in _DOMAINS:
            raise ValueError(f"domain must be one of {sorted(_DOMAINS)}, got {self.domain!r}")
        self.shape = tuple(int(s) for s in self.shape)
        self.spacing = tuple(float(s) for s in self.spacing)
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"shape must be 3 positive ints, got {self.shape}")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"spacing must be 3 positive numbers (mm), got {self.spacing}")
        if not 0 <= self.lesion_presence <= 1:
            raise ValueError(f"lesion_presence must be in [0, 1], got {self.lesion_presence}")
        lo, hi = self.lesions_per_kind
        if not 0 <= lo <= hi:
            raise ValueError(f"lesions_per_kind must be (min, max) with 0 <= min <= max, got {self.lesions_per_kind}")
        rlo, rhi = self.lesion_radius_mm
        if not 0 < rlo <= rhi:
            raise ValueError(f"lesion_radius_mm must be (min, max) with 0 < min <= max, got {self.lesion_radius_mm}")
        unknown = set(self.organ_weights) - set(ORGANS)
        if unknown or not self.organ_weights or min(self.organ_weights.values()) < 0:
            raise ValueError(f"organ_weights must map some of {list(ORGANS)} to weights >= 0, got {self.organ_weights}")
        if isinstance(self.orientation, str):
            orientation_affine(self.orientation, self.spacing, self.shape)  # validates the code
        else:
            aff = np.asarray(self.orientation, dtype=float)
            if aff.shape != (4, 4) or abs(np.linalg.det(aff[:3, :3])) < 1e-9:
                raise ValueError(f"orientation must be an axis code or an invertible 4x4 affine, got {aff}")

    def affine(self) -> np.ndarray:
        """The case's voxel→world (RAS mm) affine."""
        if isinstance(self.orientation, str):
            return orientation_affine(self.orientation, self.spacing, self.shape)
        return np.asarray(self.orientation, dtype=float).copy()


@dataclass(frozen=True)
class SyntheticLesion:
    """One drawn lesion.

    Attributes:
        class_name: "cyst" or "tumor".
        mask_id: its id in the label volume (every lesion of a kind shares it; instances are its components).
        organ: host organ name.
        center_mm: centre in world RAS mm.
        radius_mm: nominal radius.
        box_mm: world RAS box (x1, y1, z1, x2, y2, z2) covering the physical extent of its voxels
            (voxel centres ± half a voxel), so it contains every voxel centre of its mask.
        num_voxels: voxels it covers on this grid.
    """

    class_name: str
    mask_id: int
    organ: str
    center_mm: tuple[float, float, float]
    radius_mm: float
    box_mm: tuple[float, float, float, float, float, float]
    num_voxels: int


@dataclass
class SyntheticCase:
    """A generated study: ``image`` (float32), ``label`` (int16 label-map ids), ``affine`` (voxel→RAS mm)."""

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    lesions: list[SyntheticLesion]
    image_labels: list[str]
    domain: str

    @property
    def boxes(self) -> np.ndarray:
        """(K, 6) world RAS mm boxes, corner mode XYZXYZ."""
        return np.array([les.box_mm for les in self.lesions], dtype=float).reshape(-1, 6)

    @property
    def box_labels(self) -> list[str]:
        return [les.class_name for les in self.lesions]


def orientation_affine(code: str, spacing: Sequence[float], shape: Sequence[int]) -> np.ndarray:
    """Voxel→world (RAS mm) affine of a grid with axis code ``code`` (nibabel's meaning: the direction each
    array axis increases towards), voxel size ``spacing`` and its centre at the world origin."""
    if not isinstance(code, str) or len(code) != 3:
        raise ValueError(f"orientation code must be 3 letters like 'RAS' or 'LPS', got {code!r}")
    try:
        ornt = nib.orientations.axcodes2ornt(tuple(code.upper()))
    except ValueError as e:
        raise ValueError(f"orientation code {code!r} is not a valid axis code: {e}") from None
    if np.isnan(ornt).any() or len(set(ornt[:, 0])) != 3:
        raise ValueError(f"orientation code {code!r} must name each of R/L, A/P, S/I once")
    aff = np.eye(4)
    aff[:3, :3] = 0
    for axis, (world, sign) in enumerate(ornt):
        aff[int(world), axis] = sign * float(spacing[axis])
    aff[:3, 3] = -aff[:3, :3] @ ((np.asarray(shape, dtype=float) - 1) / 2)
    return aff


# --------------------------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class _Blob:
    """A superquadric in world mm with a smooth random boundary; ``level(...) <= 1`` inside."""

    center: np.ndarray
    radii: np.ndarray
    rotation: np.ndarray  # columns: the local axes in world coordinates
    exponent: float = 2.0
    taper: float = 0.0  # local axes 1, 2 scale with (1 + taper * q0): the liver's thin left lobe
    waves: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))  # kx, ky, kz, amplitude, phase

    def half_extent(self) -> np.ndarray:
        """Half-size (mm) of a world axis-aligned box that holds the shape (an oriented box's bound)."""
        ext = self.radii * (1 + np.abs(self.waves[:, 3]).sum())
        ext = ext * np.array([1.0, 1 + abs(self.taper), 1 + abs(self.taper)])
        return np.abs(self.rotation) @ ext + 1.0

    def level(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        d = (x - np.float32(self.center[0]), y - np.float32(self.center[1]), z - np.float32(self.center[2]))
        r = self.rotation
        q = [sum(d[w] * np.float32(r[w, i] / self.radii[i]) for w in range(3)) for i in range(3)]
        if self.taper:
            f = np.maximum(1 + np.float32(self.taper) * np.clip(q[0], -1, 1), np.float32(0.3))
            q[1], q[2] = q[1] / f, q[2] / f
        if self.exponent == 2.0:
            s = np.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2])
        else:
            e = np.float32(self.exponent)
            s = (np.abs(q[0]) ** e + np.abs(q[1]) ** e + np.abs(q[2]) ** e) ** np.float32(1 / e)
        for kx, ky, kz, amp, phase in self.waves:
            s = s - np.float32(amp) * np.sin(np.float32(kx) * q[0] + np.float32(ky) * q[1] + np.float32(kz) * q[2]
                                             + np.float32(phase))  # fmt: skip
        return s


def _waves(rng: np.random.Generator, n: int, freq: tuple[float, float], amp: tuple[float, float]) -> np.ndarray:
    dirs = rng.normal(size=(n, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    k = dirs * rng.uniform(*freq, size=(n, 1))
    return np.column_stack([k, rng.uniform(*amp, size=n), rng.uniform(0, 2 * np.pi, size=n)])


def _rotation(rng: np.random.Generator, max_deg: Sequence[float], base_deg: Sequence[float] = (0, 0, 0)):
    angles = np.asarray(base_deg, dtype=float) + rng.uniform(-1, 1, size=3) * np.asarray(max_deg, dtype=float)
    return Rotation.from_euler("xyz", angles, degrees=True).as_matrix()


@dataclass(frozen=True)
class _Anatomy:
    center: np.ndarray  # body centre (world mm)
    a: float  # trunk semi-axis left-right (mm)
    b: float  # trunk semi-axis anterior-posterior (mm)
    p: float  # superquadric exponent of the trunk's cross-section
    fat: float
    muscle: float
    wobble: np.ndarray  # amplitude, wavelength (mm), phase of the trunk's variation along z
    spine_y: float
    spine_r: float
    disc: np.ndarray  # period (mm), phase
    organs: tuple[tuple[int, _Blob], ...]  # painted in order (later wins)

    def codes(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Tissue codes of the trunk (no organs) at broadcastable world coordinates."""
        dx, dy, dz = (x - np.float32(self.center[0]), y - np.float32(self.center[1]), z - np.float32(self.center[2]))
        amp, wavelength, phase = self.wobble
        scale = 1 + np.float32(amp) * np.sin(dz * np.float32(2 * np.pi / wavelength) + np.float32(phase))
        ax, ay = np.abs(dx) / scale, np.abs(dy) / scale
        p = np.float32(self.p)

        def inside(sa: float, sb: float) -> np.ndarray:
            return (ax / np.float32(sa)) ** p + (ay / np.float32(sb)) ** p <= 1

        shape = np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z))
        out = np.zeros(shape, dtype=np.uint8)
        out[np.broadcast_to(inside(self.a, self.b), shape)] = FAT
        t = self.fat
        out[np.broadcast_to(inside(self.a - t, self.b - t), shape)] = MUSCLE
        t += self.muscle
        out[np.broadcast_to(inside(self.a - t, self.b - t), shape)] = VISCERA
        sy, sr = np.float32(self.spine_y), np.float32(self.spine_r)
        period, disc_phase = self.disc
        bone = np.cos(dz * np.float32(2 * np.pi / period) + np.float32(disc_phase)) > -0.7  # discs between bodies
        vertebra = (dx * dx + (dy - sy) ** 2 <= sr * sr) & bone
        arch = (dx * dx + (dy - sy + sr + 14) ** 2 <= 81) & bone
        out[np.broadcast_to(vertebra | arch, shape)] = BONE
        out[np.broadcast_to((dx + 14) ** 2 + (dy - sy - sr - 14) ** 2 <= 121, shape)] = AORTA
        out[np.broadcast_to((dx - 22) ** 2 + (dy - sy - sr - 12) ** 2 <= 100, shape)] = IVC
        return out

    def paint_organs(self, codes: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> None:
        for code, blob in self.organs:
            inside = (codes >= VISCERA) & (blob.level(x, y, z) <= 1)
            codes[inside] = code

    def code_at(self, point: np.ndarray) -> int:
        x, y, z = (np.array([v], dtype=np.float32) for v in point)
        codes = self.codes(x, y, z)
        self.paint_organs(codes, x, y, z)
        return int(codes[0])


def _sample_anatomy(rng: np.random.Generator, center: np.ndarray) -> _Anatomy:
    center = center + rng.uniform([-10, -10, -20], [10, 10, 20])
    a, b = rng.uniform(140, 175), rng.uniform(100, 130)
    fat, muscle = rng.uniform(12, 30), rng.uniform(8, 15)
    ai, bi = a - fat - muscle, b - fat - muscle  # the abdominal cavity's semi-axes
    spine_r = rng.uniform(16, 20)
    spine_y = -bi + spine_r + rng.uniform(0, 8)
    c = center
    liver = _Blob(
        center=c + [ai * rng.uniform(0.25, 0.35), bi * rng.uniform(-0.05, 0.15), rng.uniform(40, 70)],
        radii=np.array([ai * rng.uniform(0.65, 0.8), bi * rng.uniform(0.55, 0.7), rng.uniform(65, 85)]),
        rotation=_rotation(rng, (8, 8, 10)),
        exponent=rng.uniform(2.0, 2.6),
        taper=rng.uniform(0.3, 0.5),
        waves=_waves(rng, 4, (1.5, 3.0), (0.03, 0.08)),
    )
    spleen = _Blob(
        center=c + [-ai * rng.uniform(0.6, 0.7), -bi * rng.uniform(0.2, 0.35), rng.uniform(45, 70)],
        radii=np.array([ai * rng.uniform(0.22, 0.3), bi * rng.uniform(0.22, 0.3), rng.uniform(45, 60)]),
        rotation=_rotation(rng, (8, 8, 10), base_deg=(0, 0, -25)),
        exponent=2.2,
        waves=_waves(rng, 3, (1.5, 3.0), (0.03, 0.07)),
    )
    kidneys = []
    for side, code in ((-1, KIDNEY_L), (1, KIDNEY_R)):  # RAS: patient left is -x
        kidneys.append((code, _Blob(
            center=c + [side * ai * rng.uniform(0.45, 0.55), -bi * rng.uniform(0.45, 0.6),
                        rng.uniform(-60, -30) - (8 if side > 0 else 0)],
            radii=np.array([rng.uniform(22, 30), rng.uniform(20, 26), rng.uniform(45, 60)]),
            rotation=_rotation(rng, (5, 5, 10), base_deg=(0, side * 10, -side * 20)),
            waves=_waves(rng, 3, (1.5, 3.0), (0.02, 0.05)),
        )))  # fmt: skip
    return _Anatomy(
        center=center, a=a, b=b, p=rng.uniform(2.1, 2.6), fat=fat, muscle=muscle,
        wobble=np.array([rng.uniform(0.02, 0.05), rng.uniform(250, 400), rng.uniform(0, 2 * np.pi)]),
        spine_y=spine_y, spine_r=spine_r, disc=np.array([rng.uniform(28, 34), rng.uniform(0, 2 * np.pi)]),
        organs=((LIVER, liver), (SPLEEN, spleen), *kidneys),
    )  # fmt: skip


@dataclass(frozen=True)
class _LesionSpec:
    kind: str
    organ: str
    blob: _Blob
    radius: float
    core: float  # necrotic core as a fraction of the level set (0: none)


def _sample_lesions(rng: np.random.Generator, anatomy: _Anatomy, config: SyntheticConfig) -> list[_LesionSpec]:
    organs = {code: blob for code, blob in anatomy.organs}
    names = list(config.organ_weights)
    weights = np.array([config.organ_weights[n] for n in names], dtype=float)
    weights = weights / weights.sum() if weights.sum() > 0 else np.full(len(names), 1 / len(names))
    specs: list[_LesionSpec] = []
    for kind in LESION_KINDS:
        present = rng.random() < config.lesion_presence
        count = int(rng.integers(config.lesions_per_kind[0], config.lesions_per_kind[1] + 1)) if present else 0
        for _ in range(count):
            organ = names[int(rng.choice(len(names), p=weights))]
            host = organs[ORGANS[organ]]
            cap = 0.5 * float(host.radii.min())
            rlo, rhi = config.lesion_radius_mm[0], min(config.lesion_radius_mm[1], cap)
            radius = float(np.exp(rng.uniform(np.log(min(rlo, rhi)), np.log(rhi))))
            # Centre: a point of the host organ (as finally painted), away from the other lesions; all in world
            # space so the same seed places the same lesions on any grid.
            for _try in range(40):
                u = rng.normal(size=3)
                u *= rng.uniform() ** (1 / 3) * (1 - radius / float(host.radii.min())) / np.linalg.norm(u)
                point = host.center + host.rotation @ (u * host.radii)
                far = all(np.linalg.norm(point - s.blob.center) > radius + s.radius + 3 for s in specs)
                if far and anatomy.code_at(point) == ORGANS[organ]:
                    break
            else:
                continue
            if kind == "cyst":
                blob = _Blob(point, radius * rng.uniform(0.85, 1.15, size=3), _rotation(rng, (180, 90, 180)),
                             waves=_waves(rng, 2, (1.0, 2.0), (0.01, 0.03)))  # fmt: skip
                core = 0.0
            else:
                blob = _Blob(point, radius * rng.uniform(0.75, 1.25, size=3), _rotation(rng, (180, 90, 180)),
                             waves=_waves(rng, 4, (3.0, 6.0), (0.05, 0.12)))  # fmt: skip
                core = rng.uniform(0.4, 0.65) if radius >= 8 and rng.random() < 0.6 else 0.0
            specs.append(_LesionSpec(kind, organ, blob, radius, core))
    return specs


# --------------------------------------------------------------------------------------------- grid


def _grid_coords(affine: np.ndarray, lo: Sequence[int], hi: Sequence[int]) -> tuple[np.ndarray, ...]:
    """World x, y, z of the voxel centres of the sub-box [lo, hi), as broadcastable float32 arrays.

    Terms with a zero affine entry are skipped, so for an axis-aligned grid x depends on one axis only and
    the arrays stay small until they meet.
    """
    idx = [np.arange(lo[d], hi[d], dtype=np.float32).reshape([-1 if e == d else 1 for e in range(3)]) for d in range(3)]
    out = []
    for w in range(3):
        acc = np.full((1, 1, 1), affine[w, 3], dtype=np.float32)
        for d in range(3):
            if affine[w, d] != 0:
                acc = acc + np.float32(affine[w, d]) * idx[d]
        out.append(acc)
    return tuple(out)


def _index_box(affine: np.ndarray, center: np.ndarray, half: np.ndarray, shape: Sequence[int]):
    """Voxel index box [lo, hi) covering the world box centre ± half, clipped to the grid; None if empty."""
    corners = np.array([[center[0] + sx * half[0], center[1] + sy * half[1], center[2] + sz * half[2], 1.0]
                        for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])  # fmt: skip
    ijk = (np.linalg.inv(affine) @ corners.T)[:3]
    lo = np.maximum(np.floor(ijk.min(axis=1)).astype(int), 0)
    hi = np.minimum(np.ceil(ijk.max(axis=1)).astype(int) + 1, np.asarray(shape))
    return None if np.any(hi <= lo) else (lo, hi)


def _slices(lo: np.ndarray, hi: np.ndarray) -> tuple[slice, ...]:
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _rasterise(anatomy, specs, affine, shape, config, label_map):
    """Tissue codes on the grid, and the lesions actually drawn (with their voxel boxes)."""
    codes = np.empty(shape, dtype=np.uint8)
    chunk = max(1, 8_000_000 // (shape[0] * shape[1]))  # slabs bound the memory of the trunk's temporaries
    for k in range(0, shape[2], chunk):
        lo, hi = (0, 0, k), (shape[0], shape[1], min(k + chunk, shape[2]))
        codes[:, :, lo[2] : hi[2]] = anatomy.codes(*_grid_coords(affine, lo, hi))
    for code, blob in anatomy.organs:
        box = _index_box(affine, blob.center, blob.half_extent(), shape)
        if box is not None:
            sub = codes[_slices(*box)]
            x, y, z = _grid_coords(affine, *box)
            sub[(sub >= VISCERA) & (blob.level(x, y, z) <= 1)] = code
    drawn: list[tuple[SyntheticLesion, tuple[slice, ...], _LesionSpec]] = []
    for spec in specs:
        box = _index_box(affine, spec.blob.center, spec.blob.half_extent(), shape)
        if box is None:
            continue
        sl = _slices(*box)
        sub = codes[sl]
        level = spec.blob.level(*_grid_coords(affine, *box))
        inside = (sub == ORGANS[spec.organ]) & (level <= 1)
        n = int(inside.sum())
        if n < config.min_lesion_voxels:
            continue  # too small to be seen at this spacing: not drawn, not annotated
        sub[inside] = CYST if spec.kind == "cyst" else TUMOR
        if spec.core:
            sub[inside & (level <= spec.core)] = CORE
        box_mm = _world_box(affine, np.stack(np.nonzero(inside)) + box[0][:, None])
        mask_id = _mask_id(label_map, spec.kind)
        lesion = SyntheticLesion(
            class_name=spec.kind, mask_id=mask_id, organ=spec.organ,
            center_mm=tuple(round(float(v), 3) for v in spec.blob.center), radius_mm=round(spec.radius, 3),
            box_mm=box_mm, num_voxels=n,
        )  # fmt: skip
        drawn.append((lesion, sl, spec))
    return codes, drawn


def _world_box(affine: np.ndarray, ijk: np.ndarray) -> tuple[float, ...]:
    """World RAS box (XYZXYZ, mm, rounded to µm) of the voxels ``ijk`` (3, N): their centres ± half a voxel."""
    world = affine[:3, :3] @ ijk.astype(float) + affine[:3, 3:4]
    half = 0.5 * np.abs(affine[:3, :3]).sum(axis=1)  # world half-extent of one voxel
    box = np.concatenate([world.min(axis=1) - half, world.max(axis=1) + half])
    return tuple(float(v) + 0.0 for v in np.round(box, 3))  # + 0.0: no -0.0 in the JSON


def _mask_id(label_map: LabelMap, name: str) -> int:
    for i, n in label_map.mask_classes.items():
        if n == name:
            return i
    raise ValueError(f"the label map has no mask class {name!r}; it has {list(label_map.mask_classes.values())}")


# --------------------------------------------------------------------------------------------- intensities


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], spacing: np.ndarray, cell_mm: float) -> np.ndarray:
    """Unit-sd smooth noise: random values on a coarse grid (``cell_mm`` apart), linearly upsampled.

    The upsampling is separable, one small interpolation matrix per axis applied with ``tensordot`` (BLAS),
    which is several times faster than ``ndimage.zoom`` on 256³.
    """
    coarse = tuple(int(math.ceil(s * sp / cell_mm)) + 2 for s, sp in zip(shape, spacing))
    out = rng.standard_normal(coarse, dtype=np.float32)
    for axis, (n, c) in enumerate(zip(shape, coarse)):
        pos = np.linspace(0, c - 1, n)
        lo = np.minimum(np.floor(pos).astype(int), c - 2) if c > 1 else np.zeros(n, dtype=int)
        frac = pos - lo
        weights = np.zeros((c, n), dtype=np.float32)
        weights[lo, np.arange(n)] = 1 - frac
        if c > 1:
            weights[lo + 1, np.arange(n)] += frac
        out = np.moveaxis(np.tensordot(out, weights, axes=([axis], [0])), -1, axis)
    out = np.ascontiguousarray(out)
    sample = out[::4, ::4, ::4]
    out -= np.float32(sample.mean())
    out /= np.float32(max(float(sample.std()), 1e-6))
    return out


def _render(codes, drawn, config: SyntheticConfig, affine: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    table = _DOMAINS[config.domain]
    mean = np.array([table[c][0] + table[c][1] * rng.standard_normal() for c in range(N_CODES)], dtype=np.float32)
    mean[KIDNEY_R] = mean[KIDNEY_L] + np.float32(0.02 * table[KIDNEY_L][0] * rng.standard_normal())
    image = mean[codes]
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    tex = _smooth_field(rng, codes.shape, spacing, cell_mm=18.0)
    # Abdominal cavity outside the organs: bowel loops and mesentery, soft tissue mottled with fat, a little gas.
    cavity = codes == VISCERA
    tex_cavity = tex[cavity]
    fat_share = 1 / (1 + np.exp(-4 * (tex_cavity - 0.4)))
    values = mean[VISCERA] + (mean[FAT] - mean[VISCERA]) * fat_share
    values[tex_cavity < -2.0] = mean[AIR]
    image[cavity] = values
    organs = (codes >= LIVER) & (codes <= KIDNEY_R)
    scale = 4.0 if config.domain == "ct" else 0.04 * float(mean[LIVER])
    image[organs] += np.float32(scale) * tex[organs]
    del tex, cavity, organs, tex_cavity, fat_share, values
    for lesion, sl, _spec in drawn:
        if lesion.class_name != "tumor":
            continue  # cysts stay homogeneous
        sub, sub_codes = image[sl], codes[sl]
        noise = rng.standard_normal(sub.shape, dtype=np.float32)
        noise = ndimage.gaussian_filter(noise, sigma=np.maximum(2.0 / spacing, 0.5))
        noise /= max(float(noise.std()), 1e-6)
        m = (sub_codes == TUMOR) | (sub_codes == CORE)
        amp = 15.0 if config.domain == "ct" else 0.12 * float(mean[TUMOR])
        sub[m] += np.float32(amp) * noise[m]
    if config.blur_voxels > 0:
        image = ndimage.gaussian_filter(image, sigma=config.blur_voxels, truncate=2.5)
    if config.domain == "ct":
        sd = 10.0 if config.noise is None else config.noise
        image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sd)
        np.clip(image, -1024, 3071, out=image)
    else:
        image *= _bias_field(rng, affine, codes.shape)
        sd = np.float32(20.0 if config.noise is None else config.noise)
        # Rician magnitude noise: |S + n1 + i n2|, which is Rayleigh in the air.
        image += rng.standard_normal(image.shape, dtype=np.float32) * sd
        np.square(image, out=image)
        n2 = rng.standard_normal(image.shape, dtype=np.float32) * sd
        image += np.square(n2, out=n2)
        del n2
        np.sqrt(image, out=image)
    return image


def _bias_field(rng: np.random.Generator, affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Smooth multiplicative field (about ±25 %): exp of a random quadratic in world coordinates."""
    x, y, z = _grid_coords(affine, (0, 0, 0), shape)
    c = affine @ np.append((np.asarray(shape) - 1) / 2, 1.0)
    u, v, w = (x - np.float32(c[0])) / 200, (y - np.float32(c[1])) / 200, (z - np.float32(c[2])) / 200
    k = rng.uniform(-0.15, 0.15, size=6).astype(np.float32)
    # Grouped so that, on an axis-aligned grid, only the last sum and the exp are full-size.
    log_field = (k[0] * u + k[3] * u * u + k[5] * u * v + (k[1] * v + k[4] * v * v)) + k[2] * w
    return np.broadcast_to(np.exp(log_field), shape).astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------- case


def generate_case(
    seed: int | Sequence[int], config: SyntheticConfig | None = None, label_map: LabelMap | None = None
) -> SyntheticCase:
    """Draw one synthetic study.

    Args:
        seed: anatomy, lesions and noise are a function of it (and of ``config``) only.
        config: grid, domain and lesion settings; default :class:`SyntheticConfig`.
        label_map: where the label ids come from; must name liver, spleen, kidney_left, kidney_right, cyst and
            tumor as mask classes. Default: the bundle's.

    Returns:
        A :class:`SyntheticCase`; ``image_labels`` lists the lesion kinds present (in ``image_classes`` order).
    """
    config = config or SyntheticConfig()
    label_map = label_map or LabelMap.default()
    lut = np.zeros(N_CODES, dtype=np.int16)
    for name, code in ORGANS.items():
        lut[code] = _mask_id(label_map, name)
    lut[CYST] = _mask_id(label_map, "cyst")
    lut[TUMOR] = lut[CORE] = _mask_id(label_map, "tumor")
    # Separate streams: the anatomy and lesions must not depend on how many draws the grid needed.
    anat_rng, lesion_rng, render_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    affine = config.affine()
    shape = config.shape
    grid_center = (affine @ np.append((np.asarray(shape) - 1) / 2, 1.0))[:3]
    anatomy = _sample_anatomy(anat_rng, grid_center)
    specs = _sample_lesions(lesion_rng, anatomy, config)
    codes, drawn = _rasterise(anatomy, specs, affine, shape, config, label_map)
    image = _render(codes, drawn, config, affine, render_rng)
    lesions = [d[0] for d in drawn]
    kinds = {les.class_name for les in lesions}
    image_labels = [n for n in label_map.image_classes if n in kinds]
    return SyntheticCase(image, lut[codes], affine, lesions, image_labels, config.domain)
