"""The specs in examples/ (written for nestc by hand, lowered by its general rules with no Python of
their own) check, compile and train, as the README says they do."""

from __future__ import annotations

import json

import torch

import nestc
from train_helpers import ROOT, nestc_cli

EXAMPLES = ROOT / "examples"


def test_the_robust_memory_example_trains_from_the_cli(tmp_path):
    out = tmp_path / "run"
    r = nestc_cli("train", EXAMPLES / "robust_memory.nest", "--steps", "3", "--batch", "2",
                  "--seq-len", "32", "--set", "d_model=32", "--eval-every", "3", "-o", out)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if row["kind"] in ("train", "eval")]
    assert len(losses) == 4 and torch.isfinite(torch.tensor(losses)).all()  # 3 steps, 1 evaluation
    assert (out / "last.safetensors").exists()


def test_the_robust_memory_example_lowers_every_box_by_the_general_rules():
    c = nestc.compile(EXAMPLES / "robust_memory.nest", {"d_model": "32"})
    lowering = dict(line.strip().split(": ", 1)
                    for line in c.module.__doc__.split("Lowering:")[1].strip().splitlines())
    assert lowering == {"layer.fast": "delta_rule_chunked", "layer.deep": "deep_memory_chunked",
                        "layer.cms_a": "cms_steps", "layer.cms_b": "cms_steps",
                        # the train section's optimizer, specs/adamw.nest
                        "adamw.m": "optimizer_foreach", "adamw.v": "optimizer_foreach",
                        "adamw.W": "optimizer_foreach"}


def test_the_yaml_twin_builds_the_same_model():
    nest = nestc.compile(EXAMPLES / "robust_memory.nest", {"d_model": "32"})
    yaml = nestc.compile(EXAMPLES / "robust_memory.yaml", {"d_model": "32"})
    assert nest.levels.levels == yaml.levels.levels
    rules = [c.module.__doc__.split("Lowering:")[1] for c in (nest, yaml)]
    assert rules[0] == rules[1]
    torch.manual_seed(0)
    a = nest.model(64)
    torch.manual_seed(0)
    b = yaml.model(64)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    x = torch.randint(0, 64, (2, 24))
    assert torch.equal(a(x)[0], b(x)[0])


def test_the_signum_example_is_sign_sgd_with_momentum():
    """examples/signum.nest, compiled, against the rule written out here: m <- beta m + (1 - beta) g
    (one GD step of rate 1 - beta on |m - g|² / 2), W <- W - lr sign(m)."""
    (_, _, cls, _), = nestc.compile(EXAMPLES / "signum.nest").module.OPTIMIZERS
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    ref = [p.detach().clone() for p in net.parameters()]
    moments = [torch.zeros_like(p) for p in ref]
    opt = cls(list(net.parameters()), lr=0.01, beta=0.8)
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        x, y = torch.randn(16, 6, generator=gen), torch.randn(16, 3, generator=gen)
        opt.zero_grad()
        ((net(x) - y) ** 2).mean().backward()
        grads = [p.grad.detach().clone() for p in net.parameters()]
        opt.step()
        for i, g in enumerate(grads):
            moments[i] = 0.8 * moments[i] + 0.2 * g
            ref[i] = ref[i] - 0.01 * torch.sign(moments[i])
    assert max((p - r).abs().max().item() for p, r in zip(net.parameters(), ref)) <= 1e-6


def test_the_adam_memory_example_trains_token_by_token_and_says_so(tmp_path):
    """examples/adam_memory.nest: a box no chunked rule takes (Adam on its inner objective,
    proximal retention) beside a gated delta rule; the CLI warns, names the box, and trains."""
    out = tmp_path / "run"
    r = nestc_cli("train", EXAMPLES / "adam_memory.nest", "--steps", "2", "--batch", "2",
                  "--seq-len", "12", "--eval-every", "2", "-o", out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "warning: box `adam_mem` runs token by token" in r.stderr
    assert "`delta`" not in r.stderr.split("warning:", 1)[1]  # the delta rule box is chunked
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["kind"] for row in rows if row["kind"] in ("train", "eval")] == ["train", "train", "eval"]
    assert torch.isfinite(torch.tensor([row["loss"] for row in rows if "loss" in row])).all()


def test_the_examples_are_in_canonical_form():
    r = nestc_cli("fmt", "--check", *sorted(EXAMPLES.glob("*.nest")))
    assert r.returncode == 0, r.stdout + r.stderr
