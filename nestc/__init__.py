"""nestc: a declarative language and compiler for nested optimization systems."""

__version__ = "0.1.0"


def compile(spec, overrides=None, **kw):  # noqa: A001 - nestc.compile(spec)
    """Compile a spec (path or built-in name) to loaded PyTorch objects; see nestc.compiler."""
    from .compiler import compile as _compile

    return _compile(spec, overrides, **kw)

