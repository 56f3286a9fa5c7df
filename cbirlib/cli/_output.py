"""What the ``cbirlib`` command prints: lines, counts, and ranked results as rows and tables.

Examples
--------
>>> import io
>>> buffer = io.StringIO()
>>> write(buffer, plural(2, "volume"))
>>> buffer.getvalue()
'2 volumes\\n'
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from typing import TYPE_CHECKING, Any, TextIO

from cbirlib._progress import bars_disabled

if TYPE_CHECKING:  # pragma: no cover
    from cbirlib.hits import Hits

__all__ = [
    "MM_DIGITS",
    "PROG",
    "SCORE_DIGITS",
    "SCORE_MEANINGS",
    "cli_syntax",
    "plural",
    "print_results",
    "result_rows",
    "show_progress",
    "write",
]

PROG = "cbirlib"
#: Decimals of the scores and of the mm values in ``cbirlib query --json``.
SCORE_DIGITS = 6
MM_DIGITS = 1
#: What a volume's score means, by the chain's last ranking stage.
SCORE_MEANINGS = {
    "maxsim": "mean over the query slices of the best cosine similarity in the volume (MaxSim)",
    "votes": "number of query slices with one of their k nearest slices in the volume "
    "(each query slice votes at most once per volume)",
    "annotate": "confidence that the volume shows the structure (mean annotated "
    "probability over its predicted span)",
    "exemplar": "mean share of the exemplar queries' votes that the volume received",
    "rrf": "reciprocal rank fusion of the indexes' rankings: the sum over the indexes "
    "that returned the volume of 1 / (60 + its rank)",
    "combsum": "score fusion of the indexes' rankings: the sum of each index's scores, "
    "min-max normalised per query to [0, 1]",
}


def write(out: TextIO, text: str = "") -> None:
    """Write one line to ``out`` and flush it (progress bars write to stderr meanwhile)."""
    out.write(text + "\n")
    out.flush()


#: Library spellings of options in error messages -> their command-line spelling.
_CLI_SPELLINGS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"""create_extractor\("[^"]*", weights="[^"]*"\)"""), "--weights PATH"),
    (re.compile(r"""\bweights=(["'])https?://[^"']*\1"""), "--weights URL"),
    (re.compile(r"""\bweights=(["'])[^"']*\1"""), "--weights PATH"),
    (re.compile(r"\bweights= path or URL"), "--weights PATH or URL"),
    (re.compile(r"\bresume=False \(CLI: --no-resume\)"), "--no-resume"),
    (re.compile(r" \(or build_index call\)"), ""),
    (re.compile(r"\boptionally sha256=\.\.\."), "optionally --extractor-opt sha256=..."),
    (
        re.compile(r"modality='CT' or 'MR' to load_volume \(or --modality on the command line\)"),
        "--modality CT or --modality MR",
    ),
    (re.compile(r"modality= to load_volume \(or --modality\)"), "--modality"),
)


def cli_syntax(message: str) -> str:
    """``message`` with the library's spelling of options replaced by the CLI's.

    Examples
    --------
    >>> cli_syntax('or pass a local file with weights="path/to/file"')
    'or pass a local file with --weights PATH'
    >>> cli_syntax("pass another index folder, or resume=False (CLI: --no-resume) to replace it")
    'pass another index folder, or --no-resume to replace it'
    >>> cli_syntax("pass modality= to load_volume (or --modality)")
    'pass --modality'
    """
    for pattern, spelling in _CLI_SPELLINGS:
        message = pattern.sub(spelling, message)
    return message


def show_progress(args: argparse.Namespace) -> bool:
    """Whether the command draws progress bars, following tqdm's conventions.

    No bars with ``--quiet``, when ``TQDM_DISABLE`` is set to a non-empty value (as
    tqdm reads it), or when stderr is not a terminal (tqdm's ``disable=None``: a log
    file or a SLURM output gets no cursor codes).

    Examples
    --------
    >>> show_progress(argparse.Namespace(quiet=True))
    False
    """
    if getattr(args, "quiet", False) or bars_disabled(None):
        return False
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty is not None and isatty())


