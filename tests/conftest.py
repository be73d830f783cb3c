# pytest puts this folder on the import path (it holds a conftest.py and is no package), so the
# test folders below can share tests/small_models.py.

import os

import pytest


def pytest_configure(config):
    # The tests compile through the same inductor setup as nestc's own compile paths (wider index
    # caches, batched kernel builds, ISA probes ahead, AOTAutograd's cache taking custom autograd
    # Functions; runtime/inductor_setup.py): compile time only, the generated code is the same,
    # but for the fix that keeps a compiled region's backward from overwriting its inputs.
    # The tests of each adjustment turn it on and off themselves.
    from nestc.runtime.inductor_setup import prepare_inductor

    prepare_inductor()

# pytest-xdist runs the suite in two worker processes (the README's test command, `-n 2`).
IN_A_WORKER = bool(os.environ.get("PYTEST_XDIST_WORKER"))


def pytest_sessionstart(session):
    if IN_A_WORKER:
        # Two processes with two torch threads each on a 2-core machine spin OpenMP threads for
        # each other (benchmarks/results/busy_pair/: eager steps 6-8x slower); one thread each.
        # The few tests that need a second thread (inductor's parallel loops) set it themselves.
        import torch

        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture
def torch_threads():
    """`torch_threads(n)` runs the rest of the test on n torch threads; the session's count comes
    back afterwards (one in a pytest-xdist worker)."""
    import torch

    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    if not IN_A_WORKER:
        return
    for item in items:
        if item.get_closest_marker("alone"):
            item.add_marker(pytest.mark.skip(
                reason="measures the whole machine, so it runs with no other test beside it: "
                       "`pytest -m alone` (the README's test command runs it so after the rest)"))
