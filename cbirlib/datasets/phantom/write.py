"""Writing phantoms in the TotalSegmentator layout, and reading back what was recorded.

:func:`make_phantoms` renders each subject (:mod:`~cbirlib.datasets.phantom.render`,
with its :mod:`~cbirlib.datasets.phantom.realism` plan) on threads and writes
``sXXXX/ct.nii.gz``, one ``segmentations/<class>.nii.gz`` per v1 class and
``meta.csv`` (:data:`META_COLUMNS`); :func:`phantom_facts` reads that file back.
"""

from __future__ import annotations

import csv
import gzip
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cbirlib._progress import progress
from cbirlib.datasets.phantom.atlas import _LABEL, Array
from cbirlib.datasets.phantom.realism import (
    PAD_CT,
    REALISM_PRESETS,
    PhantomRealism,
    _apply_plan,
    _plan,
    _reslice,
)
from cbirlib.datasets.phantom.render import _draw_subject, _render
from cbirlib.datasets.totalsegmentator import (
    IMAGE_FILE,
    MASK_FOLDER,
    META_FILE,
    TotalSegmentator,
)
from cbirlib.errors import DatasetError

__all__ = ["META_COLUMNS", "PhantomFacts", "make_phantoms", "phantom_facts"]


def _nifti_gz(data_zyx: npt.NDArray[np.generic], affine: Array) -> bytes:
    import nibabel as nib

    nifti: Any = nib.Nifti1Image
    img = nifti(data_zyx.transpose(2, 1, 0), affine)  # an F-ordered view: no copy
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


def _splits(n: int, rng: np.random.Generator) -> list[str]:
    n_test = max(1, round(0.2 * n)) if n >= 2 else 0
    n_val = max(1, round(0.1 * n)) if n >= 3 else 0
    names = ["test"] * n_test + ["val"] * n_val + ["train"] * (n - n_test - n_val)
    return [names[i] for i in rng.permutation(n)]


def _write_subject(
    out: Path, i: int, *, seed: int, shape: tuple[int, int], realism: PhantomRealism | None
) -> list[dict[str, str]]:
    """Render and write subject ``i`` (one folder per copy); returns their meta rows."""
    rng = np.random.default_rng([seed, i])
    subj = _draw_subject(rng, i, shape[1])
    plan = _plan(realism, seed, i)
    subj, rows, cols = _apply_plan(subj, plan, shape)
    tilt_tan = math.tan(math.radians(plan.tilt_deg))
    r = _render(
        subj, rng, (rows, cols), mr=plan.mr, tilt_step=subj.thickness * tilt_tan,
        brain=plan.skull_stripped,
    )  # fmt: skip
    image, labels = r.image, r.labels
    if plan.skull_stripped and r.brain is not None:
        image = np.where(r.brain, image, np.float32(0.0))
        labels = np.where(r.brain, labels, np.uint8(0)).astype(np.uint8)
    if plan.mr is not None:  # smooth in-plane bias field, then the intensity scale
        gy = np.linspace(-1, 1, rows, dtype=np.float32)[:, None]
        gx = np.linspace(-1, 1, cols, dtype=np.float32)[None, :]
        field = 1 + 0.3 * (plan.u[3] - 0.5) * gx + 0.3 * (plan.u[4] - 0.5) * gy
        image = (image * (field * plan.mr_scale)).astype(np.float32)
    age, sex = int(rng.integers(20, 90)), ("m", "f")[int(rng.integers(2))]
    source = f"s{i:04d}"
    modality = "CT" if plan.mr is None else "MR"
    study = f"{modality.lower()}{' ' + plan.weighting if plan.weighting else ''} "
    study += subj.fov.replace("_", " ")
    rows_out: list[dict[str, str]] = []
    for thickness in plan.thicknesses or (subj.thickness,):
        img, lab = _reslice(image, labels, subj.thickness, thickness)
        sid = source if not plan.thicknesses else f"{source}_{thickness:g}mm"
        below, above = plan.pad
        if plan.mr is None:
            data: npt.NDArray[Any] = np.clip(np.rint(img), -1024, 3071).astype(np.int16)
            pad_value: float = PAD_CT
        elif plan.mr_scale >= 255:
            data, pad_value = np.clip(np.rint(img), 0, 32767).astype(np.int16), 0
        else:
            data, pad_value = img.astype(np.float32), 0
        if below or above:
            data = np.pad(data, ((below, above), (0, 0), (0, 0)), constant_values=pad_value)
            lab = np.pad(lab, ((below, above), (0, 0), (0, 0)))
        step_y = thickness * tilt_tan
        affine = np.diag([subj.pixel, subj.pixel, thickness, 1.0])
        affine[1, 2] = step_y
        affine[:3, 3] = (
            -(cols - 1) / 2 * subj.pixel,
            -(rows - 1) / 2 * subj.pixel - below * step_y,
            r.z_world[0] - below * thickness,
        )
        _write_files(out / sid, data, lab, affine)
        rows_out.append(
            {
                "image_id": sid, "age": str(age), "gender": sex, "institute": "phantom",
                "study_type": study, "modality": modality,
                "slice_thickness_mm": f"{thickness:g}", "padding_below": str(below),
                "padding_above": str(above), "tilt_deg": f"{plan.tilt_deg:.4f}",
                "skull_stripped": str(int(plan.skull_stripped)), "source_id": source,
            }
        )  # fmt: skip
    return rows_out


