"""Measure annotations against masks, and the trivial relative-z baseline they must beat.

:func:`score_annotations` gives, per structure, the slice-level F1 of the predicted
presence, the z-extent boundary error in mm and the expected calibration error of the
probabilities; :func:`summarize` lays them out as mean ± SD over structures (the
study's per-class layout). :func:`position_baseline` predicts each structure from the
slice's relative z position in its volume alone, learned from a labeled index.

Examples
--------
>>> import numpy as np
>>> from cbirlib.annotation import Annotation, extents_of
>>> from cbirlib.labels import SliceLabels
>>> p = np.array([[0.1], [0.9], [0.8], [0.2]]); z = np.arange(4) * 2.0
>>> ann = Annotation("v", ("liver",), p, z, "fine", 0.5, extents_of(("liver",), p, z, 0.5))
>>> truth = SliceLabels(("liver",), np.array([[0], [1], [1], [1]], bool))
>>> row = score_annotations([ann], {"v": truth}).iloc[0]
>>> round(float(row.f1), 3), float(row.boundary_mm)
(0.8, 1.0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from cbirlib.annotation import _COARSE_NAMES, Annotation, Granularity, LabeledIndex, extents_of
from cbirlib.errors import EvaluationError, LabelsError
from cbirlib.labels import SliceLabels
from cbirlib.structures import COARSE_GROUPS, TOTALSEG_V1_CLASSES

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["expected_calibration_error", "position_baseline", "score_annotations", "summarize"]


def expected_calibration_error(
    probabilities: npt.ArrayLike, truth: npt.ArrayLike, *, bins: int = 10
) -> float:
    """Expected calibration error of binary probabilities (equal-width bins).

    The mean over bins of ``|mean probability - observed frequency|``, weighted by the
    share of samples in each bin.

    Examples
    --------
    >>> expected_calibration_error([0.9, 0.9, 0.1, 0.1], [1, 1, 0, 0])
    0.1
    """
    p = np.asarray(probabilities, np.float64).ravel()
    t = np.asarray(truth, np.float64).ravel()
    if p.shape != t.shape or p.size == 0:
        raise EvaluationError(f"probabilities {p.shape} and truth {t.shape} must match")
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += sel.mean() * abs(float(p[sel].mean()) - float(t[sel].mean()))
    return round(float(total), 12)


def _truth_matrix(labels: SliceLabels, names: Sequence[str], granularity: Granularity) -> Any:
    """``(n_slices, len(names))`` truth in the annotation's columns (absent: False)."""
    if granularity == "coarse" and not set(names) <= set(labels.names):
        labels = labels.grouped(COARSE_GROUPS)
    out = np.zeros((len(labels), len(names)), bool)
    col = {n: j for j, n in enumerate(labels.names)}
    for j, name in enumerate(names):
        if name in col:
            out[:, j] = labels.present[:, col[name]]
    return out


def score_annotations(
    annotations: Sequence[Annotation], truths: Mapping[str, SliceLabels], *, bins: int = 10
) -> pd.DataFrame:
    """Per-structure slice F1, boundary error (mm) and ECE of ``annotations``.

    Parameters
    ----------
    annotations
        Annotations of held-out volumes (one granularity).
    truths
        Volume id -> true labels (fine v1 classes are grouped for coarse annotations).
    bins
        Calibration bins.

    Returns
    -------
    pandas.DataFrame
        One row per structure present in a truth or predicted somewhere: ``f1``
        (slices pooled over volumes), ``boundary_mm`` (mean over volumes that contain
        it and where it was predicted of ``(|first error| + |last error|) / 2``, NaN
        when there is none), ``ece`` and ``n_volumes`` (volumes that contain it).
    """
    import pandas as pd

    if not annotations:
        raise EvaluationError("no annotations to score")
    names = annotations[0].names
    if any(a.names != names for a in annotations):
        raise EvaluationError("annotations of different structure sets cannot be scored together")
    probs, truth_rows, boundary = [], [], {n: list[float]() for n in names}
    counts = dict.fromkeys(names, 0)
    for ann in annotations:
        if ann.volume_id not in truths:
            raise EvaluationError(f"no truth for annotated volume {ann.volume_id!r}")
        t = _truth_matrix(truths[ann.volume_id], names, ann.granularity)
        if len(t) != len(ann):
            raise LabelsError(f"truth of {ann.volume_id!r} covers {len(t)} slices, not {len(ann)}")
        probs.append(ann.probabilities)
        truth_rows.append(t)
        for j, name in enumerate(names):
            rows = np.flatnonzero(t[:, j])
            if not rows.size:
                continue
            counts[name] += 1
            ext = ann.extents.get(name)
            if ext is not None:
                err = abs(ext.z_first_mm - ann.z_mm[rows[0]]) + abs(
                    ext.z_last_mm - ann.z_mm[rows[-1]]
                )
                boundary[name].append(err / 2)
    p = np.concatenate(probs)
    t = np.concatenate(truth_rows)
    pred = p >= annotations[0].threshold
    records = []
    for j, name in enumerate(names):
        if not (t[:, j].any() or pred[:, j].any()):
            continue
        tp = int(np.count_nonzero(pred[:, j] & t[:, j]))
        fp = int(np.count_nonzero(pred[:, j] & ~t[:, j]))
        fn = int(np.count_nonzero(~pred[:, j] & t[:, j]))
        records.append(
            {
                "structure": name,
                "f1": 2 * tp / (2 * tp + fp + fn),
                "boundary_mm": float(np.mean(boundary[name])) if boundary[name] else np.nan,
                "ece": expected_calibration_error(p[:, j], t[:, j], bins=bins),
                "n_volumes": counts[name],
            }
        )
    return pd.DataFrame.from_records(records).set_index("structure")


