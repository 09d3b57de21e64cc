"""Test-suite options shared by every test file.

``--run-slow`` also runs the tests marked ``slow`` (RTL builds and long simulations,
Verilog export, synthesis, torch exports, trained models): the default ``python -m pytest``
skips them to stay within minutes on a 2-core machine; CI (``.ci/run``) runs them all.
"""

import pytest


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
