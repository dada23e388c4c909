# ruff: noqa
# Walks the tables as if gfn == mfn and never does the P2M step.
# Expected: mmu_translate 0 (the P2M is a permutation); the other part untouched.

# %% mmu_translate
def translate(view, va, write=False):
    """Guest virtual -> pseudo-physical -> machine: (maddr or None, refs, fault)."""
    ### BEGIN SOLUTION
    refs = []
    gfn = view.root_gfn
    writable = True
    for level in range(view.levels, 0, -1):
        mfn = gfn  # forgets the P2M: uses the gfn as if it were a machine frame
        shift = view.page_bits + (level - 1) * view.index_bits
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
    mfn = gfn
    return (mfn << view.page_bits) | (va & ((1 << view.page_bits) - 1)), refs, None
    ### END SOLUTION
