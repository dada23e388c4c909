"""Tests for virtcore.hw.paging: configs, PTEs, the TLB, the MMU walk and nested paging."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtcore.errors import ConfigurationError
from virtcore.hw.events import Access, PageFault
from virtcore.hw.memory import FrameAllocator, PhysicalMemory
from virtcore.hw.paging import (
    MMU,
    PTE_A,
    PTE_D,
    PTE_P,
    PTE_U,
    PTE_W,
    TLB,
    PagingConfig,
    PagingError,
    describe_pte,
    make_pte,
    pte_flags,
    pte_pfn,
)

READ, WRITE, EXECUTE = Access.READ, Access.WRITE, Access.EXECUTE
CONFIGS: dict[str, Callable[[], PagingConfig]] = {
    "x86_32": PagingConfig.x86_32,
    "tiny": PagingConfig.tiny,
    "tiny4": PagingConfig.tiny4,
    "small": PagingConfig.small,
}


def build(
    config: PagingConfig, nframes: int = 128, tlb_size: int = 16
) -> tuple[PhysicalMemory, FrameAllocator, MMU]:
    """Memory of ``nframes`` pages, an allocator (frame 0 reserved), an MMU with a root."""
    mem = PhysicalMemory(size=nframes * config.page_size, frame_size=config.page_size)
    alloc = FrameAllocator(mem, reserved=[0])
    mmu = MMU(mem, config, tlb_size=tlb_size)
    mmu.set_root(mmu.alloc_table(alloc))
    mmu.enabled = True
    return mem, alloc, mmu


def leaf_entry_paddr(mmu: MMU, vaddr: int) -> int:
    return mmu.walk(vaddr).steps[-1].entry_paddr


def snapshot(mmu: MMU) -> tuple[object, ...]:
    tlb = mmu.tlb
    return (
        list(mmu.memory.words),
        dict(tlb.entries),
        tlb.lookups,
        tlb.misses,
        tlb.flushes,
        mmu.memory_references,
        mmu.nested_references,
        mmu.walks,
    )


class ListFrames:
    """A frame source handing out given frame numbers in order (guest-physical frames)."""

    def __init__(self, frames: list[int]) -> None:
        self.frames = list(frames)

    def alloc(self) -> int:
        return self.frames.pop(0)


# -- PagingConfig ------------------------------------------------------------------


def test_presets() -> None:
    x86 = PagingConfig.x86_32()
    assert (x86.page_size, x86.entries_per_table, x86.va_bits, x86.va_limit) == (
        4096, 1024, 32, 1 << 32)
    assert "teaching size" not in x86.label
    tiny = PagingConfig.tiny()
    assert (tiny.page_size, tiny.levels, tiny.va_bits) == (32, 2, 11)
    tiny4 = PagingConfig.tiny4()
    assert (tiny4.page_size, tiny4.levels, tiny4.va_bits) == (32, 4, 17)
    small = PagingConfig.small()
    assert (small.page_size, small.levels, small.va_bits) == (256, 2, 20)
    for cfg in (tiny, tiny4, small):
        assert "teaching size" in cfg.label
        assert "unrealistically small" in cfg.label
        assert cfg.entries_per_table * 4 <= cfg.page_size


def test_split_and_layout() -> None:
    tiny = PagingConfig.tiny()
    assert tiny.split(0b101_011_10010) == ([0b101, 0b011], 0b10010)
    assert tiny.layout() == "bits 10..8 L2 index | 7..5 L1 index | 4..0 offset"
    assert PagingConfig.tiny4().split(0x1FFFF) == ([7, 7, 7, 7], 31)
    assert PagingConfig.x86_32().split(0xFFC0_1ABC) == ([0x3FF, 0x1], 0xABC)
    with pytest.raises(PagingError):
        tiny.split(0x800)
    with pytest.raises(PagingError):
        tiny.split(-1)


@pytest.mark.parametrize(
    ("page_bits", "levels", "index_bits"),
    [(2, 1, 1), (5, 2, 4), (12, 0, 10), (12, 2, 0), (12, 3, 10), (8, 2, 7)],
)
def test_bad_configs(page_bits: int, levels: int, index_bits: int) -> None:
    with pytest.raises(ConfigurationError):
        PagingConfig(page_bits, levels, index_bits)


# -- PTEs ---------------------------------------------------------------------------


@given(pfn=st.integers(0, (1 << 20) - 1), flags=st.integers(0, 0xFFF))
def test_pte_round_trip(pfn: int, flags: int) -> None:
    pte = make_pte(pfn, flags)
    assert 0 <= pte < 1 << 32
    assert (pte_pfn(pte), pte_flags(pte)) == (pfn, flags)


def test_pte_is_x86_layout() -> None:
    assert (PTE_P, PTE_W, PTE_U, PTE_A, PTE_D) == (0x1, 0x2, 0x4, 0x20, 0x40)
    assert make_pte(0x5, PTE_P | PTE_W | PTE_U | PTE_A) == 0x5027
    assert describe_pte(0x5027) == "pfn 0x5 P W U A"
    assert describe_pte(0x7065) == "pfn 0x7 P U A D"
    with pytest.raises(PagingError):
        make_pte(1 << 20, PTE_P)
    with pytest.raises(PagingError):
        make_pte(1, 0x1000)


# -- TLB -------------------------------------------------------------------------------


def test_tlb_fifo_and_repr() -> None:
    tlb = TLB(capacity=3)
    assert repr(tlb) == "TLB(0/3 entries, 0 lookups, 0 misses, hit rate n/a)"
    assert tlb.hit_rate is None
    for vpn in (1, 2, 3):
        tlb.insert(vpn, (vpn << 12) | PTE_P)
    tlb.insert(1, 0x1000 | PTE_P | PTE_W)  # update in place: stays oldest
    tlb.insert(4, 0x4000 | PTE_P)
    assert list(tlb.entries) == [2, 3, 4]
    assert tlb.evictions == 1
    tlb.invalidate(3)
    tlb.invalidate(99)
    assert list(tlb.entries) == [2, 4]
    tlb.lookups, tlb.misses = 120, 4
    assert tlb.hits == 116
    assert repr(tlb) == "TLB(2/3 entries, 120 lookups, 4 misses, hit rate 96.7%)"
    tlb.flush()
    assert (len(tlb), tlb.flushes) == (0, 1)


def test_tlb_capacity_zero_never_caches() -> None:
    _, alloc, mmu = build(PagingConfig.tiny(), tlb_size=0)
    mmu.map(0x40, 0x80, allocator=alloc)
    for _ in range(3):
        assert mmu.translate(0x44, READ, False) == 0x84
    assert (mmu.tlb.lookups, mmu.tlb.misses, mmu.memory_references) == (3, 3, 6)
    with pytest.raises(ConfigurationError):
        TLB(-1)


@settings(max_examples=60)
@given(
    capacity=st.integers(1, 6),
    pages=st.lists(st.integers(0, 9), min_size=1, max_size=60),
)
def test_tlb_matches_a_fifo_model(capacity: int, pages: list[int]) -> None:
    cfg = PagingConfig.tiny()
    _, alloc, mmu = build(cfg, tlb_size=capacity)
    for page in range(10):
        mmu.map(page * 32, (40 + page) * 32, allocator=alloc)
    model: list[int] = []
    expected_misses = 0
    for page in pages:
        assert mmu.translate(page * 32 + 3, READ, True) == (40 + page) * 32 + 3
        if page not in model:
            expected_misses += 1
            if len(model) == capacity:
                model.pop(0)
            model.append(page)
        assert list(mmu.tlb.entries) == model
    tlb = mmu.tlb
    assert tlb.misses == expected_misses
    assert tlb.lookups == len(pages)
    assert tlb.hits + tlb.misses == tlb.lookups
    assert mmu.walks == expected_misses
    assert mmu.memory_references == cfg.levels * expected_misses


# -- MMU: construction ---------------------------------------------------------------------


def test_mmu_config_must_match_memory() -> None:
    assert MMU(PhysicalMemory()).config == PagingConfig.x86_32()
    with pytest.raises(ConfigurationError):
        MMU(PhysicalMemory(1024, 32))  # no default config for 32-byte frames
    with pytest.raises(ConfigurationError):
        MMU(PhysicalMemory(), PagingConfig.tiny())
    host = MMU(PhysicalMemory(1024, 32), PagingConfig.tiny())
    with pytest.raises(ConfigurationError):
        MMU(PhysicalMemory(1024, 32), PagingConfig.tiny(), nested=host)  # other memory


def test_paging_off_is_identity() -> None:
    mmu = MMU(PhysicalMemory())
    assert mmu.translate(0xDEAD_BEEF, WRITE, True) == 0xDEAD_BEEF
    assert (mmu.tlb.lookups, mmu.walks, mmu.translating) == (0, 0, False)


# -- MMU: translation property ---------------------------------------------------------------


@st.composite
def mapping_cases(draw: st.DrawFn) -> tuple[str, dict[int, int], list[tuple[int, int]]]:
    name = draw(st.sampled_from(["x86_32", "tiny", "tiny4", "small"]))
    cfg = CONFIGS[name]()
    nvpn = cfg.va_limit >> cfg.page_bits
    vpns = draw(st.lists(st.integers(0, nvpn - 1), min_size=1, max_size=8, unique=True))
    frames = {vpn: draw(st.integers(0, 63)) for vpn in vpns}
    vpn = st.integers(0, nvpn - 1) | st.sampled_from(vpns)
    offset = st.integers(0, cfg.page_size - 1)
    probes = draw(st.lists(st.tuples(vpn, offset), min_size=1, max_size=12))
    return name, frames, probes


@settings(max_examples=80, deadline=None)
@given(case=mapping_cases())
def test_translate_after_map_returns_the_mapped_frame(
    case: tuple[str, dict[int, int], list[tuple[int, int]]],
) -> None:
    name, frames, probes = case
    cfg = CONFIGS[name]()
    _mem, alloc, mmu = build(cfg, nframes=64 if name == "x86_32" else 128)
    for vpn, frame in frames.items():
        mmu.map(vpn << cfg.page_bits, frame << cfg.page_bits, allocator=alloc)
    assert sorted(v for v, _, _ in mmu.mappings()) == sorted(v << cfg.page_bits for v in frames)
    for vpn, offset in probes:
        vaddr = (vpn << cfg.page_bits) | offset
        walk = mmu.walk(vaddr, READ, True)
        result = mmu.translate(vaddr, READ, True)
        if vpn in frames:
            assert result == (frames[vpn] << cfg.page_bits) | offset
            assert walk.paddr == result
            assert walk.references == cfg.levels
        else:
            assert isinstance(result, PageFault)
            assert not result.present
            assert result.vaddr == vaddr
            assert walk.fault == result
            assert 1 <= result.level <= cfg.levels
    assert mmu.tlb.hits + mmu.tlb.misses == mmu.tlb.lookups == len(probes)


# -- faults ------------------------------------------------------------------------------------


def test_not_present_fault_levels_tiny4() -> None:
    cfg = PagingConfig.tiny4()
    _, alloc, mmu = build(cfg)
    mmu.map(0x00000, 0x200, allocator=alloc)
    # indices of a vaddr: 3 bits each for L4..L1 above a 5-bit offset
    cases = {
        0x00020: 1,  # same L1 table, other entry
        0x00100: 2,  # same L2 table, other L1 table
        0x00800: 3,  # same L3 table, other L2 table
        0x04000: 4,  # other L3 table: the root entry is empty
    }
    for vaddr, level in cases.items():
        fault = mmu.translate(vaddr, READ, False)
        assert isinstance(fault, PageFault)
        assert (fault.present, fault.level, fault.nested) == (False, level, False)
        assert mmu.walk(vaddr).references == cfg.levels - level + 1


def test_address_beyond_va_limit_faults_at_top_level() -> None:
    _, _, mmu = build(PagingConfig.tiny())
    fault = mmu.translate(0x800, READ, False)
    assert isinstance(fault, PageFault)
    assert (fault.present, fault.level) == (False, 2)
    assert mmu.memory_references == 0


def test_user_access_to_supervisor_page_is_a_protection_fault() -> None:
    _, alloc, mmu = build(PagingConfig.tiny())
    mmu.map(0x40, 0x80, user=False, allocator=alloc)
    for access in (READ, WRITE, EXECUTE):
        fault = mmu.translate(0x44, access, True)
        assert isinstance(fault, PageFault)
        assert (fault.present, fault.user, fault.level, fault.access) == (True, True, 1, access)
    assert mmu.translate(0x44, READ, False) == 0x84
    assert mmu.translate(0x44, WRITE, False) == 0x84
    # the kernel's TLB entry must not let user mode in
    fault = mmu.translate(0x44, READ, True)
    assert isinstance(fault, PageFault)
    assert fault.present


def test_u_bit_must_be_set_at_every_level() -> None:
    mem, alloc, mmu = build(PagingConfig.tiny())
    mmu.map(0x40, 0x80, allocator=alloc)
    top = mmu.walk(0x40).steps[0].entry_paddr
    mem.write_word(top, mem.read_word(top) & ~PTE_U)
    fault = mmu.translate(0x40, READ, True)
    assert isinstance(fault, PageFault)
    assert (fault.present, fault.level) == (True, 2)
    assert mmu.translate(0x40, READ, False) == 0x80


def test_write_to_read_only_page_faults_from_user_and_kernel() -> None:
    mem, alloc, mmu = build(PagingConfig.tiny())
    mmu.map(0x40, 0x80, writable=False, allocator=alloc)
    leaf = leaf_entry_paddr(mmu, 0x40)
    for user in (True, False):
        fault = mmu.translate(0x48, WRITE, user)
        assert isinstance(fault, PageFault)
        assert (fault.present, fault.access, fault.user, fault.level) == (True, WRITE, user, 1)
    assert not mem.read_word(leaf) & (PTE_A | PTE_D)  # faulting walks write nothing
    assert mmu.translate(0x48, READ, True) == 0x88
    assert mem.read_word(leaf) & PTE_A


def test_w_bit_must_be_set_at_every_level() -> None:
    mem, alloc, mmu = build(PagingConfig.tiny())
    mmu.map(0x40, 0x80, allocator=alloc)
    top = mmu.walk(0x40).steps[0].entry_paddr
    mem.write_word(top, mem.read_word(top) & ~PTE_W)
    fault = mmu.translate(0x40, WRITE, False)
    assert isinstance(fault, PageFault)
    assert (fault.present, fault.level) == (True, 2)


def test_wild_table_pointer_is_not_present() -> None:
    mem, alloc, mmu = build(PagingConfig.tiny(), nframes=32)
    mmu.map(0x40, 0x80, allocator=alloc)
    top = mmu.walk(0x40).steps[0].entry_paddr
    mem.write_word(top, make_pte(0x400, PTE_P | PTE_W | PTE_U))  # frame beyond memory
    fault = mmu.translate(0x40, READ, False)
    assert isinstance(fault, PageFault)
    assert (fault.present, fault.level) == (False, 1)


# -- A/D bits and the TLB's W bit ------------------------------------------------------------


def test_accessed_and_dirty_bits_written_back() -> None:
    mem, alloc, mmu = build(PagingConfig.tiny4())
    mmu.map(0x1000, 0x400, allocator=alloc)
    entries = [step.entry_paddr for step in mmu.walk(0x1000).steps]
    assert all(not mem.read_word(e) & (PTE_A | PTE_D) for e in entries)
    assert mmu.translate(0x1004, READ, True) == 0x404
    assert all(mem.read_word(e) & PTE_A for e in entries)
    assert not mem.read_word(entries[-1]) & PTE_D
    assert mmu.translate(0x1004, WRITE, True) == 0x404
    assert mem.read_word(entries[-1]) & PTE_D
    assert all(not mem.read_word(e) & PTE_D for e in entries[:-1])  # D only in the leaf


def test_first_write_after_read_goes_through_refill_then_hits() -> None:
    mem, alloc, mmu = build(PagingConfig.tiny())
    mmu.map(0x40, 0x80, allocator=alloc)
    tlb = mmu.tlb
    vpn = 0x40 >> 5
    assert mmu.translate(0x40, READ, True) == 0x80
    assert tlb.entries[vpn] & (PTE_P | PTE_W | PTE_U) == PTE_P | PTE_U  # clean: no W yet
    assert (tlb.misses, mmu.memory_references) == (1, 2)
    assert mmu.translate(0x40, WRITE, True) == 0x80
    assert (tlb.misses, mmu.memory_references) == (2, 4)
    assert tlb.entries[vpn] & PTE_W
    assert mem.read_word(leaf_entry_paddr(mmu, 0x40)) & PTE_D
    assert mmu.translate(0x44, WRITE, True) == 0x84
    assert (tlb.lookups, tlb.misses, mmu.memory_references) == (3, 2, 4)


def test_read_of_dirty_writable_page_caches_w() -> None:
    mem, alloc, mmu = build(PagingConfig.tiny())
    mmu.map(0x40, 0x80, allocator=alloc)
    leaf = leaf_entry_paddr(mmu, 0x40)
    mem.write_word(leaf, mem.read_word(leaf) | PTE_D)
    mmu.translate(0x40, READ, False)
    assert mmu.translate(0x40, WRITE, False) == 0x80
    assert mmu.tlb.misses == 1


def test_hot_path_contract() -> None:
    """Check that the CPU's inline TLB hit + refill equals translate, with the same counts."""
    cfg = PagingConfig.tiny()
    _, alloc, mmu = build(cfg)
    _, alloc2, ref = build(cfg)
    for m, a in ((mmu, alloc), (ref, alloc2)):
        m.map(0x40, 0x80, allocator=a)
        m.map(0x60, 0xA0, writable=False, allocator=a)
        m.map(0x80, 0xC0, user=False, allocator=a)
    accesses = [(0x44, READ, True), (0x48, WRITE, True), (0x64, READ, True), (0x64, WRITE, False),
                (0x84, READ, True), (0x84, WRITE, False), (0x4C, WRITE, True), (0x100, READ, False)]
    page_bits, offset_mask = cfg.page_bits, cfg.offset_mask
    for vaddr, access, user in accesses:
        mmu.tlb.lookups += 1
        e = mmu.tlb.entries.get(vaddr >> page_bits)
        need = (PTE_W if access == WRITE else 0) | (PTE_U if user else 0)
        if e is None or (e & need) != need:
            got = mmu.refill(vaddr, access, user)
        else:
            got = (e & ~offset_mask) | (vaddr & offset_mask)
        assert got == ref.translate(vaddr, access, user)
    for counter in ("lookups", "misses", "flushes"):
        assert getattr(mmu.tlb, counter) == getattr(ref.tlb, counter)
    assert mmu.memory_references == ref.memory_references
    assert mmu.memory.words == ref.memory.words


