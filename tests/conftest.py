# pytest puts this folder on the import path (it holds a conftest.py and is no package), so the
# test folders below can share tests/small_models.py.


def pytest_configure(config):
    # The tests compile through the same inductor setup as nestc's own compile paths (wider index
    # caches, batched kernel builds, ISA probes ahead; runtime/inductor_setup.py): compile time
    # only, the generated code is the same. The tests of each adjustment turn it on and off
    # themselves.
    from nestc.runtime.inductor_setup import prepare_inductor

    prepare_inductor()
