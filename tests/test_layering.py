"""The layers import only downwards (README "Layout", docs/compiler.md).

Every import of every module is read from its syntax tree, function-local imports
included, so a lazy import that reaches up a layer fails here as surely as a top-level
one. Relative imports are resolved against the module's installed name
(``flightforge.compiler.lower.kernels``, ...).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: installed package -> folder of the repository (pyproject's package-dir)
FOLDERS = {
    "flightforge.compiler": "compiler",
    "flightforge.hw": "hw",
    "flightforge.sim": "sim",
    "flightforge.dse": "dse",
    "flightforge.mappings": "mappings",
}


def module_name(path: Path) -> str:
    """Installed dotted name of a repository file."""
    rel = path.relative_to(ROOT)
    for pkg, folder in FOLDERS.items():
        if rel.parts[0] == folder:
            parts = pkg.split(".") + list(rel.parts[1:])
            break
    else:
        parts = list(rel.parts)
    parts[-1] = parts[-1].removesuffix(".py")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``path``, at any depth."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            # ``from pkg import mod`` imports a module too
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
    return out


def files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def violations(folder: str, forbidden: tuple[str, ...], exempt=()) -> list[str]:
    bad = []
    for path in files(folder):
        if path.name in exempt:
            continue
        for line, mod in imports(path):
            if any(mod == f or mod.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod}")
    return bad


def test_the_scan_sees_relative_and_function_local_imports(tmp_path):
    """The scanner itself: a lazy relative import inside a function is found."""
    path = ROOT / "compiler" / "lower" / "kernels.py"
    found = {mod for _, mod in imports(path)}
    assert "flightforge.compiler.errors.CompileError" in found
    assert "flightforge.compiler.quant.fixed_point.HI_MULT" in found
    pipeline = {mod for _, mod in imports(ROOT / "compiler" / "pipeline.py")}
    # imported inside compile_onnx(), not at the top of the module
    assert "flightforge.compiler.frontend.onnx_import.import_onnx" in pipeline


COMPILER_RULES = [
    # the frontend turns ONNX into the IR: it knows nothing of quantisation or lowering
    ("compiler/frontend", ("flightforge.compiler.quant", "flightforge.compiler.lower")),
    # quantisation sits below lowering and above no frontend
    ("compiler/quant", ("flightforge.compiler.lower", "flightforge.compiler.frontend")),
    ("compiler/lower", ("flightforge.compiler.frontend",)),
]


@pytest.mark.parametrize(
    ("folder", "forbidden"), COMPILER_RULES, ids=[r[0] for r in COMPILER_RULES]
)
def test_compiler_stages_import_only_down_the_pipeline(folder, forbidden):
    assert violations(folder, forbidden) == []


def test_only_the_frontend_imports_onnx():
    bad = []
    for folder in ("flightforge", "compiler", "sim", "hw", "dse", "mappings"):
        for path in files(folder):
            if path.is_relative_to(ROOT / "compiler" / "frontend"):
                continue
            bad += [
                f"{path.relative_to(ROOT)}:{line} imports {mod}"
                for line, mod in imports(path)
                if mod == "onnx" or mod.startswith("onnx.")
            ]
    assert bad == []


UPPER = tuple(f"flightforge.{p}" for p in ("compiler", "sim", "hw", "dse", "mappings"))


def test_the_core_imports_nothing_above_it():
    """flightforge/ (ISA, config, formats, numerics, program, ...) is the bottom layer:
    compiler, simulators, RTL, DSE and the target loader build on it, never the reverse."""
    assert violations("flightforge", UPPER, exempt=("cli.py",)) == []


def test_the_cli_reaches_the_upper_layers_only_lazily():
    """cli.py is the top layer and may call any other, but only from inside its commands,
    so that importing it (``flightforge --help``) loads the core alone."""
    path = ROOT / "flightforge" / "cli.py"
    tree = ast.parse(path.read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {mod for _, mod in imports(path)}
    eager = []
    for node in top:
        if isinstance(node, ast.ImportFrom) and node.level:
            eager += [f"flightforge.{node.module or ''}" for _ in node.names]
        elif isinstance(node, ast.ImportFrom):
            eager.append(node.module)
        else:
            eager += [a.name for a in node.names]
    assert [m for m in eager if any(m == u or m.startswith(u + ".") for u in UPPER)] == []
    assert any(m.startswith("flightforge.compiler") for m in names)  # the scan sees lazy ones


def test_nothing_imports_from_benchmarks_or_test_modules():
    """Code that tests and benchmarks share lives in the package (or, for the trainer's
    helpers, in examples/): the package, benchmarks and examples import nothing from
    tests/, nothing imports benchmarks/, and no test module imports another. Only
    tests/ itself may use its support module (onnx_builders.py)."""
    test_modules = {p.stem for p in (ROOT / "tests").glob("*.py")}
    bench_modules = {p.stem for p in (ROOT / "benchmarks").glob("*.py")}
    bad = []
    for folder in ("flightforge", "compiler", "sim", "hw", "dse", "mappings", "tests"):
        for path in files(folder):
            for line, mod in imports(path):
                top = mod.split(".")[0]
                in_tests = folder == "tests"
                if (
                    top in bench_modules
                    or (top in test_modules and (not in_tests or top.startswith("test_")))
                    or top in ("tests", "benchmarks")
                ):
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod}")
    for folder in ("benchmarks", "examples"):
        for path in files(folder):
            for line, mod in imports(path):
                top = mod.split(".")[0]
                if top in test_modules or top in bench_modules:
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod}")
    assert bad == []