# -- counts, flushes, pure walks ---------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_references_per_walk_equal_levels_on_miss_zero_on_hit(name: str) -> None:
    cfg = CONFIGS[name]()
    _, alloc, mmu = build(cfg, nframes=32)
    mmu.map(0, 5 << cfg.page_bits, allocator=alloc)
    assert mmu.translate(4, READ, True) == (5 << cfg.page_bits) + 4
    assert (mmu.memory_references, mmu.walks) == (cfg.levels, 1)
    assert mmu.translate(8, READ, True) == (5 << cfg.page_bits) + 8
    assert (mmu.memory_references, mmu.walks, mmu.tlb.lookups) == (cfg.levels, 1, 2)


def test_set_root_flushes_and_switches_address_space() -> None:
    _mem, alloc, mmu = build(PagingConfig.tiny())
    first_root = mmu.root
    mmu.map(0x40, 0x80, allocator=alloc)
    assert mmu.translate(0x40, READ, False) == 0x80
    second_root = mmu.alloc_table(alloc)
    mmu.set_root(second_root)
    assert (len(mmu.tlb), mmu.tlb.flushes) == (0, 2)  # build() loaded CR3 once
    mmu.map(0x40, 0xE0, allocator=alloc)
    assert mmu.translate(0x40, READ, False) == 0xE0
    mmu.set_root(first_root)
    assert mmu.translate(0x40, READ, False) == 0x80
    with pytest.raises(PagingError):
        mmu.set_root(0x41)


