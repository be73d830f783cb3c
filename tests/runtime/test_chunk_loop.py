"""R.chunk_loop: the plain piece-by-piece loop is the reference; under torch.compile in loop mode
"scan" a stream of whole chunks runs as one scan, which must give the same outputs, final state
and gradients; in the default mode "unroll" the compiled loop is the plain loop traced."""

import pytest
import torch

from nestc.runtime import ops as R
from nestc.runtime.kernels.conv import short_conv

from region_backwards import backward_variants


def _body(weight, decay):
    """A toy loop body with the shape of a generated one: a conv stream and a matrix memory
    that is read at its chunk-start state and then written with the piece's keys."""

    def body(state, piece, flush):
        state = dict(state)
        k, state["conv"] = short_conv(piece["x"], weight, None, state["conv"])
        mem = state["mem"]
        y = k @ mem["W"]  # read before the write
        W = decay * mem["W"] + k.transpose(1, 2) @ torch.tanh(piece["x"])
        state["mem"] = dict(mem, W=W, M=W, offset=0, pos=mem["pos"] + piece["x"].shape[1])
        return state, {"y": y, "x": piece["x"] + y}

    return body


def _initial(batch, d):
    W = torch.eye(d).expand(batch, d, d) * 0.1
    return {"conv": torch.zeros(batch, 3, d), "mem": {"W": W, "M": W, "offset": 0, "pos": 0},
            "other": {"pos": 7}}


@pytest.fixture
def scan_mode():
    R.set_loop_mode("scan")
    yield
    R.set_loop_mode("unroll")


def _run(x, weight, decay, period, scannable):
    state, out = R.chunk_loop(_body(weight, decay), _initial(x.shape[0], x.shape[2]), {"x": x},
                              period=period, anchor="mem", carried=["mem", "conv"], scannable=scannable)
    return out["y"], out["x"], state


