"""Tests of cbirlib.viz: montage content, orientation of the drawn images, span bands."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from cbirlib.hits import Hits
from cbirlib.viz import VizError, montage, reformat_with_span
from cbirlib.volume import Volume

BRIGHT = 1000.0


def _volume(vid: str, n: int = 20, *, dz: float = 2.0, z0: float = 0.0) -> Volume:
    rng = np.random.default_rng(abs(hash(vid)) % 2**32)
    array = rng.normal(-500, 10, size=(n, 16, 12)).astype(np.float32)
    return Volume(vid, array, spacing=(dz, 1.0, 1.0), z_positions=z0 + dz * np.arange(n))


def _volume_hits(query: str, vids: list[str], scores: list[float], spans: list[tuple[int, int]]):
    return Hits(
        query_id=[query] * len(vids),
        volume_id=vids,
        score=scores,
        level="volume",
        extra={
            "loc_first": [s[0] for s in spans],
            "loc_last": [s[1] for s in spans],
        },
    )


def _render(fig) -> np.ndarray:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].astype(float).mean(axis=2)


def _bright_centre(fig, ax) -> tuple[float, float]:
    """Centre of the brightest pixels of ``ax`` as fractions (0 = left/top, 1 = right/bottom)."""
    pixels = _render(fig)
    height = pixels.shape[0]
    bbox = ax.get_window_extent()
    x0, x1 = int(bbox.x0), int(bbox.x1)
    y0, y1 = height - int(bbox.y1), height - int(bbox.y0)  # display y is bottom-up
    panel = pixels[y0:y1, x0:x1]
    ys, xs = np.nonzero(panel > 250)
    assert ys.size, "no bright pixels drawn"
    return float(xs.mean() / panel.shape[1]), float(ys.mean() / panel.shape[0])


def test_montage_orders_volumes_by_rank_and_shows_scores() -> None:
    vols = {v: _volume(v) for v in ("q", "a", "b", "c")}
    hits = _volume_hits("q", ["a", "b", "c"], [0.5, 0.9, 0.7], [(0, 3), (4, 8), (10, 12)])
    fig = montage(vols["q"], hits, vols, top=2)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 2 * 3  # two rows: query + top-2
    assert titles[0].startswith("query q")
    assert titles[1].startswith("#1 b") and "score 0.900" in titles[1]
    assert titles[2].startswith("#2 c") and "score 0.700" in titles[2]
    # row 2: reformats with the predicted spans; mm = z of the first and last slice
    # centres, as in `cbirlib query` and the loc_z_first/loc_z_last columns
    z = vols["b"].z_positions
    assert f"span 4-8 (z {z[4]:.0f} to {z[8]:.0f} mm)" in titles[4]
    assert "span 4-8 (z 8 to 16 mm)" in titles[4]
    assert "span 10-12 (z 20 to 24 mm)" in titles[5]


def test_montage_bands_cover_the_span_in_mm_with_superior_up() -> None:
    vols = {"q": _volume("q"), "a": _volume("a", n=30, dz=1.5, z0=-100.0)}
    hits = _volume_hits("q", ["a"], [0.8], [(6, 9)])
    fig = montage(vols["q"], hits, vols, top=5, plane="sagittal")
    ax = fig.axes[3]  # row 2, column 2
    low, high = ax.get_ylim()
    assert low < high  # z increases upwards
    band = ax.patches[0]
    z = vols["a"].z_positions
    assert band.get_y() == pytest.approx(z[6] - 0.75)
    assert band.get_y() + band.get_height() == pytest.approx(z[9] + 0.75)


def test_reformat_draws_superior_anatomy_at_the_top() -> None:
    array = np.full((40, 16, 16), -1000.0, np.float32)
    array[34:38] = BRIGHT  # near the superior end (high slice index)
    vol = Volume("v", array, spacing=(1.0, 1.0, 1.0))
    for plane in ("coronal", "sagittal"):
        fig = reformat_with_span(vol, None, plane=plane, window=(-1000, 1000))
        _, y = _bright_centre(fig, fig.axes[0])
        assert y < 0.25, plane


def test_axial_panels_use_the_radiological_convention() -> None:
    array = np.full((5, 20, 20), -1000.0, np.float32)
    array[:, 15:19, 15:19] = BRIGHT  # anterior (high y) and towards the patient's right (high x)
    query = Volume("q", array)
    hits = _volume_hits("q", ["q2"], [1.0], [(0, 4)])
    fig = montage(query, hits, {"q2": query}, plane=None, window=(-1000, 1000))
    assert len(fig.axes) == 2
    x, y = _bright_centre(fig, fig.axes[0])
    assert y < 0.5  # anterior up
    assert x < 0.5  # the patient's right on the viewer's left


def test_montage_slice_level_hits_use_each_volume_best_slice() -> None:
    vols = {v: _volume(v) for v in ("q", "a", "b")}
    hits = Hits(
        query_id=["q"] * 4,
        volume_id=["a", "b", "a", "b"],
        slice_index=[3, 7, 11, 2],
        query_slice=[0, 0, 1, 1],
        score=[0.2, 0.6, 0.9, 0.1],
    )
    fig = montage(vols["q"], hits, vols, plane=None)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[1].startswith("#1 a") and "slice 11" in titles[1]
    assert titles[2].startswith("#2 b") and "slice 7" in titles[2]


def test_montage_loads_volumes_through_a_callable_once_each() -> None:
    vols = {v: _volume(v) for v in ("q", "a", "b")}
    calls: list[str] = []

    def load(vid: str) -> Volume:
        calls.append(vid)
        return vols[vid]

    hits = _volume_hits("q", ["a", "b"], [0.9, 0.8], [(1, 2), (3, 4)])
    montage(vols["q"], hits, load)
    assert calls == ["a", "b"]


def test_montage_selects_the_query_among_several() -> None:
    vols = {v: _volume(v) for v in ("q", "r", "a", "b")}
    hits = Hits.concat(
        [
            _volume_hits("q", ["a"], [0.9], [(1, 2)]),
            _volume_hits("r:liver", ["b"], [0.8], [(3, 4)]),
        ]
    )
    fig = montage(vols["r"], hits, vols, query_id="r:liver", query_span=(2, 6))
    assert fig.axes[1].get_title().startswith("#1 b")
    z = vols["r"].z_positions
    # the query column names the span it searched, in slices and mm
    assert fig.axes[0].get_title() == f"query r\nslices 2-6 (z {z[2]:.0f} to {z[6]:.0f} mm)"
    assert len(fig.axes[2].patches) == 1  # the query's own band
    with pytest.raises(VizError, match="pass query_id"):
        montage(vols["r"], hits, vols)
    with pytest.raises(VizError, match="queries: q, r:liver"):
        montage(vols["r"], hits, vols, query_id="nope")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"plane": "axial"}, "unknown plane 'axial'; valid: coronal, sagittal"),
        ({"top": 0}, "top must be >= 1"),
    ],
)
def test_montage_rejects_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    vols = {v: _volume(v) for v in ("q", "a")}
    hits = _volume_hits("q", ["a"], [0.9], [(1, 2)])
    with pytest.raises(VizError, match=message):
        montage(vols["q"], hits, vols, **kwargs)  # type: ignore[arg-type]


def test_montage_names_a_missing_volume() -> None:
    vols = {v: _volume(v) for v in ("q", "a")}
    hits = _volume_hits("q", ["zz"], [0.9], [(1, 2)])
    with pytest.raises(VizError, match="no volume 'zz'"):
        montage(vols["q"], hits, vols)


def test_span_outside_the_volume_is_an_error() -> None:
    with pytest.raises(VizError, match=r"span \(3, 25\) lies outside volume 'v'"):
        reformat_with_span(_volume("v"), (3, 25))


def test_montage_without_hits_for_the_query_is_an_error() -> None:
    q = _volume("q")
    with pytest.raises(VizError, match=r"no hits for query 'q'; queries: \(none\)"):
        montage(q, Hits.empty("volume"), {}, query_id="q")


def test_figures_leave_no_pyplot_state(tmp_path) -> None:
    vols = {v: _volume(v) for v in ("q", "a")}
    hits = _volume_hits("q", ["a"], [0.9], [(1, 2)])
    fig = montage(vols["q"], hits, vols)
    fig.savefig(tmp_path / "m.png")
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        assert plt.get_fignums() == []


def _markers(ax) -> dict[str, str]:
    return {
        t.get_gid().removeprefix("orientation-"): t.get_text()
        for t in ax.texts
        if (t.get_gid() or "").startswith("orientation-")
    }


def test_montage_has_a_band_legend_the_structure_in_its_title_and_orientation_markers() -> None:
    vols = {v: _volume(v) for v in ("q", "a", "b")}
    hits = _volume_hits("q", ["a", "b"], [0.9, 0.7], [(2, 5), (4, 8)])
    for plane, edges in (("coronal", ("R", "L")), ("sagittal", ("A", "P"))):
        fig = montage(
            vols["q"], hits, vols, top=2, plane=plane, query_span=(3, 6), structure="liver"
        )
        assert fig.get_suptitle() == "query q: liver"
        (legend,) = fig.legends
        labels = [t.get_text() for t in legend.get_texts()]
        assert labels == ["predicted span", "query region (liver)"]
        # the legend's colours are the bands' colours
        colours = [tuple(h.get_facecolor()[:3]) for h in legend.legend_handles]
        query_band = fig.axes[3].patches[0].get_facecolor()[:3]  # row 2, column 1: the query
        match_band = fig.axes[4].patches[0].get_facecolor()[:3]
        assert colours == [tuple(match_band), tuple(query_band)] and query_band != match_band
        axial, reformats = fig.axes[:3], fig.axes[3:]
        for ax in axial:
            assert _markers(ax) == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
        for ax in reformats:
            left, right = edges
            assert _markers(ax) == {"left": left, "right": right, "top": "S", "bottom": "I"}
    # no query region: only the predicted span in the legend, no structure in the title
    fig = montage(vols["q"], hits, vols, top=2)
    assert fig.get_suptitle() == "query q"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["predicted span"]
    assert not montage(vols["q"], hits, vols, top=2, plane=None).legends  # no band, no legend


def test_orientation_markers_follow_the_affine_and_the_drawn_image() -> None:
    """Bright voxels at high x are on the viewer's left; the marker there names their side."""
    array = np.full((12, 16, 16), -500.0, np.float32)
    array[:, 6:10, 12:] = BRIGHT  # high x: the patient's right in RAS+
    ras = Volume("ras", array)
    flipped = Volume("las", array, affine=np.diag([-1.0, 1.0, 1.0, 1.0]))  # x towards L
    for vol, left in ((ras, "R"), (flipped, "L")):
        hits = _volume_hits(vol.id + "-q", [vol.id], [1.0], [(2, 5)])
        fig = montage(vol, hits, {vol.id: vol}, top=1, window=(-600.0, 600.0))
        axial = fig.axes[0]
        x, _ = _bright_centre(fig, axial)
        assert x < 0.4  # drawn on the viewer's left ...
        assert _markers(axial)["left"] == left  # ... which faces the patient's right (RAS+)
        assert _markers(axial)["right"] == {"R": "L", "L": "R"}[left]
        assert _markers(fig.axes[2])["left"] == left  # the coronal reformat too