def test_invlpg_drops_one_entry() -> None:
    _, alloc, mmu = build(PagingConfig.tiny())
    mmu.map(0x40, 0x80, allocator=alloc)
    mmu.map(0x60, 0xA0, allocator=alloc)
    mmu.translate(0x40, READ, False)
    mmu.translate(0x60, READ, False)
    mmu.invlpg(0x44)
    assert list(mmu.tlb.entries) == [0x60 >> 5]


def test_walk_has_no_side_effects() -> None:
    _, alloc, mmu = build(PagingConfig.tiny4())
    mmu.map(0x1000, 0x400, allocator=alloc)
    mmu.map(0x2000, 0x420, writable=False, allocator=alloc)
    mmu.translate(0x2000, READ, False)
    before = snapshot(mmu)
    walks = [mmu.walk(0x1004, WRITE, True), mmu.walk(0x2000, WRITE, False),
             mmu.walk(0x3000), mmu.walk(0x1_FFFF + 1)]
    assert snapshot(mmu) == before
    assert walks[0].paddr == 0x404
    assert walks[0].ok
    assert walks[1].fault is not None
    assert walks[1].fault.present
    assert walks[2].fault is not None
    assert not walks[2].fault.present
    assert walks[3].references == 0
    text = str(walks[0])
    assert "--> L4 index 0x0 [decimal 0]" in text
    assert "--> physical address 0x404 [decimal 1028]" in text
    assert "4 page-table references" in text
    assert "page fault (protection)" in str(walks[1])


