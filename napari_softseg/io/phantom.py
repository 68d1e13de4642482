"""A multi-rater MS-lesion phantom with an exactly known partial-volume truth.

Built deterministically from the real brain T1 and its FSL FAST partial-volume maps
(``sample_data/brain_t1``):

* **Grid.** The 1 mm isotropic FAST maps are averaged over groups of three axial slices,
  giving a clinical-looking thick-slice FLAIR grid of 1 x 1 x 3 mm (142 x 178 x 47 voxels,
  an axis-aligned RAS affine centred where the source is; the source's slight obliquity is
  dropped so napari slices and paints the phantom plane by plane). Averaging keeps tissue
  partial volume exact.
* **Lesions.** Ellipsoids of 3 to 15 mm diameter, randomly oriented, placed inside white
  matter; two pairs of spheres *touch* (centre distance = sum of radii, so they share a
  single point and no volume); three lesions are *faint* (low contrast). Each lesion is
  rendered at high resolution (every phantom voxel is sampled on a regular
  ``8 x 8 x 24`` grid, i.e. every 1/8 mm) and averaged down, so the truth map holds each
  voxel's lesion fraction. The sum of the truth map equals the analytic volume
  ``sum(4/3 pi a b c) / voxel_volume`` to within the sampling error (about 0.1 %).
* **Image.** FLAIR-like contrast from the tissue fractions (CSF dark, grey matter slightly
  brighter than white matter, lesions hyperintense), a smooth bias field and Gaussian noise:
  ``I = (1 - f) * (0.15 csf + 0.62 gm + 0.50 wm) + f * L`` with ``L = 1.0`` (0.66 if faint),
  then x 1000.
* **Raters** (binary masks, documented styles):

  ``conservative``
      marks only lesion cores: truth fraction >= 0.75.
  ``generous``
      marks anything touched: fraction >= 0.15, then dilated by one voxel in-plane.
  ``jitter``
      redraws every boundary: each lesion re-rendered with semi-axes scaled by a random
      factor in [0.8, 1.2] and its centre moved by up to 0.7 mm, thresholded at 0.5.
  ``misses_small``
      accurate (fraction >= 0.5) but misses faint lesions and those under 5 mm.

  With ``extra_raters=True`` two more (:data:`EXTRA_RATER_STYLES`): ``spurious`` (accurate
  plus false blobs) and ``sloppy`` (dilated, misses lesions), with whom STAPLE and the
  average of the raters differ.
* **Cohort.** ``build_phantom(seed, vary=True)`` gives a different subject per seed
  (:data:`VARIATION`: mirrored anatomy, lesion load, contrasts, noise, bias field), and
  ``with_lesions=False`` the same subject without lesions; any seed builds (lesion placement
  falls back to enumerating the free points, :class:`_Placer`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from napari_softseg import __version__
from napari_softseg.io import geometry
from napari_softseg.io.atomic import write_text_atomic
from napari_softseg.io.nifti import read_nifti, write_nifti
from napari_softseg.io.samples import sample_path

PHANTOM_VERSION = "2"
SEED = 20210917
SLAB = 3  # source slices averaged into one phantom slice
SUPERSAMPLE = (8, 8, 24)  # samples per phantom voxel along each axis (1/8 mm spacing)
TISSUE = {"csf": 0.15, "gm": 0.62, "wm": 0.50}
LESION_INTENSITY, FAINT_INTENSITY = 1.0, 0.66
RATER_STYLES = {
    "conservative": "marks only lesion cores (true fraction >= 0.75)",
    "generous": "marks anything touched (fraction >= 0.15) and dilates by one voxel in-plane",
    "jitter": "redraws each boundary: semi-axes x U(0.8, 1.2), centre moved up to 0.7 mm, fraction >= 0.5",
    "misses_small": "accurate (fraction >= 0.5) but misses faint lesions and those under 5 mm",
}
# (diameter mm, faint) of the isolated lesions; touching pairs are added separately
_ISOLATED = [(3.0, False), (3.5, False), (4.0, True), (4.5, False), (5.0, False), (6.0, True),
             (6.0, False), (7.0, False), (8.0, False), (9.0, False), (10.0, True), (11.0, False),
             (12.0, False), (15.0, False)]
_TOUCHING = [(7.0, 5.0), (6.0, 4.0)]


@dataclass
class Lesion:
    """One ellipsoid, in the source's 1 mm voxel coordinates (x, y, z)."""

    id: int
    centre: tuple[float, float, float]
    semi_axes: tuple[float, float, float]
    rotation: tuple[tuple[float, ...], ...]  # 3x3, columns are the ellipsoid axes
    faint: bool
    touching: int | None = None

    @property
    def volume_mm3(self) -> float:
        a, b, c = self.semi_axes
        return 4.0 / 3.0 * np.pi * a * b * c

    @property
    def diameter_mm(self) -> float:
        return 2.0 * float(np.max(self.semi_axes))


