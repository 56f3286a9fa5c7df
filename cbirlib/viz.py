"""Pictures of retrieval results: montages of query and retrieved slices, localized bands.

Figures are built with :class:`matplotlib.figure.Figure` directly, never through
``pyplot``, so no global figure state is created or leaked and no display is needed;
save them with ``fig.savefig(path)``, or let Jupyter show them.

Display conventions (volumes are canonical RAS+, ``array[z]`` runs inferior to superior):

* axial slices are shown in the radiological convention: anterior up, the patient's
  right on the viewer's left;
* coronal and sagittal reformats put superior up (z in mm on the vertical axis), with
  the patient's right (coronal) or anterior (sagittal) on the viewer's left;
* a localized span ``[first, last]`` (inclusive slice indices) is drawn as a band that
  covers those slices' full thickness;
* every image panel of :func:`montage` carries orientation markers at its four edges
  (``R``/``L`` and ``A``/``P`` on axial panels, ``R``/``L`` or ``A``/``P`` and ``S``/``I``
  on coronal and sagittal ones), derived from the volume's affine
  (:meth:`~cbirlib.volume.Volume.nifti_affine`, RAS+ for every volume the readers make),
  so they stay true for a volume whose array is not RAS+.

Examples
--------
>>> import numpy as np
>>> from cbirlib.volume import Volume
>>> from cbirlib.viz import reformat_with_span
>>> vol = Volume("v", np.zeros((20, 16, 16), np.float32), spacing=(2.0, 1.0, 1.0))
>>> fig = reformat_with_span(vol, (5, 9))
>>> [float(v) for v in fig.axes[0].get_ylim()]  # z in mm, superior up
[-1.0, 39.0]
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from cbirlib.errors import CbirError
from cbirlib.hits import Hits
from cbirlib.modality import effective_modality
from cbirlib.preprocess import window_bounds
from cbirlib.volume import Volume

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from cbirlib.annotation import Annotation

__all__ = [
    "PLANES",
    "VizError",
    "annotation_figure",
    "axis_codes",
    "montage",
    "orientation_markers",
    "reformat_with_span",
]

Plane = Literal["coronal", "sagittal"]
PLANES: tuple[str, ...] = ("coronal", "sagittal")
"""Reformat planes :func:`reformat_with_span` and :func:`montage` can draw."""

VolumeSource = Mapping[str, Volume] | Callable[[str], Volume]

_BAND_COLOR = "tab:orange"
_QUERY_BAND_COLOR = "tab:cyan"
_BAND_ALPHA = 0.35
_MARKER_COLOR = "yellow"
_PANEL_INCHES = 2.6
_OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}
#: Where the orientation markers of a panel go, in axes fractions, and their alignment.
_MARKER_PLACES = {
    "left": ((0.03, 0.5), "left", "center"),
    "right": ((0.97, 0.5), "right", "center"),
    "top": ((0.5, 0.97), "center", "top"),
    "bottom": ((0.5, 0.03), "center", "bottom"),
}


class VizError(CbirError, ValueError):
    """Arguments a figure cannot be drawn from (unknown plane, query or volume id)."""


@dataclass(frozen=True)
class _Match:
    """One retrieved volume as the montage shows it."""

    rank: int
    volume_id: str
    score: float
    slice_index: int  # -1: unknown, use the span's centre or the volume's centre
    span: tuple[int, int] | None


def _check_plane(plane: str) -> None:
    if plane not in PLANES:
        raise VizError(f"unknown plane {plane!r}; valid: {', '.join(PLANES)}")


def _bounds(volume: Volume, window: str | tuple[float, float]) -> tuple[float, float]:
    """Display window of a volume: the named CT window, or percentiles for other modalities."""
    is_ct = effective_modality(volume.modality, volume.array) == "CT"
    return window_bounds(None, window) if is_ct else volume.percentile_bounds()


def _z_edges(volume: Volume) -> npt.NDArray[np.float64]:
    """Slice boundaries in mm (n_slices + 1 values), from the slice centres."""
    z = volume.z_positions
    half = volume.spacing[0] / 2.0
    if len(z) == 1:
        return np.array([z[0] - half, z[0] + half])
    mid = (z[1:] + z[:-1]) / 2.0
    return np.concatenate([[z[0] - (mid[0] - z[0])], mid, [z[-1] + (z[-1] - mid[-1])]])


def _span_mm(volume: Volume, span: tuple[int, int]) -> tuple[float, float]:
    first, last = sorted(span)
    if first < 0 or last >= volume.n_slices:
        raise VizError(
            f"span {span} lies outside volume {volume.id!r} (slices 0..{volume.n_slices - 1})"
        )
    edges = _z_edges(volume)
    return float(edges[first]), float(edges[last + 1])  # z increases with the index (Volume)


def _span_text(volume: Volume, span: tuple[int, int]) -> str:
    """``"slices 3-9 (z 12 to 40 mm)"``: z of the centres of the first and last slice.

    The same convention as ``loc_z_first``/``loc_z_last`` and ``cbirlib query``; the band
    drawn on a reformat covers the slices from edge to edge.
    """
    _span_mm(volume, span)  # checks the span
    first, last = sorted(span)
    z = volume.z_positions
    return f"slices {first}-{last} (z {z[first]:.0f} to {z[last]:.0f} mm)"


def axis_codes(volume: Volume) -> tuple[str, str, str]:
    """Where the array's ``x``, ``y`` and ``z`` indices point: ``("R", "A", "S")`` for RAS+.

    Read from :meth:`~cbirlib.volume.Volume.nifti_affine` with
    :func:`nibabel.orientations.aff2axcodes`: each letter is the direction the index
    increases towards.

    Examples
    --------
    >>> import numpy as np
    >>> from cbirlib.volume import Volume
    >>> axis_codes(Volume("v", np.zeros((4, 4, 4), np.float32)))
    ('R', 'A', 'S')
    >>> flipped = Volume("v", np.zeros((4, 4, 4), np.float32), affine=np.diag([-1.0, 1, 1, 1]))
    >>> axis_codes(flipped)
    ('L', 'A', 'S')
    """
    from nibabel.orientations import aff2axcodes

    codes = tuple(str(c) for c in aff2axcodes(volume.nifti_affine()))  # type: ignore[no-untyped-call]
    if len(codes) != 3 or any(c not in _OPPOSITE for c in codes):
        raise VizError(f"volume {volume.id!r}: its affine has no clear orientation ({codes})")
    return codes[0], codes[1], codes[2]


def orientation_markers(volume: Volume, plane: str) -> dict[str, str]:
    """The letters at the left, right, top and bottom edges of a panel as :func:`montage` draws it.

    Parameters
    ----------
    volume
        The volume drawn.
    plane
        ``"axial"``, ``"coronal"`` or ``"sagittal"``.

    Returns
    -------
    dict
        ``{"left": ..., "right": ..., "top": ..., "bottom": ...}``: the patient direction
        each edge of the image faces.

    Examples
    --------
    >>> import numpy as np
    >>> from cbirlib.volume import Volume
    >>> vol = Volume("v", np.zeros((4, 4, 4), np.float32))
    >>> orientation_markers(vol, "axial")  # radiological: the patient's right on the left
    {'left': 'R', 'right': 'L', 'top': 'A', 'bottom': 'P'}
    >>> orientation_markers(vol, "sagittal")
    {'left': 'A', 'right': 'P', 'top': 'S', 'bottom': 'I'}
    """
    x, y, z = axis_codes(volume)
    # the drawn images reverse the horizontal index (x, or y for sagittal): its far end is
    # on the viewer's left; the vertical index (y for axial, z otherwise) grows upwards
    horizontal, vertical = {"axial": (x, y), "coronal": (x, z), "sagittal": (y, z)}.get(
        plane, (None, None)
    )
    if horizontal is None or vertical is None:
        raise VizError(f"unknown plane {plane!r}; valid: axial, {', '.join(PLANES)}")
    return {
        "left": horizontal,
        "right": _OPPOSITE[horizontal],
        "top": vertical,
        "bottom": _OPPOSITE[vertical],
    }


def _draw_markers(ax: Axes, volume: Volume, plane: str) -> None:
    for side, letter in orientation_markers(volume, plane).items():
        (x, y), ha, va = _MARKER_PLACES[side]
        text = ax.text(
            x,
            y,
            letter,
            transform=ax.transAxes,
            ha=ha,
            va=va,
            color=_MARKER_COLOR,
            fontsize=7,
            fontweight="bold",
        )
        text.set_gid(f"orientation-{side}")


def _draw_axial(
    ax: Axes,
    volume: Volume,
    index: int,
    bounds: tuple[float, float],
    title: str,
) -> None:
    # rows are y (posterior -> anterior), columns x (towards the patient's right):
    # origin="lower" puts anterior up, reversing the columns puts the right on the left
    # in mm, so that pixels of unequal spacing (0.5 x 0.7 mm, a sagittal stack) keep
    # the anatomy's proportions
    image = volume.array[index][:, ::-1]
    _, dy, dx = volume.spacing
    extent = (0.0, image.shape[1] * dx, 0.0, image.shape[0] * dy)
    ax.imshow(image, cmap="gray", vmin=bounds[0], vmax=bounds[1], origin="lower", extent=extent)
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def _draw_reformat(
    ax: Axes,
    volume: Volume,
    span: tuple[int, int] | None,
    plane: str,
    bounds: tuple[float, float],
    title: str | None = None,
    color: str = _BAND_COLOR,
) -> None:
    _check_plane(plane)
    _, ny, nx = volume.shape
    _, dy, dx = volume.spacing
    if plane == "coronal":  # (z, x), the patient's right on the viewer's left
        image = volume.array[:, ny // 2, ::-1]
        width = nx * dx
    else:  # sagittal: (z, y), anterior on the viewer's left
        image = volume.array[:, ::-1, nx // 2]
        width = ny * dy
    edges = _z_edges(volume)
    ax.imshow(
        image,
        cmap="gray",
        vmin=bounds[0],
        vmax=bounds[1],
        origin="lower",
        extent=(0.0, width, float(edges[0]), float(edges[-1])),
        aspect="equal",
        interpolation="nearest",
    )
    if span is not None:
        low, high = _span_mm(volume, span)
        ax.axhspan(low, high, color=color, alpha=_BAND_ALPHA, linewidth=0)
    ax.set_xticks([])
    ax.set_ylabel("z (mm)", fontsize=7)
    ax.tick_params(labelsize=6)
    if title is not None:
        ax.set_title(title, fontsize=8)


def _new_figure(n_rows: int, n_cols: int) -> tuple[Figure, Any]:
    from matplotlib.figure import Figure

    fig = Figure(
        figsize=(_PANEL_INCHES * n_cols, _PANEL_INCHES * 1.25 * n_rows), layout="constrained"
    )
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    return fig, axes


def reformat_with_span(
    volume: Volume,
    span: tuple[int, int] | None,
    *,
    plane: Plane = "coronal",
    window: str | tuple[float, float] = "soft_tissue",
    title: str | None = None,
) -> Figure:
    """A coronal or sagittal reformat of a volume with a localized span as a band.

    Parameters
    ----------
    volume
        The volume to draw (its central coronal or sagittal plane).
    span
        Inclusive slice indices ``(first, last)`` of the predicted location, or None
        for no band.
    plane
        ``"coronal"`` or ``"sagittal"``.
    window
        Display window: a preset name of :data:`cbirlib.preprocess.WINDOW_PRESETS` or
        ``(low, high)`` in HU; MR volumes use percentiles.
    title
        Axes title; defaults to the volume id and the span in slices and mm.

    Returns
    -------
    matplotlib.figure.Figure
        One axes; the vertical axis is z in mm with superior up.

    Raises
    ------
    VizError
        On an unknown plane or a span outside the volume.

    Examples
    --------
    >>> import numpy as np
    >>> from cbirlib.volume import Volume
    >>> vol = Volume("v", np.zeros((10, 8, 8), np.float32))
    >>> fig = reformat_with_span(vol, (2, 4), plane="sagittal")
    >>> band = fig.axes[0].patches[0]  # slices 2..4 of 1 mm each
    >>> band.get_y(), band.get_y() + band.get_height()
    (1.5, 4.5)
    """
    _check_plane(plane)
    if title is None:
        title = volume.id
        if span is not None:
            title += "\n" + _span_text(volume, span)
    fig, axes = _new_figure(1, 1)
    _draw_reformat(axes[0, 0], volume, span, plane, _bounds(volume, window), title)
    return fig


def annotation_figure(
    volume: Volume,
    annotation: Annotation,
    *,
    plane: Plane = "coronal",
    window: str | tuple[float, float] = "soft_tissue",
    max_structures: int | None = 40,
    title: str | None = None,
) -> Figure:
    """A reformat of ``volume`` beside one labeled band per structure of ``annotation``.

    Each structure found (:attr:`cbirlib.annotation.Annotation.extents`) gets a column
    whose band covers its predicted z extent (full slice thickness), shaded by its
    confidence and labeled with its name; the vertical axis is z in mm, shared with
    the reformat.

    Parameters
    ----------
    volume
        The annotated volume.
    annotation
        Its annotation (:func:`cbirlib.annotate`), of as many slices as ``volume``.
    plane, window
        As for :func:`reformat_with_span`.
    max_structures
        Draw at most this many structures (the most confident); None: all.
    title
        Figure title; defaults to the volume id and the number of structures found.

    Returns
    -------
    matplotlib.figure.Figure
        Two axes: the reformat, and the bands.

    Raises
    ------
    VizError
        An unknown plane, or an annotation of another slice count.

    Examples
    --------
    >>> import numpy as np
    >>> from cbirlib.annotation import Annotation, extents_of
    >>> from cbirlib.volume import Volume
    >>> vol = Volume("v", np.zeros((10, 8, 8), np.float32))
    >>> p = np.linspace(0, 1, 10)[:, None]
    >>> ann = Annotation("v", ("liver",), p, vol.z_positions, "fine", 0.5,
    ...                  extents_of(("liver",), p, vol.z_positions, 0.5))
    >>> fig = annotation_figure(vol, ann)
    >>> band = fig.axes[1].patches[0]  # liver predicted on slices 5..9
    >>> band.get_y(), band.get_y() + band.get_height()
    (4.5, 9.5)
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    _check_plane(plane)
    if len(annotation) != volume.n_slices:
        raise VizError(
            f"annotation of {annotation.volume_id!r} covers {len(annotation)} slices, "
            f"volume {volume.id!r} has {volume.n_slices}"
        )
    extents = list(annotation.extents.values())
    if max_structures is not None and len(extents) > max_structures:
        kept = sorted(extents, key=lambda e: -e.confidence)[:max_structures]
        extents = [e for e in extents if e in kept]
    n = max(1, len(extents))
    fig = Figure(
        figsize=(_PANEL_INCHES + 0.28 * n + 0.6, _PANEL_INCHES * 1.6), layout="constrained"
    )
    image_ax, band_ax = fig.subplots(
        1, 2, sharey=True, gridspec_kw={"width_ratios": [_PANEL_INCHES, 0.28 * n + 0.2]}
    )
    _draw_reformat(image_ax, volume, None, plane, _bounds(volume, window))
    edges = _z_edges(volume)
    for i, ext in enumerate(extents):
        low, high = _span_mm(volume, (ext.first, ext.last))
        band_ax.add_patch(
            Rectangle(
                (i + 0.1, low),
                0.8,
                high - low,
                color=_BAND_COLOR,
                alpha=0.25 + 0.75 * float(np.clip(ext.confidence, 0, 1)),
                linewidth=0,
            )
        )
        band_ax.text(
            i + 0.5,
            (low + high) / 2,
            ext.structure,
            rotation=90,
            ha="center",
            va="center",
            fontsize=5,
            clip_on=True,
        )
    band_ax.set_xlim(0, n)
    band_ax.set_ylim(float(edges[0]), float(edges[-1]))
    band_ax.set_xticks([])
    band_ax.tick_params(labelsize=6, labelleft=False)
    band_ax.set_title("structures", fontsize=8)
    found = len(annotation.extents)
    fig.suptitle(
        title if title is not None else f"{volume.id}: {found} structures found", fontsize=8
    )
    return fig