def test_map_errors_and_unmap() -> None:
    _mem, alloc, mmu = build(PagingConfig.tiny())
    with pytest.raises(PagingError, match="page-aligned"):
        mmu.map(0x41, 0x80, allocator=alloc)
    with pytest.raises(PagingError, match="page-aligned"):
        mmu.map(0x40, 0x81, allocator=alloc)
    with pytest.raises(PagingError):
        mmu.map(0x800, 0x80, allocator=alloc)
    mmu.map(0x40, 0x80, allocator=alloc)
    mmu.map(0x40, 0xA0, writable=False, allocator=alloc)  # remap replaces
    assert mmu.mappings() == [(0x40, 0xA0, PTE_P | PTE_U)]
    assert mmu.translate(0x40, READ, True) == 0xA0
    mmu.unmap(0x40)
    assert mmu.mappings() == []
    assert len(mmu.tlb) == 0
    fault = mmu.translate(0x40, READ, True)
    assert isinstance(fault, PageFault)
    assert (fault.present, fault.level) == (False, 1)
    with pytest.raises(PagingError, match="not mapped"):
        mmu.unmap(0x40)
    with pytest.raises(PagingError, match="not mapped"):
        mmu.unmap(0x700)  # no L1 table there


# -- nested paging (EPT/NPT) --------------------------------------------------------------------


