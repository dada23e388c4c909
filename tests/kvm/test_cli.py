"""``python -m virtcore.kvm run guest.bin``: serial output and exit trace."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from virtcore.hw import assemble
from virtcore.kvm.cli import main
from virtcore.kvm.guests import LWN_CODE


def test_raw_x86_binary_prints_the_published_output(
        x86: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the LWN guest starts with al = bl = 2: give it the two registers' worth of code
    code = bytes.fromhex("b0 02 b3 02") + LWN_CODE  # mov al,2; mov bl,2; then the 12 bytes
    image = tmp_path / "guest.bin"
    image.write_bytes(code)
    assert main(["run", str(image)]) == 0
    assert capsys.readouterr().out == "4\nKVM_EXIT_HLT\n"


def test_builtin_lwn_with_trace(x86: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "lwn", "--trace"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "4" and out[-1] == "KVM_EXIT_HLT"
    assert out[2:5] == ["   1 KVM_EXIT_IO out port=0x3f8 size=1 count=1 data=34",
                        "   2 KVM_EXIT_IO out port=0x3f8 size=1 count=1 data=0a",
                        "   3 KVM_EXIT_HLT"]


def test_teaching_binary_and_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "echo.bin"
    image.write_bytes(assemble("in r0, 0x3f8\nout 0x3f8, r0\nhlt", 0x1000).to_bytes())
    assert main(["run", str(image), "--isa", "teaching", "--input", "Q", "--trace"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Q"
    assert "KVM_EXIT_IO in port=0x3f8 size=4 count=1 data=51000000" in out[2]


def test_real_kvm_runs_only_x86(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "teaching_lwn", "--real"]) == 1
    assert "x86" in capsys.readouterr().err


def test_missing_guest() -> None:
    with pytest.raises(SystemExit, match="no such file"):
        main(["run", "/nonexistent/guest.bin"])


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    assert "lwn" in capsys.readouterr().out


def test_module_entry_point() -> None:
    proc = subprocess.run([sys.executable, "-m", "virtcore.kvm", "run", "teaching_lwn"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "4\nKVM_EXIT_HLT\n"