@pytest.mark.slow
def test_compiled_scan_equals_the_plain_loop_forward_and_backward(scan_mode):
    torch.manual_seed(0)
    d, period = 8, 4
    x = torch.randn(2, 16, d, requires_grad=True)
    weight = torch.randn(d, 4, requires_grad=True)
    decay = torch.tensor(0.9, requires_grad=True)

    ref_y, ref_x, ref_state = _run(x, weight, decay, period, scannable=False)
    ref_grads = torch.autograd.grad((ref_y.square().sum() + ref_x.sum() + ref_state["mem"]["W"].sum()),
                                    [x, weight, decay])

    torch._dynamo.reset()
    fn = torch.compile(lambda a, w, g: _run(a, w, g, period, scannable=True), fullgraph=True)
    y, xo, state = fn(x, weight, decay)
    grads = torch.autograd.grad(y.square().sum() + xo.sum() + state["mem"]["W"].sum(), [x, weight, decay])

    torch.testing.assert_close(y, ref_y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xo, ref_x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state["mem"]["W"], ref_state["mem"]["W"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state["conv"], ref_state["conv"])
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # the memory moved on by 16 tokens and sits on a chunk boundary; untouched keys pass through
    assert state["mem"]["pos"] == ref_state["mem"]["pos"] == 16 and state["mem"]["offset"] == 0
    assert state["other"] == {"pos": 7}


def _loss(x, weight, decay, scannable):
    y, xo, state = _run(x, weight, decay, 4, scannable)
    return y.square().sum() + xo.sum() + state["mem"]["W"].sum()


@pytest.mark.slow
def test_a_compiled_scan_with_its_loss_in_the_graph_gives_eager_gradients(scan_mode):
    """The loss sums the final state and an output inside the compiled function, so their
    gradients reach the scan as broadcasts (stride 0), which torch 2.13's scan alone gets wrong
    (tests/runtime/test_scan_grads.py)."""
    torch.manual_seed(0)
    x = torch.randn(2, 16, 8, requires_grad=True)
    weight = torch.randn(8, 4, requires_grad=True)
    decay = torch.tensor(0.9, requires_grad=True)
    ref = torch.autograd.grad(_loss(x, weight, decay, scannable=False), [x, weight, decay])
    torch._dynamo.reset()
    fn = torch.compile(lambda a, w, g: _loss(a, w, g, scannable=True), fullgraph=True)
    for a, b in zip(torch.autograd.grad(fn(x, weight, decay), [x, weight, decay]), ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["scan", "unroll"])
def test_the_compiled_loop_is_a_scan_or_unrolled(mode):
    """In scan mode the graph holds one scan, not one copy of the body per chunk; unrolled, it
    holds one copy per chunk."""
    R.set_loop_mode(mode)
    torch._dynamo.reset()
    d = 8
    x = torch.randn(2, 32, d)
    weight = torch.randn(d, 4)
    graphs = []

    def backend(gm, inputs):
        graphs.append(gm)
        return gm.forward

    try:
        torch.compile(lambda a: _run(a, weight, 0.9, 4, scannable=True), backend=backend, fullgraph=True)(x)
    finally:
        R.set_loop_mode("unroll")
    (gm,) = graphs
    if mode == "scan":
        assert gm.code.count("scan(") == 1 and "torch.tanh(" not in gm.code
        bodies = [m.code for name, m in gm.named_modules() if name and hasattr(m, "code")]
        assert sum(code.count("torch.tanh(") for code in bodies) == 1  # traced once for 8 chunks
    else:
        assert "scan(" not in gm.code and gm.code.count("torch.tanh(") == 8  # one body per chunk


def test_eager_and_partial_streams_take_the_plain_loop():
    """Eager runs, streams that do not start on a chunk boundary and flushed calls all cut the
    stream at the anchor memory's chunk boundaries, the first piece finishing its chunk."""
    torch.manual_seed(1)
    d = 4
    x = torch.randn(1, 10, d)
    seen = []

    def body(state, piece, flush):
        seen.append((piece["x"].shape[1], flush))
        mem = dict(state["mem"], offset=(state["mem"]["offset"] + piece["x"].shape[1]) % 4)
        return dict(state, mem=mem), {"x": piece["x"]}

    state = {"mem": {"offset": 1}}
    state, out = R.chunk_loop(body, state, {"x": x}, period=4, anchor="mem", carried=["mem"],
                              scannable=True, flush=True)
    assert seen == [(3, False), (4, False), (3, True)]
    torch.testing.assert_close(out["x"], x)


class _Block(torch.nn.Module):
    """The toy body as a method, as the code generator emits loops that may trace as one body."""

    def __init__(self, weight, decay):
        super().__init__()
        self.weight, self.decay = weight, decay

    def chunk_loop(self, state, piece, flush):
        return _body(self.weight, self.decay)(state, piece, flush)


def _run_region(x, block, period):
    state, out = R.chunk_loop(block.chunk_loop, _initial(x.shape[0], x.shape[2]), {"x": x}, period=period,
                              anchor="mem", carried=["mem", "conv"], scannable=True, outputs=("y", "x"))
    return out["y"], out["x"], state


@pytest.fixture
def region_mode():
    R.set_loop_mode("region")
    yield
    R.set_loop_mode("unroll")


@pytest.mark.parametrize("mode,backend", [pytest.param("region", "inductor", marks=pytest.mark.slow),
                                          ("call", "aot_eager"), ("call", "inductor")])
def test_compiled_regions_or_calls_equal_the_plain_loop_forward_and_backward(mode, backend, request):
    """Regions keep the step one graph (fullgraph); calls break it at the loop."""
    request.addfinalizer(lambda: R.set_loop_mode("unroll"))
    torch.manual_seed(0)
    d, period = 8, 4
    x = torch.randn(2, 16, d, requires_grad=True)
    weight = torch.randn(d, 4, requires_grad=True)
    decay = torch.tensor(0.9, requires_grad=True)

    ref_y, ref_x, ref_state = _run(x, weight, decay, period, scannable=False)
    ref_grads = torch.autograd.grad((ref_y.square().sum() + ref_x.sum() + ref_state["mem"]["W"].sum()),
                                    [x, weight, decay])

    torch._dynamo.reset()
    R.set_loop_mode(mode, {"backend": backend})
    block = _Block(weight, decay)
    fn = torch.compile(lambda a: _run_region(a, block, period), fullgraph=mode == "region", backend=backend)
    y, xo, state = fn(x)
    grads = torch.autograd.grad(y.square().sum() + xo.sum() + state["mem"]["W"].sum(), [x, weight, decay])

    torch.testing.assert_close(y, ref_y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xo, ref_x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state["mem"]["W"], ref_state["mem"]["W"], rtol=1e-5, atol=1e-5)
    assert state["mem"]["M"] is state["mem"]["W"]  # one tensor, as the plain loop leaves it
    torch.testing.assert_close(state["conv"], ref_state["conv"])
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert state["mem"]["pos"] == ref_state["mem"]["pos"] == 16 and state["mem"]["offset"] == 0
    assert state["other"] == {"pos": 7}


def test_regions_trace_the_body_once(region_mode):
    """Eight chunks, and the body is traced once: the first chunk, whose state is the batch-shared
    initial one (other strides) and, here, not requiring grad, gets it as the later chunks get
    theirs (contiguous), so it calls the same region as the seven others."""
    torch._dynamo.reset()
    d = 8
    x = torch.randn(2, 32, d)
    block = _Block(torch.randn(d, 4), 0.9)
    graphs = []

    def backend(gm, inputs):
        graphs.append(gm)
        return gm.forward

    torch.compile(lambda a: _run_region(a, block, 4), backend=backend, fullgraph=True)(x)
    (gm,) = graphs
    assert gm.code.count("invoke_subgraph(") == 8
    called = [m.code for name, m in gm.named_children() if f"self.{name}" in gm.code]
    assert sum(code.count("torch.tanh(") for code in [gm.code, *called]) == 1


@pytest.mark.parametrize("initial_grad", [False, True])
def test_every_chunk_shares_one_region_forward_and_backward(region_mode, monkeypatch, initial_grad):
    """A region's backward is traced once per distinct layout of the gradients coming into it, and
    every chunk's must be the same: the pieces the loop concatenates must not reach it as views at
    a different offset for each chunk, the last chunk's carried outputs (no later chunk reads
    them, and here nothing else does) must get gradients as the others' do, and those must have
    one layout (the conv state's gradient from the next chunk is a view of a longer one). The
    first chunk's initial state requires grad or not (a meta-learned one, or the frozen pass's)."""
    variants = backward_variants(monkeypatch)
    torch._dynamo.reset()
    d = 8
    x = torch.randn(2, 32, d, requires_grad=True)
    block = _Block(torch.randn(d, 4, requires_grad=True), torch.tensor(0.9, requires_grad=True))
    init = _initial(2, d)
    if initial_grad:
        init["mem"]["W"] = init["mem"]["M"] = init["mem"]["W"].detach().requires_grad_()
    graphs = []

    def backend(gm, inputs):
        graphs.append(gm)
        return torch._dynamo.backends.debugging.aot_eager(gm, inputs)

    def run(a):
        state, out = R.chunk_loop(block.chunk_loop, init, {"x": a}, period=4, anchor="mem",
                                  carried=["mem", "conv"], scannable=True, outputs=("y", "x"))
        return out["y"], out["x"]

    # aot_eager: AOTAutograd traces the backward every time (inductor's caches could skip it)
    y, xo = torch.compile(run, backend=backend, fullgraph=True)(x)
    (y.square().sum() + xo.sum()).backward()
    (gm,) = graphs
    assert gm.code.count("invoke_subgraph(") == 8
    assert variants == [("subgraph_0", 0)], variants


# -- loop mode "call": the loop between two graphs, each chunk a call of one compiled body --


def _call_mode(backend):
    R.set_loop_mode("call", {"backend": backend})


@pytest.fixture
def call_mode(request):
    request.addfinalizer(lambda: R.set_loop_mode("unroll"))


def test_calls_compile_the_body_once_for_every_chunk_and_block(call_mode):
    """Eight chunks, two blocks of one class, two calls: the body is traced once. Its first
    chunk gets the broadcast initial state and a conv state that needs no gradient, and would
    compile a body of its own unless the loop gives it the layout and requires_grad of the
    others. The graphs around the loop are the caller's, not the body's."""
    torch._dynamo.reset()
    d = 8
    bodies = []

    def backend(gm, inputs):
        if "tanh" in gm.code:
            bodies.append(gm)
        return gm.forward

    _call_mode(backend)
    blocks = [_Block(torch.nn.Parameter(torch.randn(d, 4)), 0.9) for _ in range(2)]
    fn = torch.compile(lambda a, blk: _run_region(a, blk, 4), backend="eager")
    for _ in range(2):
        for block in blocks:
            y, _, _ = fn(torch.randn(2, 32, d), block)
            y.sum().backward()
    assert len(bodies) == 1
    assert bodies[0].code.count("torch.tanh(") == 1  # one chunk's body


def test_eager_runs_ignore_call_mode(call_mode):
    """Outside torch.compile the loop is the plain loop whatever the mode (nothing compiles)."""
    seen = []

    def backend(gm, inputs):
        seen.append(gm)
        return gm.forward

    _call_mode(backend)
    torch.manual_seed(0)
    x = torch.randn(2, 16, 8)
    block = _Block(torch.randn(8, 4), 0.9)
    y, _, _ = _run_region(x, block, 4)
    ref_y, _, _ = _run(x, block.weight, block.decay, 4, scannable=False)
    torch.testing.assert_close(y, ref_y)
    assert seen == []


def test_compiled_bodies_go_with_their_block_class(call_mode):
    """The cache of compiled bodies holds no block class alive: a process that compiles many
    specs (tests, notebooks) does not keep every generated class and its graphs."""
    import gc
    import weakref

    def run_once():
        cls = type("Generated", (_Block,), {})  # as nestc.compile makes a class per spec
        block = cls(torch.nn.Parameter(torch.randn(8, 4)), 0.9)
        fn = torch.compile(lambda a, blk: _run_region(a, blk, 4), backend="eager")
        y, _, _ = fn(torch.randn(2, 32, 8), block)
        y.sum().backward()
        assert cls in R._COMPILED_BODIES
        return weakref.ref(cls)

    torch._dynamo.reset()
    _call_mode("eager")
    cls = run_once()
    gc.collect()
    assert cls() is None
    assert len(R._COMPILED_BODIES) == 0