def _select_query(hits: Hits, query: Volume, query_id: str | None) -> Hits:
    ids = hits.query_ids()
    if query_id is None:
        if query.id in ids:
            query_id = query.id
        elif len(ids) == 1:
            query_id = ids[0]
        else:
            raise VizError(
                f"hits hold several queries and none is {query.id!r}; "
                f"pass query_id= one of: {', '.join(ids)}"
            )
    elif query_id not in ids:
        raise VizError(f"no hits for query {query_id!r}; queries: {', '.join(ids) or '(none)'}")
    return hits.for_query(query_id)


def _matches(hits: Hits, top: int) -> list[_Match]:
    """The ``top`` best volumes of one query's hits, with their best slice and span."""
    if hits.level == "volume":
        rows = np.argsort(hits.rank, kind="stable")
    else:  # slice level: a volume's best slice hit stands for the volume
        rows = np.lexsort((np.arange(len(hits)), -hits.score))
    has_span = "loc_first" in hits.extra and "loc_last" in hits.extra
    out: list[_Match] = []
    seen: set[str] = set()
    for row in rows:
        vid = str(hits.volume_id[row])
        if vid in seen:
            continue
        seen.add(vid)
        span = None
        if has_span and int(hits.extra["loc_first"][row]) >= 0:
            span = (int(hits.extra["loc_first"][row]), int(hits.extra["loc_last"][row]))
        out.append(
            _Match(len(out) + 1, vid, float(hits.score[row]), int(hits.slice_index[row]), span)
        )
        if len(out) == top:
            break
    return out


