# ruff: noqa
# The released notebook, unchanged: every solution raises NotImplementedError.
# Expected: both parts 0 with status "not implemented".

# %% mmu_translate
def translate(view, va, write=False):
    """Guest virtual -> pseudo-physical -> machine: (maddr or None, refs, fault)."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %% mmu_validate
def get_page_from_l1e(xen, l1e, l1e_owner, pg_owner):
    """Check a new present L1 entry and take its references: 0 or -errno."""
    # YOUR CODE HERE
    raise NotImplementedError()


def mmu_update(xen, caller, reqs):
    """Apply (ptr, val) requests of domain caller in order; stop at the first failure."""
    # YOUR CODE HERE
    raise NotImplementedError()
