"""The held-out loss: one loop (`train.heldout_loss`) behind the trainer's evaluations and `nestc
eval` (`generate.perplexity`). The two report the same number for the same model and data, it is
the plain mean of the sequences' next-token losses where no box needs local surprise signals,
and it leaves the model's train/eval flag and grad mode as it found them."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import nestc
from nestc.runtime.generate import perplexity
from nestc.runtime.train import LossFns, heldout_loss, make_loss_fns
from nestc.runtime.trainer import TrainConfig, Trainer

SMALL = {"n_layers": "1", "d_model": "32", "heads": "2"}
SPECS = {
    "transformer": {},  # no local surprise signals: one pass
    "cms": {"c_fast": "2", "c_mid": "4", "c_slow": "8"},  # causal signals first
}


def trainer(spec: str, tmp_path) -> Trainer:
    cfg = TrainConfig(steps=1, seq_len=16, batch=2, warmup=1, eval_every=0, eval_batches=3)
    return Trainer(nestc.compile(spec, {**SMALL, **SPECS[spec]}), cfg, tmp_path)


@pytest.mark.parametrize("spec", list(SPECS))
def test_nestc_eval_reports_the_trainers_held_out_loss(spec, tmp_path):
    t = trainer(spec, tmp_path)
    t.train_step()  # memories and weights away from their initial values
    logged = t.evaluate()["loss"]
    result = perplexity(t.model, t.data, t.cfg.batch, t.cfg.seq_len, max_batches=t.cfg.eval_batches)
    assert result["sequences"] == 6 and result["tokens"] == 6 * 16
    assert result["loss"] == pytest.approx(logged, rel=1e-6)


def test_without_signals_it_is_the_mean_of_the_sequences_losses(tmp_path):
    t = trainer("transformer", tmp_path)
    batches = list(t.data.eval_batches(2, 16, max_batches=3))
    with torch.no_grad():  # the reference: each sequence's mean cross-entropy, then their mean
        per_seq = [F.cross_entropy(t.model(x)[0][i], y[i]) for x, y in batches for i in range(x.shape[0])]
    loss, n = heldout_loss(t.model, make_loss_fns(t.model), batches, torch.device("cpu"))
    assert n == len(per_seq) == 6
    assert loss == pytest.approx(float(torch.stack(per_seq).mean()), rel=1e-6)


@pytest.mark.parametrize("compiled", [False, True])
def test_grad_mode_of_the_real_pass_and_the_flags_after(compiled, tmp_path):
    t = trainer("transformer", tmp_path)
    eager = make_loss_fns(t.model)
    seen = []

    def main(x, y, lss):
        seen.append((torch.is_grad_enabled(), t.model.training))
        return eager.main(x, y, lss)

    # the flag only tells heldout_loss how the pass was built; the pass itself runs eagerly here
    fns = LossFns(main, eager.probe, compiled=compiled)
    batches = list(t.data.eval_batches(2, 16, max_batches=2))
    heldout_loss(t.model, fns, batches, torch.device("cpu"))
    # eager: no autograd graph for the real pass; compiled: grad mode as in training, so dynamo
    # reuses the training graph instead of compiling one for no_grad; evaluated in eval mode
    assert seen == [(compiled, False)] * 2
    assert t.model.training

    t.model.eval()
    heldout_loss(t.model, fns, batches, torch.device("cpu"))
    assert not t.model.training  # a model in eval mode stays there

    t.model.train()

    def broken(x, y, lss):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        heldout_loss(t.model, LossFns(broken, eager.probe), batches, torch.device("cpu"))
    assert t.model.training  # restored after an error too


def test_perplexity_reports_each_batch_to_its_progress_callback(tmp_path):
    t = trainer("transformer", tmp_path)
    seen = []
    result = perplexity(t.model, t.data, 2, 16, max_batches=3, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(0, 3), (1, 3), (2, 3), (3, 3)]  # the total first, then each batch as it ends
    assert result["sequences"] == 6


def test_a_compiled_run_evaluates_with_its_training_graphs(tmp_path):
    from torch._dynamo.utils import counters

    cfg = TrainConfig(steps=1, seq_len=16, batch=2, warmup=1, eval_every=0, eval_batches=2, compile=True)
    t = Trainer(nestc.compile("transformer", SMALL), cfg, tmp_path)
    t.train_step()
    graphs = counters["stats"]["unique_graphs"]
    loss = t.evaluate()["loss"]
    assert counters["stats"]["unique_graphs"] == graphs  # no second compile (it was 2 -> 4 under no_grad)
    eager = Trainer(nestc.compile("transformer", SMALL), dataclasses.replace(cfg, compile=False), tmp_path / "e")
    eager.train_step()
    assert loss == pytest.approx(eager.evaluate()["loss"], rel=1e-4)