def build_nested(
    guest_cfg: PagingConfig, host_cfg: PagingConfig, guest_frames: int = 64
) -> tuple[PhysicalMemory, MMU, MMU, dict[int, int], ListFrames]:
    """Host memory, the nested (EPT) MMU, a guest MMU, the gfn->host-frame map, guest frames.

    Guest frame g lives in host frame 300 + (g * 7) % guest_frames (scrambled on purpose).
    """
    assert guest_cfg.page_size == host_cfg.page_size
    mem = PhysicalMemory(size=512 * host_cfg.page_size, frame_size=host_cfg.page_size)
    host_alloc = FrameAllocator(mem, reserved=[0])
    ept = MMU(mem, host_cfg)
    ept.set_root(ept.alloc_table(host_alloc))
    ept.enabled = True  # EPT on
    gfn_to_hfn = {g: 300 + (g * 7) % guest_frames for g in range(guest_frames)}
    page_bits = host_cfg.page_bits
    for g, h in gfn_to_hfn.items():
        ept.map(g << page_bits, h << page_bits, allocator=host_alloc)
    guest = MMU(mem, guest_cfg, nested=ept)
    frames = ListFrames(list(range(1, guest_frames)))
    guest.set_root(guest.alloc_table(frames))
    guest.enabled = True
    return mem, ept, guest, gfn_to_hfn, frames


