"""Facts the chapters' demos rely on, checked here instead of in the chapters.

The chapters keep only the asserts that state something a reader should notice; these guard the
demos themselves (the same code, the same numbers), so a change in the library that would make a
chapter's text wrong fails here with a name.
"""

from __future__ import annotations

from virtcore.hw import Machine, assemble


def test_ch0_the_sum_program_stores_55():
    program = assemble("""
        movi r1, 0
        movi r2, 10
loop:   add  r1, r2
        addi r2, -1
        cmpi r2, 0
        jnz  loop
        st   r1, [r0+result]
        hlt
result: .word 0
""")
    machine = Machine.with_program(program)
    machine.run()
    assert machine.cpu.regs[1] == sum(range(1, 11)) == 55
    assert machine.memory.read_word(program.symbols["result"]) == 55
    from virtcore.viz.hw import Stepper

    walk = Stepper(Machine.with_program(program), program=program)
    walk.step(4)
    assert (walk.steps, walk.machine.cpu.regs[1], walk.machine.cpu.regs[2]) == (4, 10, 9)


def test_ch0_kernel_mode_runs_to_the_end_and_hello_prints():
    kernel = Machine.with_program("movi r1, 1\ncli\nmovi r1, 2\nhlt", mode="kernel")
    assert (kernel.run().event, kernel.cpu.regs[1]) == (None, 2)
    hello = Machine.with_program("""
        .equ COM1, 0x3f8
        li   r2, msg
next:   ld   r1, [r2]
        cmpi r1, 0
        jz   done
        out  COM1, r1
        addi r2, 4
        jmp  next
done:   hlt
msg:    .word 'h', 'e', 'l', 'l', 'o', 10, 0
""")
    hello.run()
    assert hello.serial.text == "hello\n"


def test_ch0_event_channels_are_chapter_6():
    from virtcore.viz.course import chapter_of

    assert chapter_of("S6.3").number == 6


# chapter 1 (notebooks/01-architectures.ipynb): facts its cells print or draw, asserted here


def test_ch1_bare_metal_has_no_host_os_and_the_hypervisor_sits_on_the_hardware():
    from virtcore.arch import bare_metal, bare_metal_xen

    assert bare_metal().host_os is None
    assert [layer.name for layer in bare_metal().below("hypervisor")] == ["hardware"]
    # a Xen guest's kernel runs on the hypervisor and on Domain 0 (its backends)
    assert [layer.name for layer in bare_metal_xen().below("vm1 kernel")] == ["hypervisor",
                                                                              "dom0 kernel"]


def test_ch1_a_failing_shared_layer_takes_every_guest():
    from virtcore.arch import bare_metal, bare_metal_xen, simulate_fault

    every = ("vm1", "vm2", "vm3")
    assert simulate_fault(bare_metal(guests=3), "hypervisor_crash").affected == every
    dom0 = simulate_fault(bare_metal_xen(guests=3), "backend_crash", in_="vm2")
    assert dom0.affected == every and "dom0 kernel" in dom0.failed_layers


def test_ch1_containers_share_the_hosts_kernel_and_a_vm_brings_its_own():
    import pytest

    from virtcore.arch import Host, IncompatibleGuestError, can_run, hosted, os_level

    assert not can_run(os_level(host_os="linux"), "windows").ok
    assert can_run(hosted(host_os="windows"), "linux").ok
    with pytest.raises(IncompatibleGuestError):
        Host("os-level", {"web": "ubuntu", "iis": "windows"})


def test_ch1_nested_paging_walks_24_entries_on_a_tlb_miss():
    from virtcore.arch import Event, bare_metal, event_path

    walks = [event_path(bare_metal(), Event.TLB_MISS, hardware_assist=assist)
             .count("memory_reference") for assist in (True, False)]
    assert walks == [(4 + 1) * (4 + 1) - 1, 4]


def test_ch1_the_notes_diagrams_classify_like_the_stacks():
    from virtcore.arch import bare_metal, classify, hosted, hybrid, type1_diagram, type2_diagram

    assert classify(type1_diagram()).type.value == classify(bare_metal()).type.value == "type 1"
    assert classify(type2_diagram()).type.value == classify(hosted()).type.value == "type 2"
    assert {view.type.value for view in classify(hybrid()).views} == {"type 1", "type 2"}  # N3


def test_ch1_the_notes_spellings_and_what_runs_on_the_hardware():
    from virtcore.arch import KERNEL_ON_HARDWARE, bare_metal, product, products

    assert (product("Ctrix XenServer").name, product("Readhat KVM").name) == (
        "Citrix XenServer", "Red Hat KVM")  # N8
    assert [p for p, kernel in KERNEL_ON_HARDWARE.items() if kernel == "linux"] == ["Red Hat KVM"]
    assert KERNEL_ON_HARDWARE["Xen"] == "xen" and KERNEL_ON_HARDWARE["VMware ESXi"] == "vmkernel"
    assert "firmware" in bare_metal(embedded=True).layer("hypervisor").note  # S1.9
    assert set(products(embedded_in_firmware=True).names()) == {"VMware ESXi Embedded",
                                                                "Hitachi Virtage"}


def test_ch1_with_assist_a_guests_io_leaves_it_once_and_comes_back():
    from virtcore.arch import Event, bare_metal, event_path

    io = event_path(bare_metal(), Event.IO, hardware_assist=True)
    exits = [(step.src, step.dst) for step in io.steps if step.kind == "vm_exit"]
    assert exits == [("vm1 kernel", "hypervisor"), ("hypervisor", "vm1 kernel")]  # exit, entry
    assert event_path(bare_metal(), Event.IO).count("vm_exit") == 0  # software VMM: traps
