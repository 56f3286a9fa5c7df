"""Fakes and builders shared by several test modules (import them from ``tests.fakes``).

Extractors: :class:`TinyNet` (a random-init torch model), :class:`FakeExtractor`
(block means, no torch; also as source text for subprocesses) and
:class:`PositionExtractor` (slices embedded by their body position). Volumes and
indexes: :func:`ct_volume`, :func:`make_volumes`, :func:`body_volume`, :func:`build`,
:func:`small_index`. Plugins: :data:`BASELINE_EP`, :func:`fake_entry_points`. Hostile
files: :func:`lying_header`, :data:`META_EDITS` with :func:`write_meta`. (Thin and thick
copies of a volume: :func:`cbirlib.datasets.reslice_z`.)
"""

from __future__ import annotations

import gzip
import importlib.metadata
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
import torch

from cbirlib import (
    ExactIndex,
    HnswConfig,
    InputConfig,
    SliceExtractor,
    SliceIndex,
    SliceLabels,
    Volume,
)
from cbirlib.index.meta import meta_checksum

# --- extractors ------------------------------------------------------------------------


class TinyNet(SliceExtractor):
    """A random-init CNN: a test fixture, never registered as a pretrained extractor."""

    name = "tiny"
    builds = 0

    def __init__(self, *, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seed = seed

    @property
    def dim(self) -> int:
        return 6

    def default_input_config(self) -> InputConfig:
        return InputConfig(size=(16, 16), window="soft_tissue")

    def build_model(self) -> torch.nn.Module:
        type(self).builds += 1
        torch.manual_seed(self.seed)
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(32, 6),
        )

    def to_config(self) -> dict[str, Any]:
        return {**super().to_config(), "seed": self.seed}


def ct_volume(vid: str = "v1", n: int = 9, seed: int = 0, modality: str = "CT") -> Volume:
    """A noisy CT-like volume of ``n`` slices (24 x 20) whose mean rises along z."""
    rng = np.random.default_rng(seed)
    arr = rng.normal(0.0, 150.0, size=(n, 24, 20)).astype(np.float32)
    arr += np.linspace(-100, 100, n, dtype=np.float32)[:, None, None]
    return Volume(vid, arr, spacing=(2.0, 0.8, 0.8), modality=modality)


#: Source of FakeExtractor and make_volumes, for scripts run in a subprocess.
FAKE_SRC = '''
import numpy as np
from cbirlib import Volume

class FakeExtractor:
    """Embeds a slice as its 4x2 block means (plus a constant): dim 8, deterministic."""
    name = "fake"
    dim = 8

    def __init__(self, version=1, fail_after=None, delay=0.0):
        self.version, self.fail_after, self.delay = version, fail_after, delay
        self.calls = []

    def to_config(self):
        return {"name": "fake", "version": self.version, "window": [-1000, 1000]}

    def extract(self, volume):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("extractor crashed")
        self.calls.append(volume.id)
        if self.delay:
            import time; time.sleep(self.delay)
        z = volume.array.shape[0]
        x = volume.array.reshape(z, 4, 2, 2, 4).mean(axis=(2, 4)).reshape(z, 8) + 3.0
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

def make_volumes(n=10, seed=0):
    rng = np.random.default_rng(seed)
    return [
        Volume(f"case{i:02d}", rng.normal(size=(int(rng.integers(3, 8)), 8, 8)).astype(np.float32),
               spacing=(2.0 + i, 1.0, 1.0))
        for i in range(n)
    ]
'''
_ns: dict[str, Any] = {}
exec(FAKE_SRC, _ns)
FakeExtractor = _ns["FakeExtractor"]
make_volumes = _ns["make_volumes"]


# --- body positions: an extractor whose similarities follow anatomy ----------------------

DIM = 24
CENTERS = np.linspace(0.0, 1.0, DIM)


def position_embedding(pos: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    """Unit vectors that are more similar the closer two body positions are."""
    e = np.exp(-((pos[:, None] - CENTERS[None, :]) ** 2) / (2 * 0.04**2))
    return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)


class PositionExtractor:
    """Deterministic fake extractor: every slice holds its body position as intensity."""

    dim = DIM

    def __init__(self) -> None:
        self.calls = 0

    def extract(
        self, volume: Volume, *, slices: npt.NDArray[np.int64] | None = None
    ) -> npt.NDArray[np.float32]:
        self.calls += 1
        idx = np.arange(volume.n_slices) if slices is None else np.asarray(slices)
        return position_embedding(volume.array[idx].mean(axis=(1, 2)).astype(np.float64))

    def to_config(self) -> dict[str, Any]:
        return {"name": "position", "dim": DIM}

    def informative_slices(
        self, volume: Volume, *, slices: npt.NDArray[np.int64] | None = None
    ) -> npt.NDArray[np.bool_]:
        """Every slice: a constant slice here stands for a body position, not for padding."""
        return np.ones(volume.n_slices if slices is None else len(slices), dtype=bool)


