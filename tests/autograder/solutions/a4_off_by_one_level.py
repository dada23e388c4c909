# ruff: noqa
# Takes the index of level L from the bits of level L+1 (one level off).
# Expected: mmu_translate 0 (every walk reads the wrong entries); the other part untouched.

# %% mmu_translate
def translate(view, va, write=False):
    """Guest virtual -> pseudo-physical -> machine: (maddr or None, refs, fault)."""
    ### BEGIN SOLUTION
    refs = []
    gfn = view.root_gfn
    writable = True
    for level in range(view.levels, 0, -1):
        mfn = view.p2m.get(gfn)  # the table lives in pseudo-physical memory: P2M first
        if mfn is None:
            return None, refs, "p2m"
        shift = view.page_bits + level * view.index_bits  # one level off
        index = (va >> shift) & ((1 << view.index_bits) - 1)
        entry_maddr = (mfn << view.page_bits) + 4 * index
        entry = view.read(entry_maddr)
        refs.append((level, index, entry_maddr, entry))
        if not entry & PTE_P:
            return None, refs, "not present"
        writable = writable and bool(entry & PTE_W)
        gfn = entry >> 12
    if write and not writable:
        return None, refs, "read-only"
    mfn = view.p2m.get(gfn)  # the data page: the second step, pseudo-physical -> machine
    if mfn is None:
        return None, refs, "p2m"
    return (mfn << view.page_bits) | (va & ((1 << view.page_bits) - 1)), refs, None
    ### END SOLUTION
