"""Every Python package folder of the repository is installed by pyproject.toml.

compiler/, hw/, sim/, dse/ and mappings/ are mapped into the flightforge namespace through
``package-dir``, so setuptools cannot discover their subpackages by itself: a folder
missing from ``packages`` would work in an editable install and vanish from a plain one.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    dirs = cfg["package-dir"]
    found = set()
    for pkg, folder in dirs.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([pkg, *rel.parts]))
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    assert "*.yaml" in cfg["package-data"]["flightforge.mappings"]
    assert "*.json" in cfg["package-data"]["flightforge.dse"]  # resource_calibration.json


def test_verilator_testbench_sources_are_package_data():
    """The harness builds from files in sim/verilator/, which are not Python modules:
    without package-data a plain install would lack them."""
    from fnmatch import fnmatch

    from flightforge.sim.rtl_harness import TB_DIR, TB_SOURCES

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["flightforge.sim"]
    for name in TB_SOURCES:
        assert (TB_DIR / name).is_file(), name
        rel = f"{TB_DIR.name}/{name}"
        assert any(fnmatch(rel, pat) for pat in patterns), (
            f"add {rel} to flightforge.sim package-data"
        )
