"""The extractor interface: slice embeddings of a volume.

:class:`Extractor` is what the rest of cbirlib calls; :class:`SliceExtractor` is the base
for torch models: it batches slices, preprocesses them on the model's device, runs the
model under ``torch.inference_mode`` (with autocast on CUDA) and L2-normalises the output.

The CPU (and MPS) path is :meth:`SliceExtractor.extract` below. On a CUDA device the same
steps run in a streaming engine that overlaps host copies, uploads and compute (the
private ``cbirlib._cuda_pipeline``); it gives the same embeddings, so a plugin author
needs to read only this module.

Examples
--------
>>> import numpy as np, torch
>>> from cbirlib.extractor import SliceExtractor
>>> from cbirlib.preprocess import InputConfig
>>> from cbirlib.volume import Volume
>>> class MeanPool(SliceExtractor):
...     name = "meanpool"
...     dim = 3
...     def default_input_config(self):
...         return InputConfig(size=(8, 8))
...     def build_model(self):
...         return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
>>> ex = MeanPool(device="cpu")
>>> emb = ex.extract(Volume("v", np.random.default_rng(0).normal(size=(5, 16, 16))))
>>> emb.shape, emb.dtype, bool(np.allclose(np.linalg.norm(emb, axis=1), 1))
((5, 3), dtype('float32'), True)
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sized
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from cbirlib._cuda_pipeline import CudaPipeline, consecutive
from cbirlib._progress import progress
from cbirlib.errors import ExtractorError
from cbirlib.ingest import read_ahead
from cbirlib.modality import effective_modality
from cbirlib.preprocess import (
    PERCENTILE_WINDOW,
    Bounds,
    InputConfig,
    Window,
    background_value,
    prepare_slices,
    window_channels,
)
from cbirlib.volume import Volume

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "cuda:<index>", "mps")


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn a device name into a usable :class:`torch.device`.

    ``"auto"`` picks CUDA, then Apple MPS, then the CPU.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if isinstance(device, str) and device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ExtractorError(f"unknown device {device!r}; valid: {', '.join(DEVICES)}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ExtractorError(f"device {device!r} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ExtractorError(
            f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) available"
        )
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ExtractorError(f"device {device!r} requested but MPS is not available")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ExtractorError(f"unsupported device {device!r}; valid: {', '.join(DEVICES)}")
    return dev


def default_workers() -> int:
    """Default number of volume-reading threads of :meth:`Extractor.extract_many`."""
    return min(4, os.cpu_count() or 1)


def _host_chunks(
    array: npt.NDArray[np.float32], idx: npt.NDArray[np.int64], size: int
) -> Iterator[npt.NDArray[np.float32]]:
    """The slices ``array[idx]`` in chunks of ``size``; views where indices are consecutive."""
    for start in range(0, len(idx), size):
        part = idx[start : start + size]
        if consecutive(part):
            yield array[part[0] : part[-1] + 1]
        else:
            yield array[part]


def _as_loader(item: object) -> Callable[[], Volume]:
    """A zero-argument loader for an element of ``extract_many``'s input."""
    if isinstance(item, Volume):
        return partial(_identity, item)
    if callable(item):
        return partial(_checked_load, item)
    raise ExtractorError(
        f"extract_many: cannot embed a {type(item).__name__!r}; give Volume objects or "
        "zero-argument callables that return a Volume"
    )


def _identity(volume: Volume) -> Volume:
    return volume


def _checked_load(loader: Callable[[], object]) -> Volume:
    volume = loader()
    if not isinstance(volume, Volume):
        raise ExtractorError(
            f"extract_many: loader {loader!r} returned a {type(volume).__name__!r}, not a Volume"
        )
    return volume


@dataclass(frozen=True)
class _VolumeInput:
    """What preprocessing needs to know about one volume besides its slices."""

    bounds: Bounds  # one (low, high) per window
    spacing: tuple[float, float]  # in-plane (row, column) mm
    background: float | None  # raw intensity of the padding (None: the window's low end)


def _volume_input(volume: Volume, window: Window) -> _VolumeInput:
    percentile = isinstance(window, str) and window == PERCENTILE_WINDOW
    return _VolumeInput(
        bounds=(volume.percentile_bounds(),) if percentile else window_channels(None, window),
        spacing=(float(volume.spacing[1]), float(volume.spacing[2])),
        background=background_value(window),
    )


