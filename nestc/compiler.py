"""`nestc.compile(spec)`: the spec's generated module, loaded in this process.

The objects returned are exactly those `nestc compile SPEC -o out.py` writes: the source is
generated once and executed as a module.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .codegen import generate
from .diagnostics import NestError
from .levels import LevelGraph, build
from .loader import load, load_text
from .program import Program
from .resolve import resolve


@dataclass
class Compiled:
    program: Program
    levels: LevelGraph
    source: str
    module: types.ModuleType
    options: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, str] = field(default_factory=dict)

    @property
    def Model(self):  # noqa: N802 - the generated class
        return self.module.Model

    def model(self, vocab: int | None = None) -> torch.nn.Module:
        return self.module.Model(vocab) if vocab is not None else self.module.Model()

    def optimizer(self, model: torch.nn.Module, **settings) -> torch.optim.Optimizer:
        from .runtime.train import make_optimizer

        return make_optimizer(self, model, **settings)


_counter = [0]


def compile(spec: str | Path, overrides: dict[str, str] | None = None, *, text: str | None = None,
            options: dict[str, Any] | None = None) -> Compiled:  # noqa: A001 - the public name
    """Compile a spec (a path, a built-in name, or `text`) to a loaded module."""
    loaded = load_text(text, str(spec)) if text is not None else load(spec)
    program = resolve_for_compile(loaded, overrides)
    levels = build(program)
    source = generate(program, levels, options)
    compiled = Compiled(program, levels, source, load_source(source, program.name), options or {})
    compiled.overrides = dict(overrides or {})
    return compiled


def is_optimizer_spec(loaded) -> bool:
    root = loaded.root
    return root.model is None and any(b.box_kind == "weights" for b in root.boxes)


def resolve_for_compile(loaded, overrides=None) -> Program:
    """Resolve a spec for code generation. An optimizer spec compiled on its own keeps its params
    symbolic (the generated optimizer reads them from its param groups) and becomes the
    program's one optimizer, over the parameters its weights box asks for."""
    from .program import OptimizerInfo
    from .resolve import Resolver

    if not is_optimizer_spec(loaded):
        return resolve(loaded, overrides)
    program = Resolver(loaded, overrides, symbolic_params=True).run()
    weights = next(b for b in program.boxes.values() if b.kind == "weights")
    program.optimizers = [OptimizerInfo(name=program.name, group=weights.params_group,
                                        params=program.params, boxes=dict(program.boxes),
                                        weights=weights.name, pos=weights.pos, program=program)]
    return program


def load_source(source: str, name: str) -> types.ModuleType:
    _counter[0] += 1
    modname = f"nestc_generated_{name}_{_counter[0]}"
    module = types.ModuleType(modname)
    module.__file__ = f"<nestc:{name}>"
    sys.modules[modname] = module  # torch.compile and pickling find the classes by module name
    try:
        exec(compile_source(source, modname), module.__dict__)  # our own generated code
    except SyntaxError as err:  # a bug in the generator, not in the spec
        raise RuntimeError(f"nestc generated invalid Python for {name}: {err}") from err
    return module


def compile_source(source: str, filename: str):
    import builtins

    return builtins.compile(source, filename, "exec")
