"""Guest programs for the KVM chapters: the LWN guest and a few more, x86 and teaching ISA.

A :class:`Guest` is a raw image plus where it goes: load address (guest-physical),
entry ``rip``, the initial registers, and the guest memory size.  x86 guests are
16-bit real-mode code run with ``cs.base = cs.selector = 0`` ([LWN15] step 9);
teaching-ISA guests are assembled with :func:`virtcore.hw.assemble`.

The LWN guest [LWN15; LOCAL]:

>>> g = lwn()
>>> g.code.hex(" "), hex(g.gpa), g.regs
('ba f8 03 00 d8 04 30 ee b0 0a ee f4', '0x1000', {'rax': 2, 'rbx': 2})
>>> len(BUILTIN), "lwn" in BUILTIN
(14, True)
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from virtcore.hw.asm import assemble

__all__ = ["BUILTIN", "LWN_CODE", "Guest", "lwn", "teaching_echo", "teaching_hello",
           "teaching_loop", "teaching_lwn", "teaching_mmio", "teaching_out_loop", "x86_echo",
           "x86_hello", "x86_ivt", "x86_loop", "x86_mmio", "x86_out_loop", "x86_ud2"]

#: "Using the KVM API" (Josh Triplett, LWN 2015): mov $0x3f8,%dx; add %bl,%al;
#: add $'0',%al; out %al,(%dx); mov $'\n',%al; out %al,(%dx); hlt
LWN_CODE = bytes.fromhex("ba f8 03 00 d8 04 30 ee b0 0a ee f4")
COM1 = 0x3F8


@dataclass(frozen=True)
class Guest:
    """A guest image and how to start it.

    Attributes
    ----------
    name : str
    isa : {"x86", "teaching"}
    code : bytes
        Copied to guest-physical ``gpa``.
    gpa : int
        Load address (start of the memory slot).
    entry : int or None
        Where ``rip`` starts (default ``gpa``).
    regs : dict
        Initial general registers by ``kvm_regs`` name (others 0; ``rflags`` = 0x2).
    memory_size : int
        Bytes of RAM in the one memory slot, starting at ``gpa``.
    inputs : bytes
        What the reference VMM answers to IN instructions, one byte each.
    expected_output : str
        What the guest writes to the serial port (COM1, 0x3f8).

    >>> Guest("nop", "x86", b"\\xf4").gpa
    4096
    """

    name: str
    isa: str
    code: bytes
    gpa: int = 0x1000
    regs: dict[str, int] = field(default_factory=dict)
    entry: int | None = None
    memory_size: int = 0x1000
    inputs: bytes = b""
    expected_output: str = ""
    note: str = ""


def lwn() -> Guest:
    """The LWN guest: adds 2 + 2 and prints ``4`` and a newline on COM1, then ``hlt``.

    >>> lwn().expected_output
    '4\\n'
    """
    return Guest("lwn", "x86", LWN_CODE, regs={"rax": 2, "rbx": 2}, expected_output="4\n",
                 note="LWN 'Using the KVM API' (2015): exits IO, IO, HLT")


def x86_hello() -> Guest:
    """Prints ``Hello, KVM!`` with a ``lodsb``/``out`` loop (one IO exit per byte).

    >>> x86_hello().code[:3].hex()
    'baf803'
    """
    code = bytes.fromhex(
        "ba f8 03"   # 0x1000 mov dx, 0x3f8
        "be 10 10"   # 0x1003 mov si, 0x1010
        "ac"         # 0x1006 lodsb
        "84 c0"      # 0x1007 test al, al
        "74 03"      # 0x1009 jz 0x100e
        "ee"         # 0x100b out dx, al
        "eb f8"      # 0x100c jmp 0x1006
        "f4"         # 0x100e hlt
        "90"         # 0x100f
    ) + b"Hello, KVM!\n\0"
    return Guest("x86_hello", "x86", code, expected_output="Hello, KVM!\n")


def x86_echo() -> Guest:
    """Reads a byte with ``in`` (data written back on the next ``KVM_RUN``), prints it + 1.

    >>> x86_echo().inputs
    b'A'
    """
    code = bytes.fromhex(
        "ba f8 03"   # mov dx, 0x3f8
        "ec"         # in al, dx        -> KVM_EXIT_IO (in); the VMM writes the byte back
        "04 01"      # add al, 1
        "ee"         # out dx, al
        "f4")        # hlt
    return Guest("x86_echo", "x86", code, inputs=b"A", expected_output="B")


def x86_mmio() -> Guest:
    """An MMIO read and an MMIO write at 0x8000 (no memory slot there).

    ``mov al, [0x8000]`` exits with ``is_write = 0`` and re-executes with the data;
    ``mov [0x8004], al`` exits with ``is_write = 1``; then ``hlt``.

    >>> x86_mmio().code.hex()
    'a000800401a20480f4'
    """
    code = bytes.fromhex("a0 00 80"  # mov al, [0x8000]
                         "04 01"     # add al, 1
                         "a2 04 80"  # mov [0x8004], al
                         "f4")       # hlt
    return Guest("x86_mmio", "x86", code)


def x86_loop(iterations: int = 1_000_000) -> Guest:
    """A loop with no exit (``add eax, ecx; dec ecx; jnz``), then ``hlt``: 3 instructions
    per iteration plus 2.

    >>> len(x86_loop(10).code)
    14
    """
    code = (b"\x66\xb9" + struct.pack("<I", iterations)  # mov ecx, n
            + bytes.fromhex("66 01 c8"   # add eax, ecx
                            "66 49"      # dec ecx
                            "75 f9"      # jnz -7
                            "f4"))       # hlt
    return Guest("x86_loop", "x86", code, note=f"{3 * iterations + 2} instructions")


def x86_out_loop(iterations: int = 1000) -> Guest:
    """``iterations`` OUT instructions to port 0x80 (one ``KVM_EXIT_IO`` each), then ``hlt``.

    >>> x86_out_loop(5).code[-1]
    244
    """
    code = (b"\x66\xb9" + struct.pack("<I", iterations)  # mov ecx, n
            + bytes.fromhex("ba 80 00"   # mov dx, 0x80
                            "ee"         # out dx, al
                            "66 49"      # dec ecx
                            "75 fb"      # jnz -5
                            "f4"))       # hlt
    return Guest("x86_out_loop", "x86", code)


def x86_ud2() -> Guest:
    """``ud2`` with no interrupt vector table in memory: a triple fault, ``KVM_EXIT_SHUTDOWN``.

    >>> x86_ud2().code
    b'\\x0f\\x0b'
    """
    return Guest("x86_ud2", "x86", b"\x0f\x0b")


def x86_ivt() -> Guest:
    """``ud2`` with an interrupt vector table at 0: the #UD handler prints ``U`` and halts.

    Memory starts at guest-physical 0 (the real-mode IVT); vector 6 points at 0x1100.

    >>> g = x86_ivt(); hex(g.entry), g.code[24:28].hex()
    ('0x1000', '00110000')
    """
    ivt = bytearray(0x1200)
    ivt[6 * 4:6 * 4 + 4] = (0x1100).to_bytes(2, "little") + (0).to_bytes(2, "little")
    ivt[0x1000:0x1002] = b"\x0f\x0b"                              # ud2
    ivt[0x1100:0x1108] = bytes.fromhex("ba f8 03 b0 55 ee f4 90")  # mov dx; mov al,'U'; out; hlt
    return Guest("x86_ivt", "x86", bytes(ivt), gpa=0, entry=0x1000, memory_size=0x2000,
                 regs={"rsp": 0x2000}, expected_output="U")


# ---------------------------------------------------------------------------
# teaching ISA (registers r0..r7 = rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp)
def _teach(name: str, source: str, gpa: int = 0x1000, **kw: object) -> Guest:
    return Guest(name, "teaching", assemble(source, gpa).to_bytes(), gpa, **kw)  # type: ignore[arg-type]


def teaching_lwn() -> Guest:
    """The LWN guest in the teaching ISA: r0 = rax = 2, r1 = rbx = 2; prints ``4\\n``.

    >>> teaching_lwn().regs
    {'rax': 2, 'rbx': 2}
    """
    return _teach("teaching_lwn", """
        .equ COM1, 0x3f8
        add  r0, r1        ; al + bl
        addi r0, '0'
        out  COM1, r0      ; KVM_EXIT_IO
        movi r0, 10        ; '\\n'
        out  COM1, r0      ; KVM_EXIT_IO
        hlt                ; KVM_EXIT_HLT
    """, regs={"rax": 2, "rbx": 2}, expected_output="4\n")


def teaching_hello() -> Guest:
    """Prints ``Hi`` and a newline.

    >>> teaching_hello().expected_output
    'Hi\\n'
    """
    return _teach("teaching_hello", """
        movi r0, 'H'
        out  0x3f8, r0
        movi r0, 'i'
        out  0x3f8, r0
        movi r0, 10
        out  0x3f8, r0
        hlt
    """, expected_output="Hi\n")


def teaching_echo() -> Guest:
    """``in`` a value, print it + 1.

    >>> teaching_echo().inputs
    b'A'
    """
    return _teach("teaching_echo", """
        in   r0, 0x3f8     ; KVM_EXIT_IO (in): data arrives on the next KVM_RUN
        addi r0, 1
        out  0x3f8, r0
        hlt
    """, inputs=b"A", expected_output="B")


def teaching_mmio() -> Guest:
    """Load from and store to 0x8000/0x8004, where no memory slot is: two MMIO exits.

    >>> teaching_mmio().name
    'teaching_mmio'
    """
    return _teach("teaching_mmio", """
        lui  r1, 0
        ori  r1, 0x8000
        ld   r0, [r1+0]    ; KVM_EXIT_MMIO read, re-executed with the data
        addi r0, 1
        st   r0, [r1+4]    ; KVM_EXIT_MMIO write
        hlt
    """)


def teaching_loop(iterations: int = 100_000) -> Guest:
    """A loop without exits (3 instructions per iteration), then ``hlt``.

    >>> teaching_loop(10).isa
    'teaching'
    """
    return _teach("teaching_loop", f"""
        lui  r2, {iterations >> 16}
        ori  r2, {iterations & 0xFFFF}
    loop:
        add  r0, r2
        addi r2, -1
        cmpi r2, 0
        jnz  loop
        hlt
    """, note=f"{4 * iterations + 3} instructions")


def teaching_out_loop(iterations: int = 1000) -> Guest:
    """``iterations`` OUT instructions to port 0x80 (one exit each), then ``hlt``.

    >>> teaching_out_loop(3).name
    'teaching_out_loop'
    """
    return _teach("teaching_out_loop", f"""
        lui  r2, {iterations >> 16}
        ori  r2, {iterations & 0xFFFF}
    loop:
        out  0x80, r0
        addi r2, -1
        cmpi r2, 0
        jnz  loop
        hlt
    """)


#: name → factory of every guest above
BUILTIN: dict[str, Callable[[], Guest]] = {
    "lwn": lwn, "x86_hello": x86_hello, "x86_echo": x86_echo, "x86_mmio": x86_mmio,
    "x86_loop": x86_loop, "x86_out_loop": x86_out_loop, "x86_ud2": x86_ud2, "x86_ivt": x86_ivt,
    "teaching_lwn": teaching_lwn, "teaching_hello": teaching_hello,
    "teaching_echo": teaching_echo, "teaching_mmio": teaching_mmio,
    "teaching_loop": teaching_loop, "teaching_out_loop": teaching_out_loop,
}