@pytest.mark.parametrize(
    ("guest_name", "host_name", "expected"),
    [("tiny", "tiny", 8), ("tiny4", "tiny4", 24), ("tiny", "tiny4", 14), ("tiny4", "tiny", 14)],
)
def test_two_dimensional_walk_costs(guest_name: str, host_name: str, expected: int) -> None:
    guest_cfg, host_cfg = CONFIGS[guest_name](), CONFIGS[host_name]()
    n, m = guest_cfg.levels, host_cfg.levels
    assert expected == (n + 1) * (m + 1) - 1  # [BHAR08; STOJ22]
    _, ept, guest, gfn_to_hfn, frames = build_nested(guest_cfg, host_cfg)
    data_gfn = 50
    guest.map(0x100, data_gfn << 5, allocator=frames)
    assert guest.mappings() == [(0x100, data_gfn << 5, PTE_P | PTE_W | PTE_U)]
    paddr = guest.translate(0x104, READ, True)
    assert paddr == (gfn_to_hfn[data_gfn] << 5) + 4
    assert guest.memory_references == expected
    assert guest.nested_references == m * (n + 1)
    walk = guest.walk(0x104)
    assert (walk.references, walk.nested_references, walk.paddr) == (expected, m * (n + 1), paddr)
    assert "nested walk of guest-physical" in str(walk)
    assert guest.translate(0x108, READ, True) == paddr + 4  # TLB hit: no walk at all
    assert guest.memory_references == expected
    assert (ept.walks, ept.memory_references, ept.tlb.lookups) == (0, 0, 0)


