"""Tests for virtcore.hw.memory: physical memory words/bytes, code-write notification, frames."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from virtcore.errors import AddressError, ConfigurationError, VirtcoreError
from virtcore.hw.memory import FrameAllocator, FrameError, OutOfFramesError, PhysicalMemory

# -- geometry ------------------------------------------------------------------


def test_default_geometry() -> None:
    mem = PhysicalMemory()
    assert (mem.size, mem.frame_size, mem.nframes, mem.frame_bits) == (65536, 4096, 16, 12)
    assert len(mem.words) == 65536 // 4
    assert all(w == 0 for w in mem.words)


def test_teaching_geometry() -> None:
    mem = PhysicalMemory(size=1024, frame_size=32)
    assert (mem.nframes, mem.frame_bits) == (32, 5)
    assert "32 frames of 32 bytes" in repr(mem)


@pytest.mark.parametrize(
    ("size", "frame_size"),
    [(4096, 4), (4096, 48), (4096, 0), (100, 32), (0, 32), (-64, 32), (4096, 4096 * 2)],
)
def test_bad_geometry_is_a_configuration_error(size: int, frame_size: int) -> None:
    with pytest.raises(ConfigurationError):
        PhysicalMemory(size=size, frame_size=frame_size)


# -- words ----------------------------------------------------------------------


def test_words_are_the_storage() -> None:
    mem = PhysicalMemory(64, 32)
    mem.write_word(12, 0x1234_5678)
    assert mem.words[3] == 0x1234_5678
    mem.words[4] = 99
    assert mem.read_word(16) == 99


@pytest.mark.parametrize("value", [-1, 1 << 32, (1 << 40) + 5, -(1 << 31)])
def test_write_word_masks_to_32_bits(value: int) -> None:
    mem = PhysicalMemory(64, 32)
    mem.write_word(0, value)
    assert mem.read_word(0) == value & 0xFFFF_FFFF
    assert 0 <= mem.words[0] < 1 << 32


@pytest.mark.parametrize("paddr", [-4, 64, 1 << 20, 62])
def test_word_access_out_of_range(paddr: int) -> None:
    mem = PhysicalMemory(64, 32)
    with pytest.raises(AddressError):
        mem.read_word(paddr)
    with pytest.raises(AddressError):
        mem.write_word(paddr, 1)


@pytest.mark.parametrize("paddr", [1, 2, 3, 57])
def test_word_access_misaligned(paddr: int) -> None:
    mem = PhysicalMemory(64, 32)
    with pytest.raises(AddressError, match="multiple of 4"):
        mem.read_word(paddr)
    with pytest.raises(AddressError):
        mem.write_word(paddr, 1)
    assert mem.words == [0] * 16


def test_address_error_is_a_virtcore_error() -> None:
    assert issubclass(AddressError, VirtcoreError)
    assert issubclass(OutOfFramesError, VirtcoreError)
    assert issubclass(FrameError, VirtcoreError)


def test_load_words() -> None:
    mem = PhysicalMemory(64, 32)
    mem.load_words(8, [1, -1, 3])
    assert mem.words[:6] == [0, 0, 1, 0xFFFF_FFFF, 3, 0]
    with pytest.raises(AddressError):
        mem.load_words(56, [1, 2, 3])
    with pytest.raises(AddressError):
        mem.load_words(2, [1])
    assert mem.words[14:] == [0, 0]


# -- bytes ---------------------------------------------------------------------------


def test_bytes_are_little_endian() -> None:
    mem = PhysicalMemory(64, 32)
    mem.write_word(4, 0x0403_0201)
    assert mem.read_bytes(4, 4) == b"\x01\x02\x03\x04"
    assert mem.read_bytes(5, 2) == b"\x02\x03"
    mem.write_bytes(8, b"\xaa\xbb")
    assert mem.read_word(8) == 0x0000_BBAA


@given(
    writes=st.lists(
        st.tuples(st.integers(0, 255), st.binary(min_size=0, max_size=40)), max_size=12
    )
)
def test_write_bytes_matches_a_bytearray_model(writes: list[tuple[int, bytes]]) -> None:
    mem = PhysicalMemory(256, 32)
    model = bytearray(256)
    for paddr, data in writes:
        data = data[: 256 - paddr]
        mem.write_bytes(paddr, data)
        model[paddr : paddr + len(data)] = data
    assert mem.read_bytes(0, 256) == bytes(model)
    for i, word in enumerate(mem.words):
        assert word == int.from_bytes(model[4 * i : 4 * i + 4], "little")


@given(paddr=st.integers(0, 255), n=st.integers(0, 64), data=st.data())
def test_read_bytes_round_trip(paddr: int, n: int, data: st.DataObject) -> None:
    mem = PhysicalMemory(256, 32)
    n = min(n, 256 - paddr)
    payload = data.draw(st.binary(min_size=n, max_size=n))
    mem.write_bytes(paddr, payload)
    assert mem.read_bytes(paddr, n) == payload


@pytest.mark.parametrize(("paddr", "n"), [(-1, 2), (250, 7), (256, 1), (0, -1)])
def test_byte_access_out_of_range(paddr: int, n: int) -> None:
    mem = PhysicalMemory(256, 32)
    with pytest.raises(AddressError):
        mem.read_bytes(paddr, n)
    if n >= 0:
        with pytest.raises(AddressError):
            mem.write_bytes(paddr, b"x" * n)
    assert mem.words == [0] * 64


# -- frames ---------------------------------------------------------------------------


def test_frame_of_and_frame_address() -> None:
    mem = PhysicalMemory(256, 32)
    assert [mem.frame_of(a) for a in (0, 31, 32, 255)] == [0, 0, 1, 7]
    assert [mem.frame_address(f) for f in (0, 1, 7)] == [0, 32, 224]
    with pytest.raises(AddressError):
        mem.frame_of(256)
    with pytest.raises(AddressError):
        mem.frame_address(8)
    with pytest.raises(AddressError):
        mem.frame_address(-1)


def test_dump_format() -> None:
    mem = PhysicalMemory(64 * 1024)
    mem.load_words(0x100, [0xDEADBEEF, 1, 2, 3, 0xFFFF_FFFF, 5])
    assert mem.dump(0x100, 6).splitlines() == [
        "0x0100: deadbeef 00000001 00000002 00000003",
        "0x0110: ffffffff 00000005",
    ]
    assert mem.dump(0x100, 0) == ""
    with pytest.raises(AddressError):
        mem.dump(0xFFF8, 4)


# -- code-write notification -------------------------------------------------------------


def test_on_code_write_fires_for_code_frames_only() -> None:
    mem = PhysicalMemory(256, 32)
    seen: list[int] = []
    mem.on_code_write = seen.append
    mem.code_frames.update({1, 3})
    mem.write_word(0, 1)  # frame 0: data
    assert seen == []
    mem.write_word(32, 1)  # frame 1: code
    assert seen == [1]
    mem.write_bytes(60, b"12345678")  # frames 1 and 2 (data)
    assert seen == [1, 1]
    mem.write_bytes(30, bytes(80))  # frames 0..3: code frames 1 and 3, once each
    assert seen == [1, 1, 1, 3]
    mem.load_words(96, [7, 8])  # frame 3
    assert seen == [1, 1, 1, 3, 3]
    mem.load_words(128, [7, 8])  # frame 4: data
    assert seen == [1, 1, 1, 3, 3]


def test_code_write_without_callback_is_harmless() -> None:
    mem = PhysicalMemory(256, 32)
    mem.code_frames.add(0)
    mem.write_word(0, 5)
    assert mem.read_word(0) == 5


def test_allocating_a_code_frame_notifies() -> None:
    mem = PhysicalMemory(256, 32)
    seen: list[int] = []
    mem.on_code_write = seen.append
    mem.code_frames.add(2)
    alloc = FrameAllocator(mem, reserved=[0])
    assert [alloc.alloc(), alloc.alloc()] == [1, 2]
    assert seen == [2]


# -- frame allocator ------------------------------------------------------------------------


def test_allocator_lowest_first_and_reserved() -> None:
    mem = PhysicalMemory(256, 32)
    alloc = FrameAllocator(mem, reserved=[0, 3])
    assert alloc.free_count == 6
    got = [alloc.alloc() for _ in range(6)]
    assert got == [1, 2, 4, 5, 6, 7]
    assert alloc.used == frozenset(got)
    with pytest.raises(OutOfFramesError):
        alloc.alloc()
    alloc.free(5)
    alloc.free(2)
    assert alloc.free_count == 2
    assert alloc.alloc() == 2
    assert alloc.alloc() == 5


def test_allocator_zero_fills() -> None:
    mem = PhysicalMemory(256, 32)
    alloc = FrameAllocator(mem)
    frame = alloc.alloc()
    mem.write_bytes(mem.frame_address(frame), b"\xff" * 32)
    mem.write_word(32, 0x1234)  # the next frame, dirty before allocation
    alloc.free(frame)
    assert alloc.alloc() == frame
    assert mem.read_bytes(mem.frame_address(frame), 32) == bytes(32)
    assert alloc.alloc() == 1
    assert mem.read_word(32) == 0


def test_allocator_errors() -> None:
    mem = PhysicalMemory(256, 32)
    alloc = FrameAllocator(mem, reserved=[0])
    frame = alloc.alloc()
    alloc.free(frame)
    with pytest.raises(FrameError, match="double free"):
        alloc.free(frame)
    with pytest.raises(FrameError, match="reserved"):
        alloc.free(0)
    with pytest.raises(FrameError):
        alloc.free(6)  # never allocated
    with pytest.raises(FrameError):
        FrameAllocator(mem, reserved=[8])
    assert alloc.free_count == 7
