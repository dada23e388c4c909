"""Fixtures for the KVM tests: which backends exist here.

- ``x86``: the model's x86 backend needs ``unicorn``; without it those tests skip and say so.
- ``real``: the real ``/dev/kvm``; without a usable one those tests skip with the reason —
  unless ``VIRTCORE_REQUIRE_KVM=1``, which turns the skip into a failure (CI sets it where
  ``/dev/kvm`` exists, so the model-vs-real comparison cannot silently not run).
"""

from __future__ import annotations

import os

import pytest

from virtcore.kvm import kvm_available, unicorn_available

REQUIRE_KVM = os.environ.get("VIRTCORE_REQUIRE_KVM") == "1"


@pytest.fixture(scope="session")
def x86() -> str:
    """Skip unless unicorn is installed (the model's x86 backend)."""
    ok, why = unicorn_available()
    if not ok:
        pytest.skip(why)
    return "x86"


@pytest.fixture(scope="session")
def real() -> str:
    """Skip (or fail with VIRTCORE_REQUIRE_KVM=1) unless the real /dev/kvm is usable."""
    ok, why = kvm_available()
    if not ok:
        if REQUIRE_KVM:
            pytest.fail(f"VIRTCORE_REQUIRE_KVM=1 but the real KVM is not usable: {why}")
        pytest.skip(f"real KVM not usable here: {why}")
    return "real"


def pytest_report_header(config: pytest.Config) -> list[str]:
    ok_kvm, why_kvm = kvm_available()
    ok_uc, why_uc = unicorn_available()
    return [f"virtcore.kvm: real KVM {'yes' if ok_kvm else 'no'} ({why_kvm}); "
            f"x86 backend {'yes' if ok_uc else 'no'} ({why_uc}); "
            f"VIRTCORE_REQUIRE_KVM={'1' if REQUIRE_KVM else 'unset'}"]