def test_nested_fault_on_data_page() -> None:
    _, ept, guest, _, frames = build_nested(PagingConfig.tiny(), PagingConfig.tiny())
    guest.map(0x100, 50 << 5, allocator=frames)
    ept.unmap(50 << 5)
    fault = guest.translate(0x104, WRITE, True)
    assert isinstance(fault, PageFault)
    assert fault.nested
    assert not fault.present
    assert (fault.vaddr, fault.access, fault.level) == ((50 << 5) + 4, WRITE, 1)


def test_nested_fault_on_guest_table() -> None:
    _, ept, guest, _, frames = build_nested(PagingConfig.tiny(), PagingConfig.tiny())
    guest.map(0x100, 50 << 5, allocator=frames)
    guest_steps = [step for step in guest.walk(0x100).steps if not step.nested]
    l1_table_gpa = guest_steps[-1].table_paddr  # a guest-physical address
    ept.unmap(l1_table_gpa)
    fault = guest.translate(0x104, READ, False)
    assert isinstance(fault, PageFault)
    assert fault.nested
    assert not fault.present
    # the fault names the guest-physical address of the L1 entry
    assert fault.vaddr == l1_table_gpa + 4 * ((0x100 >> 5) & 7)
    assert fault.access == READ


def test_nested_write_protection_and_dirty_bits() -> None:
    mem, ept, guest, gfn_to_hfn, frames = build_nested(PagingConfig.tiny(), PagingConfig.tiny())
    guest.map(0x100, 50 << 5, allocator=frames)
    ept.map(50 << 5, gfn_to_hfn[50] << 5, writable=False, allocator=ListFrames([]))
    assert guest.translate(0x104, READ, True) == (gfn_to_hfn[50] << 5) + 4
    fault = guest.translate(0x104, WRITE, True)
    assert isinstance(fault, PageFault)
    assert fault.nested
    assert fault.present
    # a writable nested mapping: the nested leaf's D bit is set by the data write
    guest.map(0x120, 51 << 5, allocator=frames)
    nested_leaf = ept.walk(51 << 5).steps[-1].entry_paddr
    assert guest.translate(0x120, READ, True) == gfn_to_hfn[51] << 5
    assert mem.read_word(nested_leaf) & PTE_A
    assert not mem.read_word(nested_leaf) & PTE_D
    assert guest.translate(0x120, WRITE, True) == gfn_to_hfn[51] << 5
    assert mem.read_word(nested_leaf) & PTE_D
    assert guest.translate(0x124, WRITE, True) == (gfn_to_hfn[51] << 5) + 4
    assert guest.tlb.misses == 4  # read 0x104, write 0x104, read 0x120, first write 0x120


