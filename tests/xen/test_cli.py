"""``python -m virtcore.xen`` as a self-learner runs it (subprocess), and its in-process main()."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from virtcore.xen.cli import main


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "virtcore.xen", *args], capture_output=True,
                          text=True, timeout=120, input=stdin, check=False)


def test_help_teaches() -> None:
    r = run("--help")
    assert r.returncode == 0
    for word in ("boots", "Domain 0", "script", "demo", "--trace", "xl list", "event channel"):
        assert word in r.stdout
    sub = run("grant", "--help")
    assert "GTF_readonly" in sub.stdout and "maps it through Xen" in sub.stdout


def test_boot_and_list() -> None:
    r = run("--guest", 'name="web"; memory=1; vcpus=2', "list")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["Name", "ID", "Mem", "VCPUs", "State", "Time(s)"]
    assert lines[2].split() == ["web", "1", "1", "2", "r-----", "0.0"]
    boot = run("boot").stdout.splitlines()
    assert boot[0].startswith("boot loader starts Xen") and "Domain 0" in " ".join(boot[2:])


def test_send_with_trace_prints_hypercalls() -> None:
    r = run("--trace", "--guest", 'name="a"', "--guest", 'name="b"', "send", "a", "b")
    assert r.returncode == 0
    assert "d1 send(port 1) = 0; d2 got 1 upcall(s)" in r.stdout
    assert "[trace]" in r.stdout and "EVTCHNOP_send" in r.stdout and "[SYSCALL]" in r.stdout


def test_grant_readonly_and_blk() -> None:
    r = run("--guest", 'name="a"', "--guest", 'name="b"', "grant", "a", "b", "--readonly")
    assert "map_grant_ref(writable) → GNTST_general_error" in r.stdout
    assert "map_grant_ref(readonly) → GNTST_okay" in r.stdout
    assert "writes the page: -EFAULT" in r.stdout
    r = run("--guest", 'name="web"; disk=1', "blk", "web", "write", "3", "hello")
    assert r.returncode == 0 and "BLKIF_RSP_OKAY" in r.stdout and "device" in r.stdout


def test_script_chains_steps_and_reports_errors(tmp_path: Path) -> None:
    steps = tmp_path / "steps.txt"
    steps.write_text('create name="a"; memory=1\npause a\nlist\ndomctl a unpause a\n'
                     "destroy 0\nblk a read 0\n")
    r = run("script", str(steps))
    assert r.returncode == 1                      # destroy 0 and blk without a disk fail
    assert "--p---" in r.stdout
    assert "is paused" in r.stdout                 # a paused domain makes no hypercall
    assert "error: xl destroy: destroying Domain-0 needs -f" in r.stdout
    assert "has no virtual disk" in r.stdout
    r2 = run("script", "-", stdin="create name=\"x\"\ndomctl x pause 0\n")
    assert "d1 domctl XEN_DOMCTL_pausedomain(d0) = -EPERM" in r2.stdout


def test_demo_runs_clean() -> None:
    r = run("demo")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "data: b'hello-xen'" in r.stdout and "= -EPERM" in r.stdout


def test_bad_config_is_an_error_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--guest", 'memory=1', "list"]) == 1
    assert "error: config needs a name" in capsys.readouterr().out
