"""The package's import graph: no cycle, and no module imports a higher layer at load time.

Layers run from the foundations (errors, types) up to the command line; a module may
import its own layer or lower ones. Imports inside functions (lazy, to keep
``import cbirlib`` cheap) must also respect the layers.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import cbirlib

PACKAGE = Path(cbirlib.__file__).parent

#: module (or package prefix) -> layer; lower layers never import higher ones
LAYERS: dict[str, int] = {
    "cbirlib._version": 0,
    "cbirlib._typing": 0,
    "cbirlib._text": 0,
    "cbirlib._files": 0,
    "cbirlib._gzip": 0,
    "cbirlib._progress": 0,
    "cbirlib.errors": 0,
    "cbirlib._vectors": 1,
    "cbirlib.structures": 1,
    "cbirlib.labels": 2,
    "cbirlib.volume": 3,
    "cbirlib.prefetch": 1,
    "cbirlib.weights": 1,
    "cbirlib.preprocess": 1,
    "cbirlib.modality": 1,
    "cbirlib.provenance": 1,
    "cbirlib.hits": 1,
    "cbirlib.io": 4,
    "cbirlib.io._paths": 4,
    "cbirlib.io._canonical": 4,
    "cbirlib.io.nifti": 4,
    "cbirlib.io.dicom": 4,
    "cbirlib.io.enhanced": 4,
    "cbirlib.io.nrrd": 4,
    "cbirlib.io.seg": 4,
    "cbirlib.ingest": 4,
    "cbirlib._reused_arrays": 4,
    "cbirlib.datasets": 5,
    "cbirlib.hookspecs": 4,
    "cbirlib._cuda_pipeline": 4,
    "cbirlib.extractor": 4,
    "cbirlib.plugins": 5,
    "cbirlib.extractors": 6,
    "cbirlib.informative": 4,
    "cbirlib.index": 4,
    "cbirlib.pipeline": 4,
    "cbirlib.search": 5,
    "cbirlib.queries": 5,
    "cbirlib.aggregate": 5,
    "cbirlib.rerank": 5,
    "cbirlib.localize": 5,
    "cbirlib.fusion": 5,
    "cbirlib.presets": 6,
    "cbirlib.distributed": 6,
    "cbirlib.annotation": 6,
    "cbirlib.annotation_eval": 7,
    "cbirlib.finder": 7,
    "cbirlib.truth": 5,
    "cbirlib.metrics": 6,
    "cbirlib.evaluation": 7,
    "cbirlib.significance": 7,
    "cbirlib.tables": 7,
    "cbirlib.viz": 7,
    "cbirlib.benchmarking": 8,
    "cbirlib.cli": 9,
    "cbirlib.__main__": 10,  # ``python -m cbirlib``: runs the command line
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int | None:
    best = None
    for prefix, layer in LAYERS.items():
        if (module == prefix or module.startswith(prefix + ".")) and (
            best is None or len(prefix) > len(best[0])
        ):
            best = (prefix, layer)
    return None if best is None else best[1]


def _imports(path: Path) -> list[tuple[str, bool]]:
    """``(imported cbirlib module, at module level)`` for every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    type_checking = {
        id(n)
        for node in tree.body
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    found = []
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cbirlib"):
            found.append((node.module, id(node) in top_level))
        elif isinstance(node, ast.Import):
            found += [
                (a.name, id(node) in top_level) for a in node.names if a.name.startswith("cbirlib")
            ]
    return found


def _graph() -> dict[str, list[tuple[str, bool]]]:
    return {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_has_a_layer() -> None:
    missing = [m for m in _graph() if m != "cbirlib" and _layer(m) is None]
    assert missing == []


def test_no_import_reaches_up_a_layer() -> None:
    upward = [
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
        for module, targets in _graph().items()
        if module != "cbirlib"
        for target, _ in targets
        if target != "cbirlib" and (_layer(target) or 0) > (_layer(module) or 0)
    ]
    assert upward == []


def test_nothing_imports_the_package_root() -> None:
    # `from cbirlib import x` inside the package runs the lazy loader and hides a cycle
    offenders = [
        module
        for module, targets in _graph().items()
        if module != "cbirlib" and any(target == "cbirlib" for target, _ in targets)
    ]
    assert offenders == []


def test_module_level_imports_have_no_cycle() -> None:
    graph = {
        module: {t for t, top in targets if top and t != module}
        for module, targets in _graph().items()
    }
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*stack[stack.index(target) :], target]))
            elif target in graph and target not in state:
                visit(target, [*stack, target])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from cbirlib.cli import main\n\ndef f():\n    from cbirlib.viz import montage\n"
    )
    assert _imports(bad) == [("cbirlib.cli", True), ("cbirlib.viz", False)]
    assert _layer("cbirlib.index.meta") == LAYERS["cbirlib.index"]
    assert _layer("cbirlib.cli") > _layer("cbirlib.errors")  # type: ignore[operator]


def _unexplained_local_imports(path: Path) -> list[int]:
    """Lines of function-local ``cbirlib`` imports with no comment on or above them."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    tree = ast.parse(source)
    top_level = {id(node) for node in tree.body}
    top_level |= {  # `if TYPE_CHECKING:` imports are for type checkers, never run
        id(n)
        for node in tree.body
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    bare = []
    for node in ast.walk(tree):
        if id(node) in top_level or not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        names = (
            [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else [a.name for a in node.names]
        )
        if not any(n == "cbirlib" or n.startswith("cbirlib.") for n in names):
            continue
        own = lines[node.lineno - 1 : (node.end_lineno or node.lineno)]
        above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
        if not (any("#" in line for line in own) or above.startswith("#")):
            bare.append(node.lineno)
    return bare


def test_function_local_imports_say_why() -> None:
    # a function-local import guards a real cycle or keeps `import cbirlib` and the CLI
    # start cheap (torch, hnswlib, nibabel, ...); a comment says which, else it goes on top
    bare = [
        f"{_module_name(path)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line in _unexplained_local_imports(path)
    ]
    assert bare == []


def test_the_local_import_check_sees_a_bare_one(tmp_path: Path) -> None:
    mod = tmp_path / "m.py"
    mod.write_text(
        "def f():\n"
        "    from cbirlib.io import load_volume  # lazy: nibabel\n"
        "    # lazy: torch\n"
        "    from cbirlib.extractor import Extractor\n"
        "    from cbirlib.structures import COARSE_GROUPS\n"
        "    import numpy\n"
        "if TYPE_CHECKING:\n"
        "    from cbirlib.hits import Hits\n"
    )
    assert _unexplained_local_imports(mod) == [5]


def test_cli_start_loads_no_heavy_dependency() -> None:
    code = (
        "import sys, cbirlib.cli; "
        "heavy = [m for m in ('torch', 'timm', 'hnswlib', 'pydicom', 'nibabel', 'matplotlib',"
        " 'pandas', 'ray', 'pymilvus') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