def _write_files(
    folder: Path, image: npt.NDArray[Any], labels: npt.NDArray[np.uint8], affine: Array
) -> None:
    """``folder/ct.nii.gz`` and one ``segmentations/<class>.nii.gz`` per v1 class."""
    masks = folder / MASK_FOLDER
    masks.mkdir(parents=True)
    (folder / IMAGE_FILE).write_bytes(_nifti_gz(image, affine))
    present = set(np.unique(labels).tolist())
    empty: bytes | None = None
    for name, value in _LABEL.items():
        if value in present:
            data = _nifti_gz((labels == value).astype(np.uint8), affine)
        else:
            if empty is None:
                empty = _nifti_gz(np.zeros(labels.shape, np.uint8), affine)
            data = empty
        (masks / f"{name}.nii.gz").write_bytes(data)


#: Columns of the ``meta.csv`` that :func:`make_phantoms` writes.
META_COLUMNS: tuple[str, ...] = (
    "image_id", "age", "gender", "institute", "study_type", "split", "modality",
    "slice_thickness_mm", "padding_below", "padding_above", "tilt_deg", "skull_stripped",
    "source_id",
)  # fmt: skip


@dataclass(frozen=True)
class PhantomFacts:
    """What :func:`make_phantoms` recorded about one subject in ``meta.csv``.

    Attributes
    ----------
    modality
        ``"CT"`` or ``"MR"`` (the image file is ``ct.nii.gz`` either way).
    thickness_mm
        Slice thickness.
    padding
        Blank slices ``(below, above)`` the body.
    tilt_deg
        Gantry tilt (0: none).
    skull_stripped
        A brain-only head volume.
    source_id
        The subject it was rendered from (itself, or the original of a re-sliced copy).
    split
        ``train``, ``val`` or ``test``.
    """

    modality: str
    thickness_mm: float
    padding: tuple[int, int]
    tilt_deg: float
    skull_stripped: bool
    source_id: str
    split: str