@dataclass
class Phantom:
    image: np.ndarray  # float32 FLAIR-like, (142, 178, 47)
    truth: np.ndarray  # float32 lesion fraction in [0, 1]
    raters: dict[str, np.ndarray]  # name -> uint8 mask
    affine: np.ndarray
    lesions: list[Lesion]

    @property
    def voxel_volume(self) -> float:
        return geometry.voxel_volume(self.affine)

    def analytic_volume_mm3(self) -> float:
        return float(sum(les.volume_mm3 for les in self.lesions))


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def _load_sources():
    from scipy import ndimage as ndi

    bet = read_nifti(sample_path("brain_t1", "bet.nii.gz"))
    gm = read_nifti(sample_path("brain_t1", "pve_1.nii.gz")).data.astype(np.float64)
    wm = read_nifti(sample_path("brain_t1", "pve_2.nii.gz")).data.astype(np.float64)
    lab, n = ndi.label(bet.data > 0)
    brain = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)  # drop the two added spheres
    gm, wm = np.clip(gm * brain, 0, 1), np.clip(wm * brain, 0, 1)
    csf = np.clip(brain - gm - wm, 0, 1)
    return bet.affine, brain, csf, gm, wm


def _thick(vol: np.ndarray) -> np.ndarray:
    nz = vol.shape[2] // SLAB
    return vol[:, :, : nz * SLAB].reshape(vol.shape[0], vol.shape[1], nz, SLAB).mean(axis=3)


class _NoRoom(Exception):
    """500 random draws found no free centre deep enough in white matter."""


