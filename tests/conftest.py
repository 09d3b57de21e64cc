"""Test-suite options and fixtures shared by every test file.

``--run-slow`` also runs the tests marked ``slow`` (RTL builds and long simulations,
Verilog export, synthesis, torch exports, trained models): the default ``python -m pytest``
skips them to stay within minutes on a 2-core machine; CI (``.ci/run``) runs them all.

``tiny`` is the small shipped target most tests run on; ``rtl_tiny`` is the same target
for tests that drive the Verilog under Verilator through cocotb, skipped with the reason
(``rtl_harness.unavailable``) when Verilator or cocotb is missing, never passed silently.
"""

from __future__ import annotations

import pytest

from flightforge.arch import ArchConfig
from flightforge.mappings import load_target


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        help="also run the tests marked slow (RTL, export, synthesis); .ci/run does",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow (CI does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny() -> ArchConfig:
    return load_target("tiny")


@pytest.fixture(scope="session")
def rtl_tiny(tiny: ArchConfig) -> ArchConfig:
    from flightforge.sim import rtl_harness

    if reason := rtl_harness.unavailable():
        pytest.skip(reason)
    return tiny