def test_guest_paging_off_still_goes_through_nested() -> None:
    _, _, guest, gfn_to_hfn, _ = build_nested(PagingConfig.tiny(), PagingConfig.tiny4())
    guest.enabled = False
    assert guest.translating
    assert guest.translate((9 << 5) + 3, READ, False) == (gfn_to_hfn[9] << 5) + 3
    assert guest.memory_references == 4
    fault = guest.translate(200 << 5, READ, False)  # beyond guest RAM
    assert isinstance(fault, PageFault)
    assert fault.nested


def test_nested_disabled_means_guest_physical_is_host_physical() -> None:
    _, ept, guest, _, frames = build_nested(PagingConfig.tiny(), PagingConfig.tiny())
    guest.map(0x100, 50 << 5, allocator=frames)
    ept.enabled = False  # EPT off: the guest's tables are read at their own addresses
    guest.set_root(guest.root)
    walk = guest.walk(0x104)
    assert walk.nested_references == 0
    assert walk.steps[0].entry_paddr == guest.root + 4 * (0x104 >> 8)
    assert all(s.entry_paddr == s.table_paddr + 4 * s.index for s in walk.steps)
    guest.enabled = False
    assert not guest.translating
    assert guest.translate(0x104, READ, False) == 0x104


def test_refill_can_fill_another_tlb() -> None:
    """Check that refill(tlb=...) counts the miss in, and fills, the TLB it is given."""
    _, alloc, mmu = build(PagingConfig.tiny())
    mmu.map(0x40, 0x80, allocator=alloc)
    itlb = TLB(4)
    assert mmu.refill(0x44, EXECUTE, True, tlb=itlb) == 0x84
    assert (itlb.misses, itlb.lookups, list(itlb.entries)) == (1, 0, [0x40 >> 5])
    assert (mmu.tlb.misses, len(mmu.tlb), mmu.walks) == (0, 0, 1)
