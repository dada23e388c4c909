# ruff: noqa
# Walks "until it finds a present entry": on a not-present entry it never stops.
# Expected: mmu_translate 0 "timeout"; mmu_validate keeps its 25 points.

# %% mmu_translate
def translate(view, va, write=False):
    refs = []
    gfn = view.root_gfn
    level = view.levels
    while True:
        mfn = view.p2m.get(gfn, gfn)
        index = (va >> (view.page_bits + (level - 1) * view.index_bits)) & 7
        entry = view.read((mfn << view.page_bits) + 4 * index)
        if entry & 1:
            refs.append((level, index, (mfn << view.page_bits) + 4 * index, entry))
            if level == 1:
                return (view.p2m[entry >> 12] << view.page_bits) | (va & 31), refs, None
            level -= 1
            gfn = entry >> 12
