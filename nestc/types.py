"""Types of expressions, as shape inference sees them.

A value in a spec is one of:

* ``const``  -- a compile-time number, string or bool (params, literals, arithmetic on them);
* ``stream`` -- a per-token tensor ``[B, T, width]`` in a block (the residual ``x``, lets, box
  generators such as ``keys``);
* ``head``   -- a per-head vector ``[..., width]`` inside a box's objective, retention or update
  (a stream of width ``heads * d`` is seen per head as width ``d``);
* ``like``   -- a tensor shaped like each parameter an optimizer box serves (``state like(W)``);
* ``state``  -- the box's own state ``M`` (call it: ``M(k)``);
* ``box``    -- a reference to a box (call it to read it: ``lmm(q)``);
* ``word``   -- a bare word with a meaning in its position (``silu``, ``meta``, ``before``...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Ty:
    space: str  # const | stream | head | like | state | box | word | counter
    width: int | None = None  # stream / head width
    value: Any = None  # const value, word text, or box name

    def __str__(self) -> str:
        if self.space == "const":
            return f"the constant {self.value!r}"
        if self.space == "stream":
            return f"a stream of width {self.width}"
        if self.space == "head":
            return f"a per-head vector of width {self.width}"
        if self.space == "like":
            return "a tensor shaped like each parameter"
        if self.space == "state":
            return "the state M"
        if self.space == "box":
            return f"the box `{self.value}`"
        if self.space == "word":
            return f"the word `{self.value}`"
        if self.space == "counter":
            return "the step counter"
        return self.space

    @property
    def is_tensor(self) -> bool:
        return self.space in ("stream", "head", "like", "counter")


def const(v: Any) -> Ty:
    return Ty("const", value=v)


def stream(w: int) -> Ty:
    return Ty("stream", width=w)


def head(w: int) -> Ty:
    return Ty("head", width=w)


LIKE = Ty("like")
COUNTER = Ty("counter")
STATE = Ty("state")


def word(w: str) -> Ty:
    return Ty("word", value=w)


def boxref(name: str) -> Ty:
    return Ty("box", value=name)