def body_volume(vid: str, lo: float, hi: float, n: int, *, dz: float = 2.0) -> Volume:
    """A volume whose slices cover body positions lo..hi; 'liver' at 0.55-0.7,
    'lung_upper_lobe_left' at 0.75-0.85, 'lung_lower_lobe_left' at 0.7-0.8."""
    pos = np.linspace(lo, hi, n)
    array = np.broadcast_to(pos[:, None, None], (n, 4, 4)).astype(np.float32)
    p = np.round(pos, 9)
    present = np.stack(
        [(p >= 0.55) & (p <= 0.7), (p >= 0.75) & (p <= 0.85), (p >= 0.7) & (p <= 0.8)], axis=1
    )
    labels = SliceLabels(("liver", "lung_upper_lobe_left", "lung_lower_lobe_left"), present)
    return Volume(vid, array, spacing=(dz, 1.0, 1.0), labels=labels)


def build(index_cls: type[ExactIndex] | type[SliceIndex], volumes: list[Volume]) -> Any:
    """An index of ``index_cls`` holding ``volumes`` embedded by :class:`PositionExtractor`."""
    ex = PositionExtractor()
    index = index_cls(DIM, extractor_config=ex.to_config())
    for v in volumes:
        index.add(v.id, ex.extract(v), slice_meta={"z_mm": v.z_positions})
    return index


# --- plugins ----------------------------------------------------------------------------


def fake_entry_points(*eps: importlib.metadata.EntryPoint) -> Callable[..., Any]:
    """A stand-in for ``importlib.metadata.entry_points`` that lists only ``eps``."""

    def entry_points(**kwargs: Any) -> list[importlib.metadata.EntryPoint]:
        assert kwargs == {"group": "cbirlib"}
        return list(eps)

    return entry_points


BASELINE_EP = importlib.metadata.EntryPoint(
    name="baseline", value="cbirlib.extractors.baseline", group="cbirlib"
)


# --- hostile files ------------------------------------------------------------------------


def lying_header(path: Path, shape: tuple[int, int, int]) -> None:
    """A NIfTI file whose header claims ``shape`` over 1500 floats of data."""
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    img.header.set_data_shape(shape)
    raw = img.header.binaryblock + b"\0" * 4 + np.zeros(1500, np.float32).tobytes()
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)


def small_index(cls: type = SliceIndex) -> SliceIndex | ExactIndex:
    """Four volumes of ten random 8-dim slices."""
    rng = np.random.default_rng(0)
    index = cls(8, config=HnswConfig(M=8, ef_construction=40), extractor_config={"name": "f"})
    for v in range(4):
        index.add(f"v{v}", rng.normal(size=(10, 8)))
    return index


def write_meta(path: Path, meta: dict[str, Any]) -> None:
    """Write meta.json with a valid checksum, so only the validation can refuse it."""
    meta["checksum"] = meta_checksum(meta)
    (path / "meta.json").write_text(json.dumps(meta))


#: Edits of a saved index's meta.json that loading must refuse with a named error.
META_EDITS: dict[str, Callable[[dict[str, Any]], object]] = {
    "ef string": lambda m: m.update(ef="abc"),
    "ef negative": lambda m: m.update(ef=-1),
    "ef NaN": lambda m: m.update(ef=math.nan),
    "ef bool": lambda m: m.update(ef=True),
    "dim huge": lambda m: m.update(dim=10**9),
    "dim zero": lambda m: m.update(dim=0),
    "dim float": lambda m: m.update(dim=8.0),
    "extractor_config string": lambda m: m.update(extractor_config="resnet"),
    "config list": lambda m: m.update(config=[1]),
    "config bad M": lambda m: m["config"].update(M="x"),
    "config bad dtype": lambda m: m["config"].update(store_dtype="int8"),
    "counts labels huge": lambda m: m["counts"].update(labels=10**12),
    "counts negative": lambda m: m["counts"].update(volumes=-1),
    "counts string": lambda m: m["counts"].update(entries="40"),
    "counts entries > labels": lambda m: m["counts"].update(entries=10**6),
    "files traversal": lambda m: m["files"].update({"../evil.npy": {"sha256": "0", "bytes": 1}}),
    "files bytes string": lambda m: m["files"]["z_mm.npy"].update(bytes="12"),
    "files not object": lambda m: m.update(files="all"),
    "format unknown": lambda m: m.update(format=99),
    "kind unknown": lambda m: m.update(kind="faiss"),
    "meta list": lambda m: m.clear(),
}


def start_local_ray(attempts: int = 3) -> Any:
    """``ray.init`` of a two-CPU loopback cluster, retried when the raylet starts slowly.

    Ray waits a fixed 30 s for its raylet to register; on a loaded CI machine the first
    start can miss that window although the cluster is healthy on the next try.
    """
    import ray

    for attempt in range(attempts):
        try:
            return ray.init(
                address="local", num_cpus=2, include_dashboard=False, log_to_driver=False
            )
        except Exception as error:  # Ray raises a bare Exception on a slow start
            ray.shutdown()
            if "timed out during startup" not in str(error) or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")
