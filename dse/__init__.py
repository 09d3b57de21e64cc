"""Design-space exploration (``flightforge dse``), the top layer beside the CLI.

``spec`` (what to explore), ``points`` (a point's architecture and evaluation),
``timing`` (exact fast timing on :mod:`flightforge.sim.dispatch`), ``resources`` and
``power`` (models), ``store`` (SQLite), ``executors`` (local or Dask), ``search`` (grid or
NSGA-II) and ``report`` (tables, plots, HTML). See docs/dse.md.
"""
