"""cocotb test modules run inside the simulator by :mod:`flightforge.sim.rtl_harness`."""
