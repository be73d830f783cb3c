"""What a forward pass needs to know beyond its inputs.

* ``lss``: the local surprise signals. A box with ``values lss`` learns from the gradient of the
  model's loss with respect to its output (NL §1.7). In a training step that gradient comes from
  a first pass ("probe"), in which such boxes read their initial state and their outputs get a
  zero tensor added whose gradient is the signal; the second pass feeds the signals back.
* ``probes``: zero tensors added to those boxes' outputs *after* they learn (empty unless the
  training step's first pass is "shared", `nestc.runtime.train.FIRST_PASSES`): the first pass then
  runs through the real pass's code with zero signals, which leave the memories at their initial
  state, and the probes' gradients are the signals.
* ``flush``: commit partial chunks at the end of this call (a sequence shorter than a chunk
  still updates its memory).
* ``recorder``: an optional callback ``(box, layer, position)`` called at every commit of an
  in-context memory (the cadence audit; None in compiled training).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import Tensor


@dataclass
class Ctx:
    probing: bool = False
    lss: dict[str, Tensor] = field(default_factory=dict)
    flush: bool = False
    recorder: Callable[[str, int, int], None] | None = None
    layer: int = 0
    probes: dict[str, Tensor] = field(default_factory=dict)

    def at(self, layer: int) -> "Ctx":
        return Ctx(self.probing, self.lss, self.flush, self.recorder, layer, self.probes)

    def key(self, box: str) -> str:
        return f"{self.layer}.{box}"

    def signal(self, box: str) -> Tensor:
        """The local surprise signal of a box's output (probe zeros in the first pass)."""
        key = self.key(box)
        if key not in self.lss:
            raise KeyError(f"no local surprise signal for {key}: run the model through "
                           "nestc.runtime.train.loss_with_lss (two passes) or pass ctx.lss")
        return self.lss[key]

    def probe(self, box: str) -> Tensor:
        """The probe added to a box's output after it learned (only when `probes` is not empty)."""
        key = self.key(box)
        if key not in self.probes:
            raise KeyError(f"no probe for {key}: ctx.probes must name every lss box or none")
        return self.probes[key]
