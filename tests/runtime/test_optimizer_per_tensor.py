"""A compiled training step's optimizer on the CPU: element-wise optimizer specs compiled once
per schedule variant for one flattened parameter (NestOptimizer.compile_steps(per_tensor=True))
and run parameter by parameter, against the same optimizer's foreach step."""

import copy

import pytest
import torch
from torch._dynamo.utils import counters

import nestc
from nestc.runtime.train import LevelOptimizer, make_optimizer


def _params(seed: int) -> list[torch.nn.Parameter]:
    """Sizes and ranks a model has, a transposed one (as nestc's short-conv weights are stored),
    and a one-element one."""
    torch.manual_seed(seed)
    shapes = [(16, 8), (8,), (3, 4, 5), (1,)]
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    params.append(torch.nn.Parameter(torch.randn(4, 12).t()))  # [12, 4], strides (1, 12)
    return params


def _grads(params, gen, contiguous_grads: bool):
    for p in params:
        g = torch.randn(p.shape, generator=gen)
        # a gradient laid out like its parameter (what autograd gives), or contiguous
        p.grad = g if contiguous_grads else torch.empty_strided(p.shape, p.stride()).copy_(g)


@pytest.mark.parametrize("spec", ["adamw", "adam", "momentum"])
@pytest.mark.parametrize("contiguous_grads", [False, True], ids=["grads_like_params", "contiguous_grads"])
def test_per_tensor_steps_equal_the_foreach_steps(spec, contiguous_grads):
    (_, _, cls, defaults), = nestc.compile(spec).module.OPTIMIZERS
    eager_params, compiled_params = _params(0), _params(0)
    eager = cls(eager_params, **defaults)
    compiled = cls(compiled_params, **defaults).compile_steps(per_tensor=True)
    graphs = counters["stats"]["unique_graphs"]
    gen_a, gen_b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for _ in range(6):
        _grads(eager_params, gen_a, contiguous_grads)
        _grads(compiled_params, gen_b, contiguous_grads)
        eager.step()
        compiled.step()
    for a, b in zip(eager_params, compiled_params):
        assert b.stride() == a.stride()  # updated in place, layout kept
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    # one graph, compiled and used, for every size and rank (dynamic sizes; flat tensors that
    # are not views)
    assert counters["stats"]["unique_graphs"] - graphs == 1


def test_only_element_wise_optimizers_run_per_tensor():
    flags = {s: nestc.compile(s).module.OPTIMIZERS[0][2].ELEMENTWISE for s in ("sgd", "adamw", "muon", "m3")}
    assert flags == {"sgd": True, "adamw": True, "muon": False, "m3": False}
    (_, _, muon, defaults), = nestc.compile("muon").module.OPTIMIZERS
    with pytest.raises(ValueError, match="element by element"):
        muon([torch.nn.Parameter(torch.randn(4, 4))], **defaults).compile_steps(per_tensor=True)


def test_a_training_steps_optimizers_compile_where_it_pays():
    """LevelOptimizer.compile_steps: Muon on the matrices stays eager (whole matrices), the AdamW
    it gets for the rest compiles per tensor; the steps still follow the eager optimizer's."""
    compiled = nestc.compile("transformer", {"n_layers": "1", "d_model": "32", "heads": "2"})

    def build():
        torch.manual_seed(0)
        model = compiled.model(vocab=32)
        return model, make_optimizer(compiled, model, override="muon")

    (model_a, eager), (model_b, level) = build(), build()
    assert isinstance(level, LevelOptimizer)
    level.compile_steps()  # sets a compiled step on the instance, over the class's method
    kinds = {type(o).__name__: "_update_0" in vars(o) for o in level.optimizers}
    assert kinds == {"Muon": False, "Adamw": True}, kinds
    x = torch.randint(0, 32, (2, 16))
    for _ in range(3):
        for model, opt in ((model_a, eager), (model_b, level)):
            opt.zero_grad()
            logits, _ = model(x)
            logits.float().logsumexp(-1).mean().backward()
            opt.step()
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)


def test_a_loaded_state_is_laid_out_as_its_parameter():
    """A checkpoint's optimizer state comes back contiguous; a transposed parameter's state is
    laid out as the parameter again (as a fresh state is), so a resumed compiled step flattens
    it as the straight run did, and the steps still agree."""
    (_, _, cls, defaults), = nestc.compile("adamw").module.OPTIMIZERS
    straight_params, resumed_params = _params(0), _params(0)
    straight = cls(straight_params, **defaults).compile_steps(per_tensor=True)
    gen_a, gen_b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    _grads(straight_params, gen_a, False)
    straight.step()
    saved = copy.deepcopy(straight.state_dict())  # shares no tensor with `straight`, as a file would
    for st in saved["state"].values():  # contiguous, as a safetensors round trip leaves them
        for k, v in st.items():
            st[k] = v.contiguous()
    with torch.no_grad():
        for a, b in zip(resumed_params, straight_params):
            a.copy_(b)
    resumed = cls(resumed_params, **defaults).compile_steps(per_tensor=True)
    resumed.load_state_dict(saved)
    _grads(straight_params, gen_a, False)
    _grads(resumed_params, gen_b, False)  # the straight run's first draw, already used
    _grads(resumed_params, gen_b, False)  # and its second
    straight.step()
    resumed.step()
    transposed = resumed_params[-1]
    assert all(v.stride() == transposed.stride() for k, v in resumed.state[transposed].items() if k != "step")
    for a, b in zip(straight_params, resumed_params):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


@pytest.mark.parametrize("per_tensor", [False, True], ids=["lists", "per_tensor"])
def test_a_second_optimizer_with_another_eps_uses_its_own(per_tensor):
    """Hyperparameters are graph inputs, not constants: an optimizer compiled after another
    with a different eps (once baked into the graph through a foreach op's scalar) computes
    with its own."""
    (_, _, cls, defaults), = nestc.compile("adam").module.OPTIMIZERS

    def run(eps: float, compiled: bool) -> torch.Tensor:
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(16, 8))]
        opt = cls(params, **dict(defaults, eps=eps))
        if compiled:
            opt.compile_steps(per_tensor=per_tensor)
        gen = torch.Generator().manual_seed(2)
        for _ in range(2):
            params[0].grad = torch.randn(16, 8, generator=gen) * 1e-4  # small: eps matters
            opt.step()
        return params[0].detach()

    for eps in (1e-8, 1e-3):
        torch.testing.assert_close(run(eps, True), run(eps, False), rtol=0, atol=1e-6)


def test_levels_that_learn_every_c_steps_keep_eager_optimizers():
    """Only the optimizers that step every step compile: a CMS level's optimizer (period C)
    would otherwise compile at its level's first update, in the middle of training."""
    # the CMS of NL Fig. 5 in small: a fast in-context level, mid and slow levels across steps
    overrides = {"n_layers": "1", "d_model": "32", "heads": "2", "cms_expand": "1",
                 "c_fast": "4", "c_mid": "2", "c_slow": "4"}
    compiled = nestc.compile("cms", overrides)
    torch.manual_seed(0)
    model = compiled.model(vocab=32)
    level = make_optimizer(compiled, model)
    periods = [period for _, period in level.entries]
    assert 1 in periods and any(p > 1 for p in periods), periods
    level.compile_steps()  # sets a compiled step on the instance, over the class's method
    compiled_steps = [(period, "_update_0" in vars(o)) for o, period in level.entries]
    assert compiled_steps == [(p, p == 1) for p in periods], compiled_steps
