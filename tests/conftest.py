# pytest puts this folder on the import path (it holds a conftest.py and is no package), so the
# test folders below can share tests/small_models.py.
