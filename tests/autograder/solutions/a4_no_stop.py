# ruff: noqa
# Does not stop the batch at the first failure: applies the later requests too and counts
# them.  Expected: mmu_validate partial (batches that fail last or not at all pass), the
# message says the batch stops at the first failure; mmu_translate untouched.

# %% mmu_validate
def get_page_from_l1e(xen, l1e, l1e_owner, pg_owner):
    """Check a new present L1 entry and take its references: 0 or -errno."""
    ### BEGIN SOLUTION
    m = xen.machine
    if l1e < 0 or l1e >= 1 << 32 or l1e & L1_DISALLOW_MASK:
        return -EINVAL  # "Bad L1 flags"
    mfn = l1e >> 12
    if mfn >= m.nframes:
        return -EPERM  # not RAM
    writable = bool(l1e & PTE_W)
    owner = m.owner[mfn]
    if owner != pg_owner:
        granted = (owner >= 0 and owner != DOMID_XEN and pg_owner == l1e_owner
                   and xen.foreign is not None and xen.foreign.may_map(l1e_owner, mfn, writable))
        if not granted:
            return -EBUSY
    m.count[mfn] += 1  # get_page()
    if writable and m.get_page_type(mfn, PGT_writable_page):
        m.put_page(mfn)
        return -EBUSY  # a page table (or another typed frame) cannot be mapped writable
    return 0
    ### END SOLUTION


def mmu_update(xen, caller, reqs):
    """Apply (ptr, val) requests of domain caller in order; stop at the first failure."""
    ### BEGIN SOLUTION
    m = xen.machine
    shift = xen.config.page_bits
    done = 0
    first = 0
    for ptr, val in reqs:
        rc = _one(xen, m, shift, caller, ptr, val)
        if rc:
            first = first or rc  # remembers the error but goes on with the batch
            continue
        done += 1
    return first, done


def _one(xen, m, shift, caller, ptr, val):
    cmd = ptr & 3
    ptr -= cmd
    mfn = ptr >> shift
    if not m.valid_mfn(mfn) or m.owner[mfn] != caller:
        return -EINVAL  # the table is not the caller's
    index = (ptr & ((1 << shift) - 1)) >> 2
    words = m.physical.words
    at = (ptr >> 2)
    if m.type_count[mfn] and m.validated[mfn]:
        level = m.type[mfn]
        if level == PGT_l1_page_table or level == PGT_l2_page_table:
            old = words[at]
            if val & PTE_P:
                if level == PGT_l1_page_table:
                    rc = get_page_from_l1e(xen, val, caller, caller)
                else:
                    if val >= 1 << 32 or val & BASE_DISALLOW_MASK or (val >> 12) >= m.nframes:
                        return -EINVAL
                    rc = m.get_page_and_type(val >> 12, caller, level - 1)
                if rc:
                    return rc
            elif val >= 1 << 32:
                return -EINVAL
            if cmd == MMU_PT_UPDATE_PRESERVE_AD:
                val |= old & (PTE_A | PTE_D)
            words[at] = val
            if level == PGT_l1_page_table:
                xen.put_page_from_l1e(old, caller)
            else:
                xen.put_page_from_lNe(old)
            return 0
        if m.type[mfn] == PGT_writable_page:
            if val >= 1 << 32:
                return -EINVAL
            words[at] = val
            return 0
        return -EINVAL
    if m.get_page_type(mfn, PGT_writable_page):
        return -EINVAL
    rc = -EINVAL if val >= 1 << 32 else 0
    if not rc:
        words[at] = val
    m.put_page_type(mfn)
    return rc
    ### END SOLUTION
