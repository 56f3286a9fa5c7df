"""Reading a checkpoint into a model: safe loading, unwrapping, key renaming, strict fit.

:func:`load_state_dict` reads safetensors or a torch checkpoint with
``torch.load(..., weights_only=True)`` (never unpickled freely), :func:`unwrap_checkpoint`
finds the tensors under nested ``"state_dict"`` / ``"model"`` entries,
:func:`strip_prefixes` and :func:`remap_state_dict` rename keys, and :func:`load_into`
loads strictly, listing missing and unexpected keys.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cbirlib.errors import WeightsError
from cbirlib.weights.downloads import resolve_file

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "load_into",
    "load_state_dict",
    "remap_state_dict",
    "strip_prefixes",
    "unwrap_checkpoint",
]

logger = logging.getLogger(__name__)

_NESTED_KEYS = ("state_dict", "model", "model_state", "model_state_dict", "net", "module")
_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".tar")
_SHOW = 5


def unwrap_checkpoint(obj: Any, *, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensor state dict inside a loaded checkpoint.

    Descends into nested ``"state_dict"``, ``"model"`` (and similar) entries until a
    mapping of tensors is found; non-tensor entries (epoch counters, optimiser
    hyper-parameters) beside the tensors are dropped.
    """
    import torch

    for _ in range(4):
        if not isinstance(obj, Mapping):
            break
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        nested = next((obj[k] for k in _NESTED_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None:
            break
        obj = nested
    keys = list(obj)[:_SHOW] if isinstance(obj, Mapping) else type(obj).__name__
    raise WeightsError(
        f"{source} holds no state dict of tensors (found {keys}); expected a mapping of "
        f"parameter names to tensors, possibly under one of {list(_NESTED_KEYS)}"
    )


def strip_prefixes(
    state_dict: Mapping[str, torch.Tensor], prefixes: Iterable[str] = ("module.",)
) -> dict[str, torch.Tensor]:
    """Remove leading ``prefixes`` (repeatedly, in any order) from every key."""
    prefixes = tuple(prefixes)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in prefixes:
                if key.startswith(prefix):
                    key = key[len(prefix) :]
                    changed = True
        out[key] = value
    return out


def remap_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    rules: Sequence[tuple[str, str | None]],
) -> dict[str, torch.Tensor]:
    """Rename keys by regular-expression rules, applied in order to every key.

    Parameters
    ----------
    state_dict
        The source state dict.
    rules
        ``(pattern, replacement)`` pairs for :func:`re.sub`; a ``None`` replacement
        drops every key that matches ``pattern``.
    """
    compiled = [(re.compile(p), r) for p, r in rules]
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new: str | None = key
        for pattern, repl in compiled:
            assert new is not None
            if repl is None:
                if pattern.search(new):
                    new = None
                    break
            else:
                new = pattern.sub(repl, new)
        if new is not None:
            out[new] = value
    return out


def load_state_dict(
    source: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    strip: Iterable[str] = ("module.",),
) -> dict[str, torch.Tensor]:
    """Read a state dict from a local file or URL (safetensors or torch checkpoint).

    Parameters
    ----------
    source
        Path or ``http(s)://`` / ``file://`` URL.
    sha256
        Expected hex digest of the file.
    strip
        Key prefixes to strip (default DataParallel's ``"module."``).

    Returns
    -------
    dict
        Parameter name -> CPU tensor.
    """
    import torch

    path = resolve_file(source, sha256=sha256)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: Any = load_file(str(path), device="cpu")
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, unsafe pickle, wrong format
        raise WeightsError(
            f"cannot read weights file {str(path)!r} as "
            f"{'safetensors' if path.suffix == '.safetensors' else 'a torch checkpoint'}: "
            f"{_load_failure(exc)}. "
            f"Supported: .safetensors, and torch checkpoints ({', '.join(_SUFFIXES[1:])}) "
            f"that load with torch.load(weights_only=True)"
        ) from None
    sd = unwrap_checkpoint(raw, source=f"weights file {str(path)!r}")
    return strip_prefixes(sd, strip)


def _load_failure(exc: Exception) -> str:
    """One line on why a weights file did not load, without torch's unsafe advice."""
    text = str(exc)
    if "weights_only" in text or "Weights only load failed" in text:
        return (
            "it holds Python objects besides tensors, which would run code when unpickled, "
            "so it is refused; in an environment you trust, re-save its state dict with "
            "safetensors or torch.save(model.state_dict())"
        )
    return " ".join(text.split())[:300] or type(exc).__name__


def _show(keys: Sequence[str]) -> str:
    head = ", ".join(keys[:_SHOW])
    return f"{len(keys)} ({head}{', ...' if len(keys) > _SHOW else ''})"


def load_into(
    model: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    strict: bool = True,
    source: str = "checkpoint",
) -> None:
    """Load ``state_dict`` into ``model``, failing clearly when they do not fit.

    Parameters
    ----------
    model
        Target module.
    state_dict
        Parameter name -> tensor.
    strict
        If true, any missing or unexpected key is an error; otherwise they are logged.
        Shape mismatches are always errors.
    source
        Where the weights come from, for messages.

    Raises
    ------
    WeightsError
        Missing or unexpected keys (first few of each and their counts), or tensors
        whose shapes differ.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k}: {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if shapes:
        problems.append(f"shape mismatches {_show(shapes)}")
    if strict and missing:
        problems.append(f"missing keys {_show(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys {_show(unexpected)}")
    if problems:
        raise WeightsError(
            f"weights from {source} do not fit {type(model).__name__}: " + "; ".join(problems)
        )
    if missing or unexpected:
        logger.warning(
            "loading %s non-strictly: missing %s, unexpected %s",
            source,
            _show(missing),
            _show(unexpected),
        )
    model.load_state_dict(dict(state_dict), strict=strict)