class _Placer:
    """Lesion centres in deep white matter, away from the lesions placed so far.

    Random draws first (500 per lesion): for every seed where they succeed the phantom is the
    one of version 2, bit for bit. Where they fail -- the first touching pair needs a centre
    9.5 mm deep in white matter (``ra + 2 rb + 1``), a pocket of about 550 voxels that the
    15, 12 and 11 mm lesions placed before it often fill (2 of the first 12 seeds,
    ``SEED + 2`` and ``SEED + 4``) -- the free points are enumerated and one is drawn among
    them, and a touching pair only needs each partner deep enough on its own (``r + 1`` mm)
    and free of the other lesions. Placement fails only when no point at all is free.
    """

    def __init__(self, wm: np.ndarray, rng: np.random.Generator) -> None:
        from scipy import ndimage as ndi

        depth = ndi.distance_transform_edt(ndi.binary_opening(wm > 0.5, iterations=1))
        depth[:, :, : SLAB * 3] = 0  # keep lesions away from the first and last thick slices
        depth[:, :, wm.shape[2] // SLAB * SLAB - SLAB * 3:] = 0
        self.depth, self.rng = depth, rng
        self.lesions: list[Lesion] = []

    def free(self, c, r: float) -> bool:
        """A lesion of radius ``r`` at ``c`` keeps 2 mm from every lesion placed so far."""
        return all(np.linalg.norm(np.subtract(c, l.centre)) > r + max(l.semi_axes) + 2.0 for l in self.lesions)

    def _free_points(self, r: float) -> np.ndarray:
        pts = np.argwhere(self.depth >= r + 1.0).astype(float)
        if not self.lesions or len(pts) == 0:
            return pts
        centres = np.array([l.centre for l in self.lesions])
        reach = np.array([max(l.semi_axes) for l in self.lesions]) + r + 2.0
        dist = np.linalg.norm(pts[:, None, :] - centres[None], axis=2)
        return pts[np.all(dist > reach[None], axis=1)]

    def centre(self, r: float, enumerate_free: bool = False) -> np.ndarray:
        """A free centre at depth ``>= r + 1`` mm: 500 random draws, then (with
        ``enumerate_free``) one of the enumerated free points, else :class:`_NoRoom`."""
        rng = self.rng
        pts = np.argwhere(self.depth >= r + 1.0)
        for _ in range(500):
            c = pts[rng.integers(len(pts))].astype(float) + rng.uniform(-0.5, 0.5, 3)
            if self.free(c, r):
                return c
        if not enumerate_free:
            raise _NoRoom(r)
        ok = self._free_points(r + 0.9)  # margin for the +-0.5 voxel jitter
        if len(ok) == 0:
            raise RuntimeError(f"could not place a lesion of radius {r:.1f} mm in white matter")
        return ok[rng.integers(len(ok))] + rng.uniform(-0.5, 0.5, 3)

    def isolated(self, diameter: float, faint: bool) -> None:
        r = diameter / 2.0
        rng = self.rng
        axes = (r, r * rng.uniform(0.7, 1.0), r * rng.uniform(0.7, 1.0))
        try:
            c = self.centre(r)
        except _NoRoom:
            c = self.centre(r, enumerate_free=True)
        self.lesions.append(Lesion(len(self.lesions) + 1, tuple(c), axes, tuple(map(tuple, _random_rotation(rng))), faint))

    def touching(self, da: float, db: float) -> None:
        """Two tangent spheres (centre distance = the sum of the radii)."""
        ra, rb = da / 2.0, db / 2.0
        try:
            ca, cb = self._pair_deep(ra, rb)
        except _NoRoom:
            ca, cb = self._pair_anywhere(ra, rb)
        ia = len(self.lesions) + 1
        eye = tuple(map(tuple, np.eye(3)))
        self.lesions.append(Lesion(ia, tuple(ca), (ra, ra, ra), eye, False, touching=ia + 1))
        self.lesions.append(Lesion(ia + 1, tuple(cb), (rb, rb, rb), eye, False, touching=ia))

    def _pair_deep(self, ra: float, rb: float):
        """Version 2's rule: A deep enough for B on any side, B along a random direction."""
        for _ in range(500):
            ca = self.centre(ra + 2 * rb)
            direction = self.rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            cb = ca + (ra + rb) * direction
            if self.depth[tuple(np.round(cb).astype(int))] >= rb + 1.0:
                return ca, cb
        raise _NoRoom(rb)

    def _pair_anywhere(self, ra: float, rb: float):
        """Where :meth:`_pair_deep` failed: A anywhere free, B along one of 200 random
        directions, deep enough and free."""
        for _ in range(200):
            ca = self.centre(ra, enumerate_free=True)
            for _ in range(200):
                d = self.rng.normal(size=3)
                d /= np.linalg.norm(d)
                cb = ca + (ra + rb) * d
                idx = tuple(np.round(cb).astype(int))
                if all(0 <= i < n for i, n in zip(idx, self.depth.shape)) and self.depth[idx] >= rb + 1.0 \
                        and self.free(cb, rb):
                    return ca, cb
        raise RuntimeError("could not place a touching lesion pair in white matter")


def _place_lesions(wm: np.ndarray, rng: np.random.Generator, isolated=_ISOLATED) -> list[Lesion]:
    """The isolated lesions (largest first), then the touching pairs (see :class:`_Placer`)."""
    placer = _Placer(wm, rng)
    for diameter, faint in sorted(isolated, key=lambda t: -t[0]):
        placer.isolated(diameter, faint)
    for da, db in _TOUCHING:
        placer.touching(da, db)
    return placer.lesions


def render_fraction(lesion: Lesion, shape: tuple[int, int, int], scale: float = 1.0,
                    shift=(0.0, 0.0, 0.0)) -> tuple[tuple[slice, ...], np.ndarray]:
    """Fraction of each thick-slice voxel inside ``lesion`` (optionally scaled/shifted).

    Returns the bounding-box slices into the phantom grid and the fraction array there.
    Phantom voxel (i, j, k) covers source coordinates x in [i-0.5, i+0.5],
    y in [j-0.5, j+0.5], z in [3k-0.5, 3k+2.5].
    """
    axes = np.asarray(lesion.semi_axes) * scale
    centre = np.asarray(lesion.centre) + np.asarray(shift)
    rot = np.asarray(lesion.rotation)
    reach = float(axes.max()) + 1.0
    lo = np.floor([(centre[0] - reach), (centre[1] - reach), (centre[2] - reach + 0.5) / SLAB]).astype(int)
    hi = np.ceil([(centre[0] + reach), (centre[1] + reach), (centre[2] + reach + 0.5) / SLAB]).astype(int) + 1
    lo, hi = np.maximum(lo, 0), np.minimum(hi, shape)
    sx, sy, sz = SUPERSAMPLE
    offs = [(np.arange(n) + 0.5) / n for n in (sx, sy, sz)]
    xs = (np.arange(lo[0], hi[0])[:, None] - 0.5 + offs[0][None, :]).ravel()
    ys = (np.arange(lo[1], hi[1])[:, None] - 0.5 + offs[1][None, :]).ravel()
    zs = (SLAB * np.arange(lo[2], hi[2])[:, None] - 0.5 + SLAB * offs[2][None, :]).ravel()
    gx, gy, gz = np.meshgrid(xs - centre[0], ys - centre[1], zs - centre[2], indexing="ij")
    pts = np.stack([gx, gy, gz], axis=-1) @ rot  # coordinates along the ellipsoid's axes
    inside = np.sum((pts / axes) ** 2, axis=-1) <= 1.0
    n = hi - lo
    frac = inside.reshape(n[0], sx, n[1], sy, n[2], sz).mean(axis=(1, 3, 5))
    return tuple(slice(a, b) for a, b in zip(lo, hi)), frac


def _render(lesions, shape, rng=None) -> np.ndarray:
    out = np.zeros(shape, np.float64)
    for les in lesions:
        scale, shift = 1.0, (0.0, 0.0, 0.0)
        if rng is not None:
            scale = rng.uniform(0.8, 1.2)
            d = rng.normal(size=3)
            shift = tuple(d / np.linalg.norm(d) * rng.uniform(0, 0.7))
        box, frac = render_fraction(les, shape, scale, shift)
        out[box] += frac
    return np.clip(out, 0.0, 1.0)


#: cohort variation (``build_phantom(vary=True)``): each subject draws, from a random stream
#: of its own (so that ``vary=False`` stays version 2), a left-right mirror of the anatomy
#: (p = 0.5), a lesion load, tissue contrasts, lesion intensities, noise and a bias field.
VARIATION = {
    "tissue_scale": (0.9, 1.1),  # each tissue intensity x U(...)
    "lesion_intensity": (0.85, 1.1),  # non-faint lesion intensity
    "faint_intensity": (0.62, 0.72),
    "noise_sd": (0.012, 0.03),
    "bias_coef": 0.1,  # each of the 3 bias-field coefficients ~ U(-c, c)
    "keep_isolated": (8, 14),  # lesion load: isolated lesions kept (of 14), the touching pairs always
}
#: raters added by ``build_phantom(extra_raters=True)``: with the four of
#: :data:`RATER_STYLES` alone STAPLE >= 0.5 equals the average >= 0.5 voxel for voxel; with
#: these two they differ (STAPLE trusts the generous and sloppy pair, which agree on dilated
#: boundaries, and marks about half as much again as the average).
EXTRA_RATER_STYLES = {
    "spurious": "accurate (fraction >= 0.5) plus 12 false blobs of 3-6 mm in white matter",
    "sloppy": "marks fraction >= 0.3 dilated by one voxel in-plane, and misses a random 40 % of the lesions",
}


@dataclass(frozen=True)
class _Contrast:
    """Intensities, noise and bias field of one subject (version 2's by default)."""

    tissue: tuple[float, float, float] = (TISSUE["csf"], TISSUE["gm"], TISSUE["wm"])
    lesion: float = LESION_INTENSITY
    faint: float = FAINT_INTENSITY
    noise_sd: float = 0.018
    bias: tuple[float, float, float] = (0.06, -0.04, 0.03)

    @classmethod
    def draw(cls, vrng: np.random.Generator) -> "_Contrast":
        v = VARIATION
        tissue = tuple(TISSUE[k] * vrng.uniform(*v["tissue_scale"]) for k in ("csf", "gm", "wm"))
        lesion, faint = vrng.uniform(*v["lesion_intensity"]), vrng.uniform(*v["faint_intensity"])
        noise_sd = vrng.uniform(*v["noise_sd"])
        bias = tuple(vrng.uniform(-v["bias_coef"], v["bias_coef"], 3))
        return cls(tissue, lesion, faint, noise_sd, bias)


def build_phantom(seed: int = SEED, *, vary: bool = False, with_lesions: bool = True,
                  extra_raters: bool = False) -> Phantom:
    """Generate the phantom (about 5 s); deterministic for a given seed, and every seed builds.

    ``vary``: a cohort subject (:data:`VARIATION`) instead of the fixed anatomy and contrast;
    ``with_lesions=False``: the same subject without any lesion (a lesion-free scan: the image
    equals the lesioned one wherever the truth is 0); ``extra_raters``: add the raters of
    :data:`EXTRA_RATER_STYLES`. The defaults give the phantom of version 2 exactly.
    """
    rng = np.random.default_rng(seed)
    vrng = np.random.default_rng([seed, 7919]) if vary else None
    affine, brain, csf, gm, wm = _load_sources()
    isolated = _ISOLATED
    if vary:
        if vrng.random() < 0.5:  # mirror the anatomy left-right
            brain, csf, gm, wm = (v[::-1].copy() for v in (brain, csf, gm, wm))
        low, high = VARIATION["keep_isolated"]
        keep = np.sort(vrng.choice(len(_ISOLATED), size=int(vrng.integers(low, high + 1)), replace=False))
        isolated = [_ISOLATED[i] for i in keep]
    lesions = _place_lesions(wm, rng, isolated)
    if not with_lesions:
        lesions = []
    contrast = _Contrast.draw(vrng) if vary else _Contrast()
    csf_t, gm_t, wm_t, brain_t = (_thick(v) for v in (csf, gm, wm, brain.astype(float)))
    truth = _render(lesions, gm_t.shape)
    image = _image(contrast, (csf_t, gm_t, wm_t), brain_t, truth, _render([l for l in lesions if l.faint], truth.shape), rng)
    raters = _raters(seed, lesions, truth, brain_t)
    if extra_raters:
        raters.update(_extra_raters(seed, lesions, truth, wm_t))
    return Phantom(
        image=image.astype(np.float32),
        truth=truth.astype(np.float32),
        raters={k: v.astype(np.uint8) for k, v in raters.items()},
        affine=_thick_affine(affine, gm.shape, truth.shape),
        lesions=lesions,
    )


def _image(contrast: _Contrast, tissues, brain_t, truth, faint, rng) -> np.ndarray:
    """FLAIR-like image from the tissue fractions, lesions, bias field and noise."""
    tissue = sum(level * fraction for level, fraction in zip(contrast.tissue, tissues))
    lesion_level = np.where(faint > 0, contrast.faint, contrast.lesion)
    image = (1.0 - truth) * tissue + truth * lesion_level
    shape = truth.shape
    xx, yy, zz = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    b = contrast.bias
    bias = 1.0 + b[0] * xx + b[1] * yy + b[2] * zz * xx
    noise = rng.normal(0.0, contrast.noise_sd, size=shape)
    image = np.where(brain_t > 0, image * bias + noise * (brain_t > 0.5), 0.0)
    return np.clip(image, 0, None) * 1000.0


def _thick_affine(affine: np.ndarray, source_shape, shape) -> np.ndarray:
    """An axis-aligned RAS affine at the source's position: the source's slight obliquity is
    dropped so that napari slices (and paints) the phantom exactly, plane by plane."""
    thick_affine = np.diag([1.0, 1.0, float(SLAB), 1.0])
    centre_src = (np.array(source_shape) - 1) / 2.0
    centre_new = (np.array(shape) - 1) / 2.0
    thick_affine[:3, 3] = (affine[:3, :3] @ centre_src + affine[:3, 3]) - thick_affine[:3, :3] @ centre_new
    return thick_affine


def _in_plane() -> np.ndarray:
    """The 4-neighbourhood of a voxel in its slice (a 3 x 3 x 1 cross)."""
    cross = np.zeros((3, 3, 1), bool)
    cross[1, :, 0] = cross[:, 1, 0] = True
    return cross


def _raters(seed: int, lesions, truth, brain_t) -> dict[str, np.ndarray]:
    """The masks of :data:`RATER_STYLES`."""
    from scipy import ndimage as ndi

    small = [l for l in lesions if l.faint or l.diameter_mm < 5.0]
    return {
        "conservative": truth >= 0.75,
        "generous": ndi.binary_dilation(truth >= 0.15, structure=_in_plane()) & (brain_t > 0),
        "jitter": _render(lesions, truth.shape, rng=np.random.default_rng(seed + 1)) >= 0.5,
        "misses_small": (truth >= 0.5) & ~(_render(small, truth.shape) > 0),
    }


def _extra_raters(seed: int, lesions, truth, wm_t) -> dict[str, np.ndarray]:
    """The masks of :data:`EXTRA_RATER_STYLES` (from a random stream of their own)."""
    from scipy import ndimage as ndi

    erng = np.random.default_rng([seed, 104729])
    deep = np.argwhere(ndi.binary_erosion(wm_t > 0.9, iterations=2) & ~ndi.binary_dilation(truth > 0, iterations=4))
    blobs = []
    for _ in range(12):  # centres in deep white matter, 4 voxels from any lesion
        centre = deep[erng.integers(len(deep))].astype(float) * [1, 1, SLAB] + [0, 0, 1]
        r = erng.uniform(1.5, 3.0)
        blobs.append(Lesion(0, tuple(centre), (r, r, r), tuple(map(tuple, np.eye(3))), False))
    missed = [l for l in lesions if erng.random() < 0.4]
    kept = ~ndi.binary_dilation(_render(missed, truth.shape) > 0, iterations=2)
    return {
        "spurious": (truth >= 0.5) | (_render(blobs, truth.shape) >= 0.5),
        "sloppy": ndi.binary_dilation(truth >= 0.3, structure=_in_plane()) & kept,
    }


def cache_dir() -> Path:
    base = Path(os.environ.get("NAPARI_SOFTSEG_CACHE", Path.home() / ".cache" / "napari-softseg"))
    return base / f"phantom-v{PHANTOM_VERSION}-{SEED}"


def phantom_files(folder: Path | None = None, phantom: Phantom | None = None) -> dict[str, Path]:
    """Write the phantom as NIfTI on first use and return the paths.

    Keys: ``image``, ``truth`` and ``rater_<style>`` for each style; ``lesions`` is a JSON
    file with every lesion's geometry and analytic volume.
    """
    folder = Path(folder) if folder is not None else cache_dir()
    names = {"image": "flair.nii.gz", "truth": "truth.nii.gz", "lesions": "lesions.json"}
    names.update({f"rater_{k}": f"rater_{k}.nii.gz" for k in RATER_STYLES})
    paths = {k: folder / v for k, v in names.items()}
    if all(p.exists() for p in paths.values()):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    ph = phantom if phantom is not None else build_phantom()
    write_nifti(paths["image"], ph.image, affine=ph.affine)
    write_nifti(paths["truth"], ph.truth, affine=ph.affine)
    for k, mask in ph.raters.items():
        write_nifti(paths[f"rater_{k}"], mask, affine=ph.affine)
    info = {
        "version": PHANTOM_VERSION, "seed": SEED, "package_version": __version__,
        "voxel_volume_mm3": ph.voxel_volume, "analytic_volume_mm3": ph.analytic_volume_mm3(),
        "rater_styles": RATER_STYLES, "lesions": [asdict(l) | {"volume_mm3": l.volume_mm3} for l in ph.lesions],
    }
    write_text_atomic(paths["lesions"], json.dumps(info, indent=1))
    return paths
