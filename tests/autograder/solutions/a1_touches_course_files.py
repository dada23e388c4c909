# ruff: noqa
# Tries to read the course secret and to write the gradebook, with paths the scan cannot
# read (the test fills in SECRET_PARTS / GRADEBOOK_PARTS).  Run as root, the worker is
# `nobody`: both fail with PermissionError.  Expected: handlers_io scores 0, nothing leaks.

# %% handlers_io
SECRET_PATH = "".join(SECRET_PARTS)
GRADEBOOK_PATH = "".join(GRADEBOOK_PARTS)


def handle_in(vcpu, insn):
    with open(SECRET_PATH) as f:
        raise ValueError(f.read())


def handle_out(vcpu, insn):
    with open(GRADEBOOK_PATH, "a") as f:
        f.write("alice 100\n")
    vcpu.pc += 4