def plural(n: int, word: str) -> str:
    """``"1 volume"``, ``"2 volumes"``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _fmt_float(value: float, spec: str = ".0f") -> str:
    return "-" if not math.isfinite(value) else format(value, spec)


def result_rows(
    hits: Hits, query_id: str, *, votes: bool = False, index: object = None, clip: bool = True
) -> list[dict[str, Any]]:
    """One query's ranked volumes as plain dicts, rounded for display and JSON.

    Cosine scores are clipped to [-1, 1] (float32 sums can exceed 1 in the last
    digits; ``clip=False`` for scores of another kind, such as fused ones) and rounded
    to :data:`SCORE_DIGITS` decimals; vote counts (``votes=True``) are integers. The
    span keys are the :class:`~cbirlib.Hits` column names: ``loc_first`` and
    ``loc_last`` (slices), ``loc_z_first`` and ``loc_z_last`` (z of those slices'
    centres, rounded to :data:`MM_DIGITS` decimals); ``None`` without a span. ``path``
    is the file the volume was read from, when ``index`` recorded it.
    """
    rows = hits.for_query(query_id).ranked()
    extra = rows.extra
    sources = getattr(index, "sources", None) or {}
    out: list[dict[str, Any]] = []
    for i in range(len(rows)):
        raw = float(rows.score[i])
        if votes:
            score: float = round(raw)
        else:
            score = round(min(1.0, max(-1.0, raw)) if clip else raw, SCORE_DIGITS)
        volume_id = str(rows.volume_id[i])
        row: dict[str, Any] = {"rank": int(rows.rank[i]), "volume_id": volume_id, "score": score}
        row.update(dict.fromkeys(("loc_first", "loc_last", "loc_z_first", "loc_z_last")))
        if "loc_first" in extra and int(extra["loc_first"][i]) >= 0:
            row["loc_first"], row["loc_last"] = (
                int(extra["loc_first"][i]),
                int(extra["loc_last"][i]),
            )
            z = [float(extra["loc_z_first"][i]), float(extra["loc_z_last"][i])]
            if all(math.isfinite(v) for v in z):
                row["loc_z_first"], row["loc_z_last"] = (round(v, MM_DIGITS) for v in z)
        source = sources.get(volume_id)
        where = source.resolve() if source is not None else None
        row["path"] = None if where is None else str(where)
        out.append(row)
    return out


def print_results(
    out: TextIO, title: str, rows: list[dict[str, Any]], *, score: str = "maxsim"
) -> None:
    """The rows of :func:`result_rows` as a table: rank, volume, score, slices, z (mm).

    ``score`` (a key of :data:`SCORE_MEANINGS`) names what the scores mean in the
    table's footnote.
    """
    write(out, title)
    write(
        out, f"  {'rank':>4}  {'volume':<24} {'score':>8}  {'loc (slices)':>12}  {'loc_z (mm)':>15}"
    )
    for row in rows:
        span = f"{row['loc_first']}-{row['loc_last']}" if row["loc_first"] is not None else "-"
        mm = (
            f"{_fmt_float(row['loc_z_first'])} to {_fmt_float(row['loc_z_last'])}"
            if row["loc_z_first"] is not None
            else "-"
        )
        write(
            out,
            f"  {row['rank']:>4}  {row['volume_id']:<24} {_fmt_score(row['score']):>8}"
            f"  {span:>12}  {mm:>15}",
        )
    if not rows:
        write(out, "  (no results)")
    else:
        write(out, f"  (score: {SCORE_MEANINGS[score]};")
        write(out, "   z: positions of the centres of the first and last slice of the span)")


def _fmt_score(score: float) -> str:
    return str(score) if isinstance(score, int) else f"{score:.4f}"