def _load(volumes: VolumeSource, volume_id: str) -> Volume:
    if isinstance(volumes, Mapping):
        if volume_id not in volumes:
            known = ", ".join(sorted(volumes)[:10])
            raise VizError(f"no volume {volume_id!r} to draw; given: {known}")
        return volumes[volume_id]
    return volumes(volume_id)


def _path_loader(hits: Hits, root: str | os.PathLike[str] | None) -> VolumeSource:
    """Load hit volumes from the ``path`` column (:meth:`Hits.with_paths`)."""
    paths = hits.extra.get("path")
    if paths is None:
        raise VizError(
            "montage() needs the retrieved volumes: pass volumes= (a mapping or a loader "
            "such as dataset.load), or hits.with_paths(index) so that they are read from "
            "the paths recorded in the index"
        )
    where = {str(v): str(p) for v, p in zip(hits.volume_id.tolist(), paths.tolist(), strict=True)}

    def load(volume_id: str) -> Volume:
        from pathlib import Path

        from cbirlib.io import load_volume  # lazy: nibabel, pydicom

        path = where.get(volume_id, "")
        if not path:
            raise VizError(
                f"the index records no path for volume {volume_id!r} (an index built "
                "before sources were recorded?); pass volumes= to montage()"
            )
        full = Path(path)
        if root is not None and not full.is_absolute():
            full = Path(root) / full
        return load_volume(full, id=volume_id)

    return load