def summarize(scores: pd.DataFrame) -> dict[str, float]:
    """Mean and sample SD over structures of each score, and the median boundary error."""
    out: dict[str, float] = {}
    for col in ("f1", "boundary_mm", "ece"):
        values = scores[col].dropna()
        out[f"{col}_mean"] = float(values.mean()) if len(values) else float("nan")
        out[f"{col}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
    bnd = scores["boundary_mm"].dropna()
    out["boundary_mm_median"] = float(bnd.median()) if len(bnd) else float("nan")
    out["n_structures"] = float(len(scores))
    return out


def position_baseline(
    n_slices: int,
    reference: LabeledIndex,
    *,
    volume_id: str = "query",
    z_mm: npt.ArrayLike | None = None,
    granularity: Granularity = "fine",
    bins: int = 20,
    threshold: float = 0.5,
) -> Annotation:
    """The trivial baseline: each structure's frequency at the slice's relative z position.

    Learned from the labeled volumes of ``reference``: the share of their slices at
    relative position ``i / (n - 1)`` (in ``bins`` bins) that contain each structure.
    """
    names = TOTALSEG_V1_CLASSES if granularity == "fine" else _COARSE_NAMES
    hits = np.zeros((bins, len(names)))
    seen = np.zeros(bins)
    labels_of = getattr(reference, "labels", None)
    if labels_of is None or not reference.labeled_volumes:
        raise LabelsError("position_baseline needs an index with labeled volumes")
    for vid in reference.labeled_volumes:
        lab = labels_of(vid, granularity=granularity)
        t = _truth_matrix(lab, names, granularity)
        b = _bins(len(t), bins)
        np.add.at(hits, b, t.astype(np.float64))
        np.add.at(seen, b, 1.0)
    freq = hits / np.maximum(seen, 1)[:, None]
    prob = freq[_bins(n_slices, bins)]
    z = np.arange(n_slices, dtype=np.float64) if z_mm is None else np.asarray(z_mm, np.float64)
    return Annotation(
        volume_id,
        tuple(names),
        prob,
        z,
        granularity,
        threshold,
        extents_of(tuple(names), prob, z, threshold),
    )


def _bins(n: int, bins: int) -> npt.NDArray[np.int64]:
    rel = np.arange(n) / max(n - 1, 1)
    return np.minimum((rel * bins).astype(np.int64), bins - 1)


def score_find(
    hits: Any, truths: Mapping[str, SliceLabels], structure: str, *, k: int = 5
) -> dict[str, float]:
    """Recall@k, precision and localization ratio of :func:`cbirlib.find` hits.

    ``truths`` holds the true labels of every archive volume (fine classes; grouped
    when ``structure`` is a coarse region). Recall@k is the share of the relevant
    volumes (those containing ``structure``) among the top ``k``, out of at most ``k``;
    precision is the share of all returned volumes that are relevant; the localization
    ratio is the mean, over the returned relevant volumes, of the share of the span's
    slices that contain the structure. NaN where undefined.
    """
    present: dict[str, npt.NDArray[np.bool_]] = {}
    for vid, lab in truths.items():
        if structure in lab.names:
            present[vid] = lab.present[:, lab.column(structure)]
        else:
            present[vid] = _truth_matrix(lab, [structure], "coarse")[:, 0]
    relevant = {v for v, p in present.items() if p.any()}
    order = np.argsort(-np.asarray(hits.score), kind="stable")
    returned = [str(hits.volume_id[i]) for i in order]
    first = np.asarray(hits.extra["loc_first"])[order]
    last = np.asarray(hits.extra["loc_last"])[order]
    nan = float("nan")
    recall = len(relevant & set(returned[:k])) / min(k, len(relevant)) if relevant else nan
    precision = sum(v in relevant for v in returned) / len(returned) if returned else nan
    ratios = [
        float(present[v][int(a) : int(b) + 1].mean())
        for v, a, b in zip(returned, first, last, strict=True)
        if v in relevant and 0 <= a <= b
    ]
    return {
        "recall": recall,
        "precision": precision,
        "localization_ratio": float(np.mean(ratios)) if ratios else nan,
        "n_relevant": float(len(relevant)),
        "n_returned": float(len(returned)),
    }
