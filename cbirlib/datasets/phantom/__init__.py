"""Synthetic anatomical CT phantoms written in the TotalSegmentator layout.

:func:`make_phantoms` writes ``root/sXXXX/ct.nii.gz`` (int16 HU), one
``segmentations/<structure>.nii.gz`` mask per v1 class (uint8; empty where the
structure is outside the field of view) and ``root/meta.csv`` with a train/val/test
split, so every feature can be tested offline through the real loader
(:class:`~cbirlib.datasets.totalsegmentator.TotalSegmentator`).

Anatomy
-------
All 104 v1 structures are drawn in one whole-body *atlas*: in-plane millimetres of a
lean adult body and ``z`` from mid-thigh (0 mm) to the vertex (1000 mm). Coordinates
follow RAS+: ``+x`` is the patient's **right**, ``+y`` anterior, ``+z`` superior. In the
``(Z, Y, X)`` :class:`~cbirlib.volume.Volume` array the liver (patient's right) therefore
sits at larger column indices than the spleen, anterior structures at larger row
indices, and the brain in the last slices. Each structure is a stack of ellipses (or
elliptic rings) whose centre and radii are interpolated between key frames along ``z``;
ribs are sloped arcs, the lung lobes are split by oblique/horizontal fissure planes.
Structures are painted in a fixed order into one label map, so masks are disjoint and
every masked voxel carries its structure's HU (lung -850, fat -100, muscle 50, liver
~62, brain 35, contrast blood 180-280, bone 300-1100, air -1000). Unlabelled tissue
(subcutaneous fat, muscle wall, skull, discs, spinal canal, sternum, arms, the CT
table) makes the images look like CT.

Subjects differ in field of view (whole body, head-neck, thorax, abdomen, pelvis and
their combinations, or a random partial range), height and body-size scale,
subcutaneous fat, in-plane shift and rotation, contrast phase, slice thickness
(1.5-5 mm, thicker where needed to keep at most 150 slices), in-plane pixel spacing,
per-organ position/size jitter and noise level. Generation is deterministic: subject
``i`` depends only on ``(seed, i)``, and files are byte-identical for one seed.

Realism
-------
``make_phantoms(..., realism=PhantomRealism(...))`` (or the preset ``realism="hard"``)
adds what real archives hold and plain phantoms never show: MR-like subjects (T1/T2-like
contrast, zero background, arbitrary intensity scale, still named ``ct.nii.gz``),
skull-stripped brain-only heads with empty slices above the vertex, constant blank
padding slices, non-square matrices, copies of one subject re-sliced at several
thicknesses (``s0006_1.5mm``, ``s0006_2.5mm``, ``s0006_5mm``) and gantry tilt (a sheared
affine). Every option is off by default, and without it the files are byte-identical to
those written before the option existed. ``meta.csv`` records each subject's modality,
slice thickness, padding, tilt, skull stripping and source subject; read it with
:func:`phantom_facts` (e.g. ``TotalSegmentator(root, modality={s: f.modality for s, f
in phantom_facts(root).items()})`` loads the MR subjects as MR).

Modules
-------
Import every name from ``cbirlib.datasets.phantom`` (or :mod:`cbirlib.datasets`); the
code lives in one module per concept: ``atlas`` (the anatomy), ``render`` (one
subject's draws and its CT or MR intensities), ``realism`` (the ``realism=`` options)
and ``write`` (the TotalSegmentator layout, ``meta.csv`` and :func:`phantom_facts`).

Examples
--------
>>> import tempfile
>>> ds = make_phantoms(tempfile.mkdtemp(), 3, shape=(48, 48), seed=1)
>>> len(ds), sorted({ds.split_of(s) for s in ds}) == ["test", "train", "val"]
(3, True)
"""

from __future__ import annotations

from cbirlib.datasets.phantom.atlas import FIELDS_OF_VIEW
from cbirlib.datasets.phantom.realism import PAD_CT as PAD_CT
from cbirlib.datasets.phantom.realism import REALISM_PRESETS, PhantomRealism
from cbirlib.datasets.phantom.render import MAX_SLICES
from cbirlib.datasets.phantom.write import (
    META_COLUMNS,
    PhantomFacts,
    make_phantoms,
    phantom_facts,
)

__all__ = [
    "FIELDS_OF_VIEW",
    "MAX_SLICES",
    "META_COLUMNS",
    "REALISM_PRESETS",
    "PhantomFacts",
    "PhantomRealism",
    "make_phantoms",
    "phantom_facts",
]
