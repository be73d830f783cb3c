"""Test-time use of a trained model: streaming generation (its memories keep learning as the
text arrives, NL §6) and perplexity on a text."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import torch

from .context import Ctx
from .train import heldout_loss, make_loss_fns, signals


@torch.no_grad()
def stream_tokens(model, prompt_ids: list[int], max_tokens: int, temperature: float = 0.8,
                  top_k: int = 40, seed: int = 0,
                  on_state: Callable[[int, list[dict[str, Any]]], None] | None = None) -> Iterator[int]:
    """Yield sampled token ids one at a time.

    The prompt goes through once with targets known, so memories that learn from the model's
    loss (local surprise signals) learn the prompt; every memory keeps its state from token to
    token, and memories that learn from the tokens themselves (Titans, Hope) keep learning from
    the generated text too. The last chunk of the prompt is committed (flushed), so a prompt
    shorter than a memory's chunk still teaches it.

    `on_state(n, state)`, when given, sees the model's state (one dict per layer: each memory's
    committed weights `W`, its running state, its offset in the current chunk, ...) after the
    prompt (n = 0) and after each generated token has gone through the model (n = 1, 2, ...),
    so a caller can watch the memories learn at test time."""
    gen = torch.Generator().manual_seed(seed)  # sampling runs on the CPU (`sample`)
    dev = next(model.parameters()).device
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=dev)
    fns = make_loss_fns(model)
    lss = {}
    if model.lss_sites() and ids.shape[1] > 1:
        with torch.enable_grad():
            lss = signals(model, fns, ids[:, :-1], ids[:, 1:])
        lss = {k: torch.cat([v, torch.zeros_like(v[:, :1])], 1) for k, v in lss.items()}
    zeros = {k: torch.zeros(1, ids.shape[1], w, device=dev) for k, w in model.lss_sites()}
    logits, state = model(ids, ctx=Ctx(lss=lss or zeros, flush=True))
    if on_state is not None:
        on_state(0, state)
    step_lss = {k: torch.zeros(1, 1, w, device=dev) for k, w in model.lss_sites()}
    for n in range(1, max_tokens + 1):
        nxt = sample(logits[0, -1], temperature, top_k, gen)
        yield nxt
        logits, state = model(torch.tensor([[nxt]], device=dev), state, Ctx(lss=step_lss))
        if on_state is not None:
            on_state(n, state)


def sample(logits: torch.Tensor, temperature: float, top_k: int, gen: torch.Generator) -> int:
    # on the CPU, with a CPU generator: the same draws from the same logits on every device
    logits = logits.detach().float().cpu()
    if temperature <= 0:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        cut = torch.topk(logits, top_k).values[-1]
        logits = torch.where(logits < cut, torch.full_like(logits, -math.inf), logits)
    probs = torch.softmax(logits, -1)
    return int(torch.multinomial(probs, 1, generator=gen))


def perplexity(model, data, batch: int, seq_len: int, max_batches: int | None = None,
               progress: Callable[[int, int], None] | None = None) -> dict:
    """Mean next-token loss and perplexity over the held-out part of `data` (`heldout_loss`).
    `progress(done, total)` sees each batch as it is done (`nestc eval`'s progress bar)."""
    dev = next(model.parameters()).device
    batches = list(data.eval_batches(batch, seq_len, max_batches=max_batches))
    on_batch = None
    if progress is not None:
        progress(0, len(batches))
        on_batch = lambda done: progress(done, len(batches))  # noqa: E731
    loss, n = heldout_loss(model, make_loss_fns(model), batches, dev, on_batch=on_batch)
    return {"loss": loss, "ppl": math.exp(min(loss, 50)), "sequences": n, "tokens": n * seq_len}
