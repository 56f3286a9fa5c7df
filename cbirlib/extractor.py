"""The extractor interface: slice embeddings of a volume.

:class:`Extractor` is what the rest of cbirlib calls; :class:`SliceExtractor` is the base
for torch models: it batches slices, preprocesses them on the model's device, runs the
model under ``torch.inference_mode`` (with autocast on CUDA) and L2-normalises the output.

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
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sized
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from itertools import pairwise
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from cbirlib.errors import ExtractorError
from cbirlib.preprocess import PERCENTILE_WINDOW, InputConfig, prepare_slices, window_bounds
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


_CHUNK_BYTES = 64 * 2**20  # host-to-device copies of about this size


def _host_chunks(
    array: npt.NDArray[np.float32], idx: npt.NDArray[np.int64], size: int
) -> Iterator[npt.NDArray[np.float32]]:
    """The slices ``array[idx]`` in chunks of ``size``; views where indices are consecutive."""
    for start in range(0, len(idx), size):
        part = idx[start : start + size]
        if len(part) and part[-1] - part[0] == len(part) - 1 and np.all(np.diff(part) == 1):
            yield array[part[0] : part[-1] + 1]
        else:
            yield array[part]


_COPY_THREADS = min(8, os.cpu_count() or 1)
_copy_pool: ThreadPoolExecutor | None = None
_copy_pool_lock = threading.Lock()


def _parallel_copy(dst: npt.NDArray[np.float32], src: npt.NDArray[np.float32]) -> None:
    """``dst[...] = src`` split over threads (one thread cannot saturate memory bandwidth)."""
    global _copy_pool
    n = src.shape[0]
    parts = min(_COPY_THREADS, n)
    if parts <= 1 or src.nbytes < 8 * 2**20:
        np.copyto(dst, src)
        return
    with _copy_pool_lock:
        if _copy_pool is None:
            _copy_pool = ThreadPoolExecutor(_COPY_THREADS, thread_name_prefix="cbirlib-copy")
    bounds = np.linspace(0, n, parts + 1).astype(int)
    futures = [
        _copy_pool.submit(np.copyto, dst[a:b], src[a:b])
        for a, b in pairwise(bounds.tolist())
        if b > a
    ]
    for future in futures:
        future.result()


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
        not part of it.
        """

    def extract_many(
        self, volumes: Iterable[Volume], *, verbose: bool = False
    ) -> Iterator[tuple[str, npt.NDArray[np.float32]]]:
        """Embed volumes one at a time, yielding ``(volume.id, embeddings)``.

        Parameters
        ----------
        volumes
            Any iterable of volumes (a generator keeps only one in memory).
        verbose
            Show a progress bar.
        """
        total = len(volumes) if isinstance(volumes, Sized) else None
        for volume in tqdm(
            volumes, total=total, disable=not verbose, desc=f"embedding ({self.name})", unit="vol"
        ):
            yield volume.id, self.extract(volume)

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
    """

    def __init__(
        self,
        *,
        device: str = "auto",
        batch_size: int = 32,
        input_config: InputConfig | Mapping[str, Any] | None = None,
        amp: bool = True,
    ) -> None:
        if int(batch_size) < 1:
            raise ExtractorError(
                f"extractor {self.name!r}: batch_size must be >= 1, got {batch_size}"
            )
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.amp = bool(amp)
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
        self._stream: torch.cuda.Stream | None = None
        self._amp_dtype: torch.dtype | None = None
        self._pinned: tuple[list[torch.Tensor], list[torch.cuda.Event]] | None = None

    def default_input_config(self) -> InputConfig:
        """The preprocessing the model was trained with (ImageNet 224x224 RGB by default)."""
        return InputConfig()

    @property
    def input_config(self) -> InputConfig:
        """How slices are preprocessed for this extractor."""
        return self._input_config

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
            if self.device.type == "cuda":
                model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
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
        cfg = self.input_config
        window = PERCENTILE_WINDOW if volume.modality == "MR" else cfg.window
        bounds = window_bounds(volume.array, window)
        model = self.model  # build before the loop; raises early
        del model
        outputs: list[torch.Tensor] = []
        with torch.inference_mode():
            for chunk in self._device_chunks(volume, idx):
                for start in range(0, chunk.shape[0], self.batch_size):
                    raw = chunk[start : start + self.batch_size]
                    outputs.append(self._embed_batch(raw, cfg, bounds))
            if outputs:
                emb = torch.cat(outputs).cpu().numpy()
            else:
                emb = np.zeros((0, self.dim), dtype=np.float32)
        self._check_embeddings(emb, len(idx), volume)
        return emb

    def _device_chunks(self, volume: Volume, idx: npt.NDArray[np.int64]) -> Iterator[torch.Tensor]:
        """The raw slices ``volume.array[idx]`` on :attr:`device`, in chunks.

        On CUDA, each chunk is copied into one of two reusable pinned buffers and sent
        on a side stream, so that the copy of chunk i+1 overlaps the model's work on
        chunk i; elsewhere chunks are (views of) the host array.
        """
        if self.device.type != "cuda":
            for host in _host_chunks(volume.array, idx, self.batch_size):
                yield torch.from_numpy(host).to(self.device)
            return
        per_slice = max(1, int(volume.array[0].nbytes))
        size = max(1, _CHUNK_BYTES // (per_slice * self.batch_size)) * self.batch_size
        size = min(size, max(len(idx), 1))
        buffers, copied = self._pinned_buffers((size, *volume.shape[1:]))
        compute = torch.cuda.current_stream(self.device)
        side = self._copy_stream()
        for i, host in enumerate(_host_chunks(volume.array, idx, size)):
            slot = i % 2
            copied[slot].synchronize()  # its previous copy to the device has finished
            staging = buffers[slot][: host.shape[0]]
            _parallel_copy(staging.numpy(), host)
            with torch.cuda.stream(side):
                chunk = staging.to(self.device, non_blocking=True)
                copied[slot].record(side)
            compute.wait_stream(side)
            chunk.record_stream(compute)
            yield chunk

    def _copy_stream(self) -> torch.cuda.Stream:
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
        return self._stream

    def _pinned_buffers(
        self, shape: tuple[int, ...]
    ) -> tuple[list[torch.Tensor], list[torch.cuda.Event]]:
        """Two pinned host buffers of at least ``shape`` (kept between volumes)."""
        cached = self._pinned
        fits = cached is not None and (
            tuple(cached[0][0].shape[1:]) == shape[1:] and cached[0][0].shape[0] >= shape[0]
        )
        if cached is None or not fits:
            buffers = [torch.empty(shape, dtype=torch.float32, pin_memory=True) for _ in range(2)]
            events = [torch.cuda.Event() for _ in range(2)]  # type: ignore[no-untyped-call]
            cached = (buffers, events)
            self._pinned = cached
        return cached[0], cached[1]

    def _embed_batch(
        self, raw: torch.Tensor, cfg: InputConfig, bounds: tuple[float, float]
    ) -> torch.Tensor:
        """Preprocess and embed one batch of raw slices already on the device."""
        batch = prepare_slices(raw, cfg, bounds=bounds)
        if self.device.type == "cuda":
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

    def to_config(self) -> dict[str, Any]:
        """``{"name": ..., "input_config": {...}}``; subclasses add their arguments."""
        return {"name": self.name, "input_config": self.input_config.to_dict()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, device={self.device})"


__all__ = ["DEVICES", "Extractor", "SliceExtractor", "resolve_device"]