def phantom_facts(root: str | os.PathLike[str]) -> dict[str, PhantomFacts]:
    """Per-subject facts of a phantom set, read from its ``meta.csv``.

    Parameters
    ----------
    root
        A folder written by :func:`make_phantoms`.

    Returns
    -------
    dict
        Subject id -> :class:`PhantomFacts`, in ``meta.csv`` order.

    Raises
    ------
    DatasetError
        No ``meta.csv``, or one without the columns :func:`make_phantoms` writes.

    Examples
    --------
    >>> import tempfile
    >>> ds = make_phantoms(tempfile.mkdtemp(), 2, shape=(24, 24))
    >>> phantom_facts(ds.root)["s0000"].modality
    'CT'
    """
    path = Path(root) / META_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the phantom meta file ({exc})") from None
    reader = csv.DictReader(text.splitlines(), delimiter=";")
    missing = [c for c in META_COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
        raise DatasetError(
            f"{path}: not a phantom meta file (make_phantoms); missing columns {missing}"
        )
    return {
        row["image_id"]: PhantomFacts(
            modality=row["modality"],
            thickness_mm=float(row["slice_thickness_mm"]),
            padding=(int(row["padding_below"]), int(row["padding_above"])),
            tilt_deg=float(row["tilt_deg"]),
            skull_stripped=row["skull_stripped"] == "1",
            source_id=row["source_id"],
            split=row["split"],
        )
        for row in reader
    }


def make_phantoms(
    root: str | os.PathLike[str],
    n: int,
    *,
    seed: int = 0,
    shape: tuple[int, int] = (128, 128),
    realism: PhantomRealism | str | None = None,
    verbose: bool | None = None,
) -> TotalSegmentator:
    """Write ``n`` synthetic subjects in the TotalSegmentator layout (CT, or MR-like).

    Parameters
    ----------
    root
        Output folder; created if needed, and must be empty.
    n
        Number of subjects rendered (``s0000`` ...). Subject ``i`` cycles through the
        field-of-view presets of :data:`FIELDS_OF_VIEW` (``s0000`` is whole-body). A
        re-sliced subject (``realism``) is written once per thickness, so the data set
        may hold more than ``n`` subjects.
    seed
        Random seed; subject ``i`` depends only on ``(seed, i)`` (and ``realism``).
    shape
        In-plane size ``(rows, columns)`` of every slice (of the square ones, with
        ``realism``'s non-square option).
    realism
        A :class:`PhantomRealism`, the name of a preset of :data:`REALISM_PRESETS`
        (``"hard"``), or None (default): plain CT phantoms, byte-identical to those
        written without the option.
    verbose
        Progress bar: on a terminal only (``None``), always (``True``) or never (``False``).

    Returns
    -------
    TotalSegmentator
        The data set just written. Its ``meta.csv`` has the columns
        :data:`META_COLUMNS` (modality, slice thickness, padding, tilt, ...; read them
        with :func:`phantom_facts`).

    Raises
    ------
    DatasetError
        ``n`` < 1, a ``shape`` smaller than 16 pixels, a non-empty ``root`` or an
        unknown ``realism`` preset.

    Examples
    --------
    >>> import tempfile
    >>> ds = make_phantoms(tempfile.mkdtemp(), 1, shape=(32, 32))
    >>> vol = ds["s0000"]
    >>> vol.labels.contains("brain") and vol.labels.contains("femur_left")
    True
    """
    if n < 1:
        raise DatasetError(f"n must be >= 1, got {n}")
    if len(shape) != 2 or min(shape) < 16:
        raise DatasetError(f"shape must be (rows, columns), each >= 16, got {shape}")
    if isinstance(realism, str):
        if realism not in REALISM_PRESETS:
            raise DatasetError(
                f"unknown realism preset {realism!r}; valid: {', '.join(REALISM_PRESETS)}"
            )
        realism = REALISM_PRESETS[realism]
    out = Path(root)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out}: exists and is not an empty folder; choose a new root")
    out.mkdir(parents=True, exist_ok=True)
    rows, cols = int(shape[0]), int(shape[1])
    meta = [";".join(META_COLUMNS)]
    splits = _splits(n, np.random.default_rng([seed, n, 7]))
    work = partial(_write_subject, out, seed=seed, shape=(rows, cols), realism=realism)
    # zlib and most numpy kernels release the GIL: subjects are written on threads
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        done = progress(pool.map(work, range(n)), verbose=verbose, total=n, desc="phantoms")
        for i, copies in enumerate(done):
            for row in copies:  # copies of one subject share its split
                row["split"] = splits[i]
                meta.append(";".join(row[c] for c in META_COLUMNS))
    (out / META_FILE).write_text("\n".join(meta) + "\n", encoding="utf-8")
    return TotalSegmentator(out)