class Extractor(ABC):
    """Embeds every axial slice of a volume into an L2-normalised vector.

    Subclasses set :attr:`name` and implement :attr:`dim`, :attr:`input_config`,
    :meth:`extract` and :meth:`to_config`.
    """

    name: str
    """Registry name, e.g. ``"baseline"`` or ``"timm:resnet18"``."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Embedding dimension."""

    @property
    @abstractmethod
    def input_config(self) -> InputConfig:
        """How slices are preprocessed for this extractor."""

    @abstractmethod
    def extract(
        self, volume: Volume, *, slices: npt.NDArray[np.integer[Any]] | None = None
    ) -> npt.NDArray[np.float32]:
        """Embed the slices of one volume.

        Parameters
        ----------
        volume
            The volume.
        slices
            Indices of the slices to embed (e.g. from
            :func:`cbirlib.preprocess.slice_indices`); all slices when ``None``.

        Returns
        -------
        numpy.ndarray
            ``(n, dim)`` float32, one L2-normalised row per slice, in the order of
            ``slices``.
        """

    @abstractmethod
    def to_config(self) -> dict[str, Any]:
        """A JSON-able dict, with ``"name"``, that rebuilds this extractor.

        ``cbirlib.create_extractor(**extractor.to_config())`` returns an extractor
        that produces the same embeddings. Runtime settings (device, batch size) are
        not part of it. When a new release changes what an extractor computes, it adds
        (or raises) an integer ``"feature_version"`` (a config without it is version 1):
        an index built with another version is then refused, not mixed
        (:func:`cbirlib.index.check_compatible`).
        """

    def extract_many(
        self,
        volumes: Iterable[Volume | Callable[[], Volume]],
        *,
        verbose: bool | None = None,
        workers: int | None = None,
        processes: bool = False,
    ) -> Iterator[tuple[str, npt.NDArray[np.float32]]]:
        """Embed volumes one at a time, yielding ``(volume.id, embeddings)`` in input order.

        Volumes are read ahead on ``workers`` threads (see :func:`cbirlib.ingest.read_ahead`)
        while the current one is embedded.

        Parameters
        ----------
        volumes
            Volumes, or zero-argument loaders returning a :class:`~cbirlib.volume.Volume`
            (e.g. ``functools.partial(cbirlib.io.load_volume, path)``), in any iterable.
        verbose
            Progress bar: on a terminal only (``None``), always (``True``) or never (``False``).
        workers
            Threads reading volumes ahead (default :func:`default_workers`); at most
            ``max(2, workers)`` volumes are read ahead of the one being embedded. ``0``
            reads each volume only when it is embedded (one volume in memory at a time).
        processes
            Read in ``workers`` worker processes instead of threads
            (:func:`cbirlib.ingest.read_volumes`); the loaders must be picklable
            (functions, ``functools.partial``).

        Raises
        ------
        Exception
            A loader's exception, raised after the results of the volumes before it.
        """
        workers = default_workers() if workers is None else int(workers)
        total = len(volumes) if isinstance(volumes, Sized) else None
        loaders = map(_as_loader, volumes)
        loaded = read_ahead(loaders, workers=workers, processes=processes)
        stream = self._embed_stream(loaded)
        try:
            with progress(
                total=total, verbose=verbose, desc=f"embedding ({self.name})", unit="vol"
            ) as bar:
                for volume, emb in stream:
                    bar.update()
                    yield volume.id, emb
        finally:
            stream.close()
            loaded.close()

    def _embed_stream(
        self, volumes: Iterator[Volume]
    ) -> Generator[tuple[Volume, npt.NDArray[np.float32]], None, None]:
        """``(volume, all its embeddings)`` for each volume; subclasses may pipeline."""
        for volume in volumes:
            yield volume, self.extract(volume)

    # -- helpers for subclasses ---------------------------------------------------------

    def _slice_indices(self, volume: Volume, slices: npt.ArrayLike | None) -> npt.NDArray[np.int64]:
        """Validate ``slices`` against ``volume`` and return them as int64 indices."""
        if slices is None:
            return np.arange(volume.n_slices, dtype=np.int64)
        idx = np.asarray(slices)
        if idx.ndim != 1 or not (idx.size == 0 or np.issubdtype(idx.dtype, np.integer)):
            raise ExtractorError(
                f"extractor {self.name!r}: slices must be a 1D array of integer indices, "
                f"got shape {idx.shape} dtype {idx.dtype}"
            )
        idx = idx.astype(np.int64)
        bad = idx[(idx < 0) | (idx >= volume.n_slices)]
        if bad.size:
            raise ExtractorError(
                f"extractor {self.name!r}: slice indices {bad[:5].tolist()} outside "
                f"0..{volume.n_slices - 1} of volume {volume.id!r}"
            )
        return idx

    def _check_embeddings(self, emb: npt.NDArray[Any], n: int, volume: Volume) -> None:
        """Raise :class:`ExtractorError` unless ``emb`` is ``(n, dim)`` finite non-zero."""
        if emb.shape != (n, self.dim):
            raise ExtractorError(
                f"extractor {self.name!r} returned shape {emb.shape} for volume {volume.id!r}, "
                f"expected ({n}, {self.dim})"
            )
        if emb.dtype != np.float32:
            raise ExtractorError(f"extractor {self.name!r} returned dtype {emb.dtype}, not float32")
        finite = np.isfinite(emb).all(axis=1)
        if not finite.all():
            raise ExtractorError(
                f"extractor {self.name!r} produced NaN/Inf embeddings for volume {volume.id!r} "
                f"at rows {np.flatnonzero(~finite)[:5].tolist()}"
            )
        zero = np.abs(emb).max(axis=1, initial=0.0) == 0 if n else np.zeros(0, bool)
        if zero.any():
            raise ExtractorError(
                f"extractor {self.name!r} produced all-zero embeddings for volume {volume.id!r} "
                f"at rows {np.flatnonzero(zero)[:5].tolist()}"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class SliceExtractor(Extractor):
    """Base class of torch-model extractors.

    Subclasses set :attr:`name` and :attr:`dim` and implement :meth:`build_model`;
    they may override :meth:`default_input_config`, :meth:`embed_slices` and
    :meth:`to_config` (extend ``super().to_config()`` with their constructor arguments).

    Parameters
    ----------
    device
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
    batch_size
        Slices per forward pass.
    input_config
        Preprocessing; defaults to :meth:`default_input_config`. A dict (from
        :meth:`InputConfig.to_dict`) is accepted.
    amp
        Use autocast (bfloat16, or float16 where bfloat16 is unsupported) on CUDA.
    channels_last
        Run the model in the ``channels_last`` memory format. ``None`` (default): always
        on CUDA, never on MPS, and on the CPU where :meth:`default_channels_last_cpu`
        says it is faster for the model's family. Embeddings agree with the contiguous
        format to float32 rounding (see ``benchmarks/channels_last.py``). A runtime
        setting, not part of :meth:`to_config`.
    """

    channels_last_cpu: ClassVar[bool] = False
    """Whether ``channels_last`` is the CPU default (measured faster) for this model."""

    def __init__(
        self,
        *,
        device: str = "auto",
        batch_size: int = 32,
        input_config: InputConfig | Mapping[str, Any] | None = None,
        amp: bool = True,
        channels_last: bool | None = None,
    ) -> None:
        if int(batch_size) < 1:
            raise ExtractorError(
                f"extractor {self.name!r}: batch_size must be >= 1, got {batch_size}"
            )
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.amp = bool(amp)
        self.channels_last = None if channels_last is None else bool(channels_last)
        if input_config is None:
            self._input_config = self.default_input_config()
        elif isinstance(input_config, InputConfig):
            self._input_config = input_config
        elif isinstance(input_config, Mapping):
            self._input_config = InputConfig.from_dict(input_config)
        else:
            raise ExtractorError(
                f"extractor {self.name!r}: input_config must be an InputConfig or a dict, "
                f"got {type(input_config).__name__}"
            )
        self._model: torch.nn.Module | None = None
        self._cuda: CudaPipeline[_VolumeInput] | None = None
        self._amp_dtype: torch.dtype | None = None

    @property
    def dim(self) -> int:
        """Embedding dimension: a class attribute (``dim = 768``), or set in ``__init__``
        (``self.dim = width``) when a constructor argument decides it."""
        value = self.__dict__.get("_dim")
        if value is None:
            raise ExtractorError(
                f"extractor {self.name!r}: dim is not set; set it as a class attribute "
                "or as self.dim in __init__"
            )
        return int(value)

    @dim.setter
    def dim(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ExtractorError(
                f"extractor {self.name!r}: dim must be a positive integer, got {value!r}"
            )
        self.__dict__["_dim"] = int(value)

    def default_input_config(self) -> InputConfig:
        """The preprocessing the model was trained with (ImageNet 224x224 RGB by default)."""
        return InputConfig()

    @property
    def input_config(self) -> InputConfig:
        """How slices are preprocessed for this extractor."""
        return self._input_config

    def default_channels_last_cpu(self) -> bool:
        """Whether ``channels_last`` is faster on the CPU for this model (default
        :attr:`channels_last_cpu`; subclasses may decide per architecture)."""
        return self.channels_last_cpu

    @property
    def uses_channels_last(self) -> bool:
        """Whether the model runs in the ``channels_last`` memory format on :attr:`device`."""
        if self.channels_last is not None:
            return self.channels_last
        if self.device.type == "cuda":
            return True
        return self.device.type == "cpu" and self.default_channels_last_cpu()

    @abstractmethod
    def build_model(self) -> torch.nn.Module:
        """Build (and load the weights of) the model; called once, on first use."""

    @property
    def model(self) -> torch.nn.Module:
        """The model, built on first access, in eval mode on :attr:`device`."""
        if self._model is None:
            logger.debug("building model of extractor %r on %s", self.name, self.device)
            model = self.build_model()
            if not isinstance(model, torch.nn.Module):
                raise ExtractorError(
                    f"extractor {self.name!r}: build_model() returned "
                    f"{type(model).__name__}, not a torch.nn.Module"
                )
            model = model.eval().to(self.device)
            if self.uses_channels_last:
                model = model.to(memory_format=torch.channels_last)
            self._model = model
        return self._model

    def embed_slices(self, batch: torch.Tensor) -> torch.Tensor:
        """Embed a preprocessed batch ``(n, C, H, W)`` on :attr:`device` into ``(n, dim)``."""
        out: torch.Tensor = self.model(batch)
        return out

    def _autocast(self) -> Any:
        if self.amp and self.device.type == "cuda":
            if self._amp_dtype is None:
                bf16 = torch.cuda.is_bf16_supported()
                self._amp_dtype = torch.bfloat16 if bf16 else torch.float16
            return torch.autocast(device_type="cuda", dtype=self._amp_dtype)
        return nullcontext()

    def extract(
        self, volume: Volume, *, slices: npt.NDArray[np.integer[Any]] | None = None
    ) -> npt.NDArray[np.float32]:
        """Embed the slices of one volume (see :meth:`Extractor.extract`)."""
        idx = self._slice_indices(volume, slices)
        if self.device.type == "cuda":
            ((_, emb),) = list(self._embed_cuda(iter([(volume, idx)])))
            return emb
        cfg = self.input_config
        prep = self._prepare(volume)
        model = self.model  # build before the loop; raises early
        del model
        outputs: list[torch.Tensor] = []
        with torch.inference_mode():
            for host in _host_chunks(volume.array, idx, self.batch_size):
                raw = torch.from_numpy(host).to(self.device)
                outputs.append(self._embed_batch(raw, prep, cfg=cfg))
            if outputs:
                emb = torch.cat(outputs).cpu().numpy()
            else:
                emb = np.zeros((0, self.dim), dtype=np.float32)
        self._check_embeddings(emb, len(idx), volume)
        return emb

    def _embed_batch(
        self, raw: torch.Tensor, prep: _VolumeInput, *, cfg: InputConfig
    ) -> torch.Tensor:
        """Preprocess and embed one batch of raw slices already on the device."""
        batch = prepare_slices(
            raw, cfg, bounds=prep.bounds, spacing=prep.spacing, background=prep.background
        )
        if self.uses_channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            out = self.embed_slices(batch)
        n = raw.shape[0]
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != n:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out)
            raise ExtractorError(
                f"extractor {self.name!r}: embed_slices returned {shape} for a batch "
                f"of {n} slices, expected ({n}, {self.dim})"
            )
        return F.normalize(out.float(), dim=1, eps=1e-12)

    def _window(self, volume: Volume) -> Window:
        """The input window for a CT, the volume's percentiles for any other modality."""
        if effective_modality(volume.modality, volume.array) == "CT":
            return self.input_config.window
        return PERCENTILE_WINDOW

    def _prepare(self, volume: Volume) -> _VolumeInput:
        """The volume's window and in-plane spacing, as preprocessing needs them."""
        return _volume_input(volume, self._window(volume))

    def _embed_stream(
        self, volumes: Iterator[Volume]
    ) -> Generator[tuple[Volume, npt.NDArray[np.float32]], None, None]:
        if self.device.type == "cuda":
            return self._embed_cuda((v, np.arange(v.n_slices, dtype=np.int64)) for v in volumes)
        return super()._embed_stream(volumes)

    # -- CUDA: the streaming engine of cbirlib._cuda_pipeline ------------------------------

    def _embed_cuda(
        self, items: Iterator[tuple[Volume, npt.NDArray[np.int64]]]
    ) -> Generator[tuple[Volume, npt.NDArray[np.float32]], None, None]:
        """Embed ``(volume, slice indices)`` items on CUDA, overlapping copies and compute."""
        cfg = self.input_config
        model = self.model  # build (and initialise CUDA) before the staging threads start
        del model
        if self._cuda is None:
            self._cuda = CudaPipeline(self.device)
        yield from self._cuda.run(
            items,
            batch_size=self.batch_size,
            dim=self.dim,
            prepare=self._prepare,
            embed=partial(self._embed_batch, cfg=cfg),
            check=self._check_embeddings,
        )

    def to_config(self) -> dict[str, Any]:
        """``{"name": ..., "input_config": {...}}``; subclasses add their arguments."""
        return {"name": self.name, "input_config": self.input_config.to_dict()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, device={self.device})"


__all__ = ["DEVICES", "Extractor", "SliceExtractor", "resolve_device"]
