"""One matrix product for the linear maps of one input (`L.linears`), in the runtime and in the
code the compiler generates for a box's generator streams."""

import pytest
import torch

import nestc
import nestc.runtime.attention as attention
import nestc.runtime.layers as layers
from nestc.runtime.train import make_loss_fns, signals


def _pairs(source: str) -> list[list[tuple[str, str]]]:
    """Each `L.linears` line of generated code as its (output variable, module) pairs."""
    lines = source.splitlines()
    out = []
    for i, line in enumerate(lines):
        if line.rstrip().endswith("= L.linears("):
            outs = [v.strip() for v in line.split("=")[0].split(",")]
            mods = [m.strip() for m in lines[i + 1].strip().rstrip(")").split(",")[1:]]
            out.append(list(zip(outs, mods, strict=True)))
    return out


def _maps(bias: bool) -> list[layers.Linear]:
    torch.manual_seed(0)
    maps = [layers.Linear(16, n, bias=bias).double() for n in (16, 4, 8)]
    if bias:
        for m in maps:
            torch.nn.init.normal_(m.bias)  # nonzero, so a dropped or misplaced bias shows
    return maps


@pytest.mark.parametrize("bias", [False, True])
def test_linears_equal_each_map_on_its_own_forward_and_backward(bias):
    maps = _maps(bias)
    x = torch.randn(2, 5, 16, dtype=torch.float64, requires_grad=True)
    w = [torch.randn(2, 5, m.out_features, dtype=torch.float64) for m in maps]

    def grads(outs):
        for m in maps:
            m.zero_grad()
        x.grad = None
        sum((o * wi).sum() for o, wi in zip(outs, w)).backward()
        return [x.grad.clone()] + [p.grad.clone() for m in maps for p in m.parameters()]

    stacked = layers.linears(x, *maps)
    ref = [m(x) for m in maps]
    assert [o.shape for o in stacked] == [r.shape for r in ref]
    for o, r in zip(stacked, ref):
        torch.testing.assert_close(o, r, rtol=0, atol=1e-12)
    for a, b in zip(grads(stacked), grads([m(x) for m in maps])):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_linears_refuses_a_mix_of_maps_with_and_without_bias():
    with pytest.raises(ValueError, match="bias"):
        layers.linears(torch.randn(3, 16), layers.Linear(16, 4), layers.Linear(16, 4, bias=True))


def test_the_titans_box_computes_its_six_maps_of_its_input_in_one_product():
    source = nestc.compile("titans", {"n_layers": "1"}).source
    lines = source.splitlines()
    assert sum("L.linears(" in line for line in lines) == 1
    assert _pairs(source) == [[(f"lmm_{f}_proj", f"self.lmm_{f}_linear")
                               for f in ("keys", "query", "lr", "values", "gate", "beta")]]
    # each map keeps its own parameters (checkpoints and initialisation are unchanged)
    model = nestc.compile("titans", {"n_layers": "1"}).model(vocab=64)
    params = dict(model.named_parameters())
    assert sorted(n.split(".")[-2] for n in params if ".lmm_" in n and n.endswith("_linear.weight")) == [
        f"lmm_{field}_linear" for field in ("beta", "gate", "keys", "lr", "query", "values")]


STACKING_SPEC = """\
spec stacking "linear maps of one input, some with a bias"
param d = 32
block b {
    box mem : memory {
        heads  2
        state  matrix(16)
        keys   linear(in, d)
        values linear(in, d) + linear(x, d)
        query  linear(in, d, bias=true)
        lr     0.5 * sigmoid(linear(in, 2, bias=true))
        objective l2(M(k), v)
        every 8 tokens
    }
    x = x + linear(mem(x), d)
}
model { dim d  repeat 1 { b } }
"""


def test_groups_by_input_and_bias_and_the_model_is_unchanged(tmp_path):
    spec = tmp_path / "stacking.nest"
    spec.write_text(STACKING_SPEC)
    source = nestc.compile(spec).source
    # keys and values (no bias) as one product, query and lr (bias) as another; the values'
    # map of x (another input) on its own
    assert _pairs(source) == [
        [("mem_keys_proj", "self.mem_keys_linear"), ("mem_values_proj", "self.mem_values_linear")],
        [("mem_query_proj", "self.mem_query_linear"), ("mem_lr_proj", "self.mem_lr_linear")]], source
    assert "self.mem_values_linear_2(x_in)" in source, source

    def loss_and_grads(linears):
        layers.linears = attention.linears = linears
        try:
            torch.manual_seed(0)
            model = nestc.compile(spec).model(vocab=64).double()
            fns = make_loss_fns(model)
            x, y = torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16))
            loss = fns.main(x, y, signals(model, fns, x, y))
            loss.backward()
            return loss.detach(), [p.grad for p in model.parameters()]
        finally:
            layers.linears = attention.linears = real

    real = layers.linears
    loss_a, grads_a = loss_and_grads(real)
    loss_b, grads_b = loss_and_grads(lambda x, *maps: tuple(m(x) for m in maps))
    torch.testing.assert_close(loss_a, loss_b, rtol=0, atol=1e-12)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