def test_orientation_markers_of_an_unknown_plane_are_an_error() -> None:
    from cbirlib.viz import orientation_markers

    with pytest.raises(VizError, match="unknown plane 'oblique'"):
        orientation_markers(_volume("v"), "oblique")


@pytest.mark.parametrize(("shape", "spacing"), [((40, 10), (0.5, 2.0)), ((64, 8), (0.3125, 3.0))])
def test_axial_panels_keep_the_proportions_of_unequal_pixels(shape, spacing) -> None:
    """A 20 x 20 mm field of 40 x 10 pixels of 0.5 x 2 mm was drawn 4 times as tall as wide."""
    ny, nx = shape
    array = np.full((3, ny, nx), -1000.0, np.float32)
    array[:, ny // 4 : ny - ny // 4, nx // 4 : nx - nx // 4] = BRIGHT  # the middle half
    query = Volume("q", array, spacing=(2.0, *spacing))
    hits = _volume_hits("q", ["q2"], [1.0], [(0, 2)])
    fig = montage(query, hits, {"q2": query}, plane=None, window=(-1000, 1000))
    pixels = _render(fig)
    height = pixels.shape[0]
    bbox = fig.axes[0].get_window_extent()
    panel = pixels[height - int(bbox.y1) : height - int(bbox.y0), int(bbox.x0) : int(bbox.x1)]
    ys, xs = np.nonzero(panel > 250)
    drawn = (xs.max() - xs.min() + 1) / (ys.max() - ys.min() + 1)
    want = (nx - 2 * (nx // 4)) * spacing[1] / ((ny - 2 * (ny // 4)) * spacing[0])
    assert drawn == pytest.approx(want, rel=0.1)
