"""Code generation: a resolved program and its level graph -> one readable Python module.

The module imports only torch and nestc.runtime. See nestc/codegen/module.py for its layout.
"""

from .module import generate

__all__ = ["generate"]
