"""The weights of several extractors: ``NAME=PATH`` options and their checks before a run.

:func:`parse_weights_options` reads repeated ``--weights NAME=PATH`` options;
:func:`check_weights` checks every file before any work starts (exists, readable,
sha256, one file per extractor).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from cbirlib.errors import SharedWeightsError, WeightsError, WeightsSpecError
from cbirlib.weights.cache import is_url
from cbirlib.weights.downloads import check_sha256

__all__ = ["check_weights", "parse_weights_options"]


def parse_weights_options(
    items: Iterable[str], extractors: Sequence[str] | None = None
) -> dict[str, str]:
    """Repeated ``NAME=PATH`` options (``--weights radimagenet-resnet50=rin.pt``) as a mapping.

    Parameters
    ----------
    items
        The option values, in the order given. ``NAME`` is an extractor name; ``PATH``
        a local file or a URL (everything after the first ``=``). A bare ``PATH`` (no
        ``NAME=``) is accepted only when ``extractors`` names exactly one extractor.
    extractors
        The extractors of the run; when given, every ``NAME`` must be one of them.

    Returns
    -------
    dict
        Extractor name -> weights source, as given (see :func:`check_weights`).

    Raises
    ------
    WeightsSpecError
        An item without ``NAME=`` (and not exactly one extractor), an empty name or
        path, a name given twice, or a name that is not among ``extractors``.

    Examples
    --------
    >>> parse_weights_options(["a=/w/a.pt", "b=https://x.org/b.pth?v=2"])
    {'a': '/w/a.pt', 'b': 'https://x.org/b.pth?v=2'}
    >>> parse_weights_options(["/w/a.pt"], extractors=["a"])
    {'a': '/w/a.pt'}
    """
    known = None if extractors is None else list(dict.fromkeys(extractors))
    out: dict[str, str] = {}
    for item in items:
        name, sep, source = item.partition("=")
        if not sep or is_url(item) or "/" in name or "\\" in name:
            if known is not None and len(known) == 1 and not out:
                name, source = known[0], item
            else:
                raise WeightsSpecError(
                    f"weights {item!r} name no extractor; give them as NAME=PATH "
                    f"(e.g. --weights radimagenet-resnet50=/models/rin-r50.pt), one per "
                    f"extractor; a bare PATH is accepted only with a single extractor"
                )
        name, source = name.strip(), source.strip()
        if not name or not source:
            raise WeightsSpecError(f"weights {item!r}: both NAME and PATH of NAME=PATH are needed")
        if name in out:
            raise WeightsSpecError(f"weights for extractor {name!r} are given twice")
        if known is not None and name not in known:
            raise WeightsSpecError(
                f"weights given for {name!r}, which is not among the extractors of this run "
                f"({', '.join(map(repr, known))})"
            )
        out[name] = source
    return out


def _same_file_key(source: str) -> str:
    """What two weights sources share when they are the same file."""
    if is_url(source):
        return source
    path = Path(source).expanduser()
    try:
        st = path.stat()
    except OSError:
        return str(path.resolve())
    return f"{st.st_dev}:{st.st_ino}"


def check_weights(
    weights: Mapping[str, str | os.PathLike[str]],
    extractors: Sequence[str] | None = None,
    *,
    sha256: Mapping[str, str] | None = None,
    force: bool = False,
) -> dict[str, str]:
    """Check the weights of several extractors before any work starts.

    Every local file must exist and be readable, and match its sha256 when one is known
    (``sha256[name]``); URLs are checked when they are loaded (:func:`download`). One
    file given to two extractors is refused: in a comparison of two models of the same
    architecture (two ResNet50s) it would label one model's results with the other's
    name.

    Parameters
    ----------
    weights
        Extractor name -> local path or URL (e.g. from :func:`parse_weights_options`).
    extractors
        The extractors of the run; every name of ``weights`` must be one of them.
    sha256
        Extractor name -> expected sha256 of its file, where known.
    force
        Allow one file for several extractors.

    Returns
    -------
    dict
        Extractor name -> the source to load: local files as absolute paths (an index
        records its extractor's config, so a relative path would not find the file from
        another folder), URLs unchanged.

    Raises
    ------
    WeightsSpecError
        A name that is not among ``extractors``.
    SharedWeightsError
        The same file given to two extractors, without ``force=True``.
    WeightsError
        A file that does not exist or cannot be read.
    ChecksumError
        A file that does not match its sha256.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "w.pt"
    >>> _ = f.write_bytes(b"x")
    >>> try:
    ...     check_weights({"a": f, "b": f})
    ... except SharedWeightsError as exc:
    ...     print(type(exc).__name__)
    SharedWeightsError
    >>> sorted(check_weights({"a": f, "b": f}, force=True))
    ['a', 'b']
    """
    known = None if extractors is None else set(extractors)
    sums = dict(sha256 or {})
    out: dict[str, str] = {}
    owners: dict[str, str] = {}
    for name, raw in weights.items():
        if known is not None and name not in known:
            raise WeightsSpecError(
                f"weights given for {name!r}, which is not among the extractors of this run "
                f"({', '.join(map(repr, sorted(known)))})"
            )
        source = os.fspath(raw)
        key = _same_file_key(source)
        if key in owners and not force:
            raise SharedWeightsError(
                f"weights file {source!r} is given to both {owners[key]!r} and {name!r}; "
                f"each extractor needs its own weights (the comparison would otherwise "
                f"report one model under two names); pass force=True (--force-weights) if "
                f"this is really meant"
            )
        owners.setdefault(key, name)
        if is_url(source):
            out[name] = source
            continue
        path = Path(source).expanduser()
        if not path.is_file():
            raise WeightsError(
                f"weights file {source!r} for extractor {name!r} does not exist"
                + (" (it is a directory)" if path.is_dir() else "")
            )
        try:
            with path.open("rb") as fh:
                fh.read(1)
        except OSError as exc:
            raise WeightsError(
                f"weights file {source!r} for extractor {name!r} cannot be read: {exc}"
            ) from None
        check_sha256(path, sums.get(name))
        out[name] = str(path.resolve())
    return out
