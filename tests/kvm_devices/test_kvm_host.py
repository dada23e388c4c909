"""Guests as processes, vCPUs as threads on the host's CFS [KVM-ORIG; QEMU-ACCEL] (S3.2)."""

from __future__ import annotations

import pytest

from virtcore.errors import ConfigurationError
from virtcore.kvm.host import FIRST_PID, Host, HostError, fair_shares
from virtcore.sched import SCHED_PRIO_TO_WEIGHT, IOBound, RoundRobin, nice_to_weight


def test_vm_with_two_vcpu_threads_gets_twice_a_one_thread_process() -> None:
    """Check a 2-vCPU VM against one host process on one pCPU: about 2 : 1 (every thread counts)."""
    host = Host(pcpus=1)
    host.add_vm("vm", vcpus=2)
    host.add_process("job")
    run = host.run(duration_us=1_200_000)
    ratio = run.share("vm") / run.share("job")
    assert ratio == pytest.approx(2.0, rel=0.05)
    assert run.share("vm") + run.share("job") == pytest.approx(1.0, abs=1e-6)
    assert run.thread_share("vm", 0) == pytest.approx(run.thread_share("vm", 1), rel=0.05)


@pytest.mark.parametrize("nice", [-5, -1, 1, 3, 5, 10])
def test_nice_moves_a_vm_share_by_the_weight_ratio(nice: int) -> None:
    """Check renice on a VM: its share against a nice-0 process follows the weight table."""
    host = Host()
    host.add_vm("vm")
    host.add_process("job")
    before = host.run(duration_us=1_000_000)
    host.renice("vm", nice)
    after = host.run(duration_us=1_000_000)
    expected = nice_to_weight(nice) / nice_to_weight(0)
    got = after.share("vm") / after.share("job")
    assert got == pytest.approx(expected, rel=0.08)
    moved = after.share("vm") - before.share("vm")
    assert (moved < 0) == (nice > 0) and abs(moved) > 0.02  # the right direction
    assert SCHED_PRIO_TO_WEIGHT[nice + 20] == nice_to_weight(nice)


def test_two_pcpus_and_the_ideal_shares() -> None:
    """Check shares on 2 pCPUs match CFS's ideal (no thread gets more than one pCPU)."""
    host = Host(pcpus=2)
    host.add_vm("big", vcpus=3)
    host.add_vm("small", nice=-5)
    run = host.run(duration_us=1_000_000)
    ideal = fair_shares(list(host.processes.values()), 2)
    assert ideal["small"] == pytest.approx(1.0)  # capped at one pCPU
    assert ideal["big"] == pytest.approx(1.0)
    for name in ("big", "small"):
        assert run.share(name) == pytest.approx(ideal[name], rel=0.1)


def test_sleeping_vcpus_leave_cpu_to_others() -> None:
    """Check an I/O-bound guest takes less than its fair share, and the process gets the rest."""
    host = Host()
    host.add_vm("io", workload=IOBound(run_us=1_000, block_us=3_000))
    host.add_process("hog")
    run = host.run(duration_us=1_000_000)
    assert run.share("io") < 0.35 < run.share("hog")
    assert run.share("io") + run.share("hog") == pytest.approx(1.0, abs=0.01)


def test_kill_ps_and_names() -> None:
    """Check pids and thread names, kill(1), and the errors."""
    host = Host()
    vm = host.add_vm("web", vcpus=2, main_loop=True)
    sh = host.add_process("sh", threads=2, nice=3)
    assert vm.pid == FIRST_PID and sh.pid == FIRST_PID + 3
    assert vm.threads == ("CPU 0/KVM", "CPU 1/KVM", "qemu-main") and vm.vcpus == 2
    assert "qemu-system-x86_64" in vm.command and sh.weight == nice_to_weight(3)
    text = host.ps()
    assert text.count("CPU 1/KVM") == 1 and text.count("\n") == 5
    host.kill("web")
    assert list(host.processes) == ["sh"] and "web" not in host.ps()
    run = host.run(duration_us=200_000)
    assert run.share("sh") == pytest.approx(1.0)
    with pytest.raises(HostError):
        host.kill("web")
    with pytest.raises(HostError):
        host.add_process("sh")
    with pytest.raises(HostError):
        run.share("web")
    with pytest.raises(ConfigurationError):
        host.renice("sh", 20)
    with pytest.raises(HostError):
        Host().run()


def test_top_and_other_schedulers() -> None:
    """Check top() sums to the process shares, and any scheduler plugin can be the host's."""
    host = Host(scheduler=lambda: RoundRobin(10_000))
    host.add_vm("a", vcpus=2)
    host.add_process("b")
    run = host.run(duration_us=300_000)
    assert run.result.scheduler == "RoundRobin"
    assert run.share("a") == pytest.approx(2 / 3, abs=0.04)
    assert "total by process" in run.top() and "CPU 0/KVM" in repr(run)