def montage(
    query: Volume,
    hits: Hits,
    volumes: VolumeSource | None = None,
    *,
    top: int = 5,
    window: str | tuple[float, float] = "soft_tissue",
    plane: Plane | None = "coronal",
    query_id: str | None = None,
    query_span: tuple[int, int] | None = None,
    structure: str | None = None,
    root: str | os.PathLike[str] | None = None,
) -> Figure:
    """The query next to its best retrieved volumes, with scores and localized spans.

    Row 1 shows the query's central axial slice (of ``query_span`` if given) and, for
    each of the ``top`` retrieved volumes (in rank order), its best-matching axial
    slice, titled with rank, volume id, score and slice. Row 2 (unless ``plane=None``)
    shows a coronal or sagittal reformat of each volume with its predicted span (the
    ``loc_first``/``loc_last`` columns written by :class:`~cbirlib.localize.Localize`)
    as a band, superior up, and a legend names the bands (the predicted span; the query
    region, drawn in another colour, when ``query_span`` is given). The figure title
    names the query and, when given, its ``structure``; every image panel carries
    orientation markers (:func:`orientation_markers`).

    Parameters
    ----------
    query
        The query volume (for a region query, the sub-volume that was searched).
    hits
        Retrieval results; volume-level (ranked volumes) or slice-level (each volume is
        represented by its best-scoring slice hit).
    volumes
        The database volumes by id: a mapping, or a function ``id -> Volume`` such as
        ``dataset.load``. ``None``: read each volume from the ``path`` column of
        ``hits`` (``hits.with_paths(index)``: the paths recorded in the index).
    top
        How many retrieved volumes to show.
    window
        Display window (preset name or ``(low, high)`` HU); MR volumes use percentiles.
    plane
        ``"coronal"``, ``"sagittal"`` or None (no second row).
    query_id
        Which query of ``hits`` to show; defaults to ``query.id`` (or the only query).
    query_span
        A band to draw on the query's reformat (e.g. the region a region query covers);
        the query's axial panel then shows the span's central slice.
    structure
        The structure the query is about (a region query's), shown in the title and the
        legend.
    root
        With ``volumes=None``: the data root for paths of the ``path`` column that are
        relative (paths made by :meth:`Hits.with_paths` are absolute already; give its
        ``root=`` there when the data moved).

    Returns
    -------
    matplotlib.figure.Figure
        ``1 + n`` columns; ``n`` is the number of retrieved volumes shown.

    Raises
    ------
    VizError
        On ``top < 1``, an unknown plane or query id, a retrieved volume that
        ``volumes`` does not hold, or, without ``volumes``, hits without a ``path`` for
        a retrieved volume.

    Examples
    --------
    >>> import numpy as np
    >>> from cbirlib.hits import Hits
    >>> from cbirlib.volume import Volume
    >>> vols = {k: Volume(k, np.zeros((6, 8, 8), np.float32)) for k in ("q", "a", "b")}
    >>> hits = Hits(query_id=["q", "q"], volume_id=["a", "b"], score=[0.9, 0.7],
    ...             level="volume", extra={"loc_first": [1, 0], "loc_last": [3, 2]})
    >>> fig = montage(vols["q"], hits, vols, top=2, query_span=(1, 3), structure="liver")
    >>> [ax.get_title().splitlines()[0] for ax in fig.axes[:3]]
    ['query q', '#1 a', '#2 b']
    >>> fig.get_suptitle()
    'query q: liver'
    >>> [t.get_text() for t in fig.legends[0].get_texts()]
    ['predicted span', 'query region (liver)']
    """
    if top < 1:
        raise VizError(f"top must be >= 1, got {top}")
    if plane is not None:
        _check_plane(plane)
    if volumes is None:
        volumes = _path_loader(hits, root)
    matches = _matches(_select_query(hits, query, query_id), top)
    n_cols = 1 + max(1, len(matches))
    fig, axes = _new_figure(1 if plane is None else 2, n_cols)
    q_index = query.n_slices // 2 if query_span is None else (query_span[0] + query_span[1]) // 2
    q_bounds = _bounds(query, window)
    q_title = f"query {query.id}\nslice {q_index} (z {query.z_positions[q_index]:.0f} mm)"
    if query_span is not None:
        q_title = f"query {query.id}\n{_span_text(query, query_span)}"
    _draw_axial(axes[0, 0], query, q_index, q_bounds, q_title)
    _draw_markers(axes[0, 0], query, "axial")
    if plane is not None:
        _draw_reformat(
            axes[1, 0], query, query_span, plane, q_bounds, f"query ({plane})", _QUERY_BAND_COLOR
        )
        _draw_markers(axes[1, 0], query, plane)
    for col, match in enumerate(matches, start=1):
        volume = _load(volumes, match.volume_id)
        if 0 <= match.slice_index < volume.n_slices:
            index = match.slice_index
        elif match.span is not None:
            index = (match.span[0] + match.span[1]) // 2
        else:
            index = volume.n_slices // 2
        bounds = _bounds(volume, window)
        title = f"#{match.rank} {match.volume_id}\nscore {match.score:.3f}, slice {index}"
        _draw_axial(axes[0, col], volume, index, bounds, title)
        _draw_markers(axes[0, col], volume, "axial")
        if plane is not None:
            span_title = "no span"
            if match.span is not None:
                span_title = "span " + _span_text(volume, match.span).removeprefix("slices ")
            _draw_reformat(axes[1, col], volume, match.span, plane, bounds, span_title)
            _draw_markers(axes[1, col], volume, plane)
    if not matches:
        axes[0, 1].set_axis_off()
        axes[0, 1].set_title("no hits", fontsize=8)
        if plane is not None:
            axes[1, 1].set_axis_off()
    fig.suptitle(f"query {query.id}" + (f": {structure}" if structure else ""), fontsize=9)
    if plane is not None:
        _band_legend(fig, query_span is not None, structure)
    return fig


def _band_legend(fig: Figure, query_band: bool, structure: str | None) -> None:
    """What the coloured bands of the reformats are, below the panels."""
    from matplotlib.patches import Patch

    handles = [Patch(color=_BAND_COLOR, alpha=_BAND_ALPHA, label="predicted span")]
    if query_band:
        label = "query region" + (f" ({structure})" if structure else "")
        handles.append(Patch(color=_QUERY_BAND_COLOR, alpha=_BAND_ALPHA, label=label))
    fig.legend(
        handles=handles, loc="outside lower center", ncols=len(handles), fontsize=7, frameon=False
    )
