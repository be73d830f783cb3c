"""The same code on a CUDA GPU: every built-in spec's step gives the CPU's loss and gradients,
the compiled (Triton) step gives eager's meta-gradients, the compiled optimizers follow their
CPU runs, and a run trained on the GPU checkpoints, resumes, generates and evaluates -- its
checkpoint readable on the CPU too.

Skipped where torch sees no GPU (CI's machine); run with `pytest tests/gpu` on one."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch._dynamo

import nestc
from nestc.runtime.train import forward_loss

from small_models import MODEL_SPECS, SMALL, loss_and_grads, small

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ROOT = Path(__file__).resolve().parents[2]
GPU = torch.device("cuda")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64 on the CPU (0 when both are zero)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    den = b.norm()
    return float((a - b).norm() / den) if den > 0 else float(a.norm())


def batch(b=2, t=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t), generator=g), torch.randint(0, 256, (b, t), generator=g)


@pytest.mark.parametrize("name", MODEL_SPECS)
def test_eager_step_on_the_gpu_equals_the_cpu(name):
    """Loss and every gradient (inner updates included) agree with the CPU's in fp32."""
    torch.manual_seed(0)
    cpu_model = small(name).model()
    gpu_model = copy.deepcopy(cpu_model).to(GPU)
    x, y = batch()
    loss_c, grads_c = loss_and_grads(cpu_model, x, y)
    loss_g, grads_g = loss_and_grads(gpu_model, x.to(GPU), y.to(GPU))
    assert loss_g.device.type == GPU.type
    assert rel_err(loss_g, loss_c) < 1e-5
    checked = 0
    for (pname, _), a, b in zip(cpu_model.named_parameters(), grads_g, grads_c):
        if b is None:
            assert a is None or a.abs().max() == 0, pname
            continue
        assert a.device.type == GPU.type, pname
        assert rel_err(a, b) < 1e-3, (pname, rel_err(a, b))
        checked += 1
    assert checked > 0


@pytest.mark.parametrize("name", ["transformer", "deltanet", "titans", "cms", "hope"])
def test_compiled_step_on_the_gpu_equals_eager(name):
    """Through Triton: loss and meta-gradients (through the inner updates) of the compiled
    step equal the eager step's on the same GPU, with no graph break."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = small(name).model().to(GPU)
    x, y = (t.to(GPU) for t in batch())
    lss = {k: torch.randn(2, 32, w, device=GPU) * 1e-2 for k, w in model.lss_sites()}
    eager_loss = forward_loss(model, x, y, lss)
    eager = torch.autograd.grad(eager_loss, list(model.parameters()), allow_unused=True)
    fn = torch.compile(lambda a, b, s: forward_loss(model, a, b, s), fullgraph=True)
    comp_loss = fn(x, y, lss)
    compiled = torch.autograd.grad(comp_loss, list(model.parameters()), allow_unused=True)
    assert rel_err(comp_loss, eager_loss) < 1e-5
    for (pname, _), a, b in zip(model.named_parameters(), compiled, eager):
        if b is None:
            assert a is None or a.abs().max() == 0, pname
            continue
        assert rel_err(a, b) < 1e-3, (pname, rel_err(a, b))


# Muon and M3 orthogonalise in bfloat16 (as Muon does): the GPU's and the CPU's bf16 products
# round differently (8-bit mantissa, 2^-9 relative per rounding), and five Newton-Schulz
# iterations of three products compound it, so their updates agree to bf16 precision only.
# Measured on an H100 against this CPU: Muon under 3e-2, M3 3.2e-2 (its Adam-like denominator
# passes the orthogonalised momenta's rounding on unchanged). AdamW is fp32 throughout.
@pytest.mark.parametrize("opt,tol", [("adamw", 1e-4), ("muon", 5e-2), ("m3", 5e-2)])
def test_compiled_optimizer_on_the_gpu_follows_the_cpu(opt, tol):
    """Ten steps of a generated optimizer, compiled on the GPU, eager on the CPU, the same
    gradients: the parameters move the same way (compared on what the steps changed)."""
    torch._dynamo.reset()
    (_, _, cls, defaults), = nestc.compile(opt).module.OPTIMIZERS
    torch.manual_seed(0)
    cpu_params = [torch.nn.Parameter(torch.randn(16, 8)), torch.nn.Parameter(torch.randn(8, 12))]
    gpu_params = [torch.nn.Parameter(p.detach().clone().to(GPU)) for p in cpu_params]
    start = [p.detach().clone() for p in cpu_params]
    cpu_opt = cls(cpu_params, **defaults)
    gpu_opt = cls(gpu_params, **defaults).compile_steps()
    g = torch.Generator().manual_seed(1)
    for step in range(10):
        for pc, pg in zip(cpu_params, gpu_params):
            pc.grad = torch.randn(pc.shape, generator=g)
            pg.grad = pc.grad.to(GPU)
        cpu_opt.param_groups[0]["lr"] = gpu_opt.param_groups[0]["lr"] = 0.01 * (1 + step % 3)
        cpu_opt.step()
        gpu_opt.step()
    for p0, pc, pg in zip(start, cpu_params, gpu_params):
        assert pg.device.type == GPU.type
        moved = pc.detach() - p0
        assert moved.abs().max() > 0
        err = rel_err(pg.detach().cpu() - p0, moved)
        assert err < tol, f"{opt}: the GPU's steps differ from the CPU's by {err:.2e} (relative)"


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nestc.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=dict(os.environ, COLUMNS="200"))


def test_a_gpu_run_trains_resumes_generates_and_evaluates(tmp_path):
    """`nestc train --device cuda` (compiled), resumed on the GPU (eager); its checkpoint then
    generates and evaluates on the GPU and on the CPU."""
    from nestc.runtime.checkpoint import load_checkpoint

    sets = [a for k, v in {**SMALL, "chunk": "4"}.items() for a in ("--set", f"{k}={v}")]
    common = ["--batch", "2", "--seq-len", "32", "--eval-every", "3", "--checkpoint-every", "3",
              "--device", "cuda", *sets]
    run = tmp_path / "run"
    r = cli("train", "titans", "--steps", "3", "--compile", "--out", run, *common)
    assert r.returncode == 0, r.stdout + r.stderr
    ckpt = run / "last.safetensors"
    first, _ = load_checkpoint(ckpt)
    # resumed eager: the same step, so the compiled run's checkpoint must carry on in either mode
    r = cli("train", "titans", "--steps", "6", "--out", run, "--resume", ckpt, *common)
    assert r.returncode == 0, r.stdout + r.stderr
    later, meta = load_checkpoint(ckpt)
    assert meta["step"] == 6
    assert any(not torch.equal(first[k], later[k]) for k in first if k.startswith("model."))
    for device in ("cuda", "cpu"):
        r = cli("generate", ckpt, "--prompt", "The ", "--tokens", "16", "--temperature", "0",
                "--device", device)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.startswith("The ") and len(r.stdout) > len("The \n")
        r = cli("eval", ckpt, "--max-batches", "2", "--device", device)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "perplexity" in r.stdout
