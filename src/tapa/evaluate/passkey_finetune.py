"""A short fine-tuning recipe that teaches a small model the passkey task at its training
length only, so the passkey grid can then measure whether retrieval survives at longer
lengths. Examples are generated on the fly (random key, depth, filler offset); the loss is
on the answer tokens only."""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from tapa.data.tokenizer import load_checkpoint_tokenizer
from tapa.evaluate.passkey import make_prompt, random_key
from tapa.model import load_pretrained, save_pretrained
from tapa.train.config import DEFAULT_LR
from tapa.train.recipe import make_optimizer, make_schedule, update
from tapa.utils.publish import publish


def passkey_batch(tokenizer, length: int, batch: int, filler: str, rng: random.Random):
    rows, masks = [], []
    for _ in range(batch):
        key = random_key(rng)
        answer_len = len(tokenizer.encode(" " + key))
        depth, offset = rng.random(), rng.randrange(0, 20000)
        # filler from a training book: the held-out test book stays unseen until evaluation
        prompt = make_prompt(tokenizer, length + 1 - answer_len, depth, key, filler, offset, split="train")
        ids = torch.cat([prompt.ids, torch.tensor(prompt.answer)])
        mask = torch.zeros(len(ids) - 1, dtype=torch.bool)
        mask[-answer_len:] = True  # targets that are the answer
        rows.append(ids)
        masks.append(mask)
    block = torch.stack(rows)
    return block[:, :-1], block[:, 1:], torch.stack(masks)


def passkey_finetune(
    checkpoint: str | Path,
    out: str | Path,
    steps: int = 300,
    batch_size: int = 8,
    lr: float | None = None,
    length: int | None = None,
    filler: str = "books",
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Fine-tune on passkey prompts of ``length`` tokens (default: the training length)."""
    model = load_pretrained(checkpoint)
    tokenizer = load_checkpoint_tokenizer(checkpoint)
    length = length or model.config.max_seq_len
    lr = lr or DEFAULT_LR[model.config.positional]
    rng = random.Random(seed)
    torch.manual_seed(seed)
    make_prompt(tokenizer, length - 8, 0.5, "12345", filler)  # fail early on a too-short length
    params = list(model.parameters())
    optimizer = make_optimizer(params, lr)
    scheduler = make_schedule(optimizer, max(1, steps // 10), steps, 0.1)
    model.train()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, unit="step", desc="passkey fine-tune", dynamic_ncols=True)
    losses = []
    for _ in range(steps):
        x, y, mask = passkey_batch(tokenizer, length, batch_size, filler, rng)
        logits = model(x)
        loss = F.cross_entropy(logits[mask].float(), y[mask])
        loss.backward()
        update(params, optimizer, scheduler, clip=1.0)
        losses.append(loss.item())
        if bar is not None:
            bar.update(1)
            bar.set_postfix(answer_loss=f"{loss.item():.3f}")
    if bar is not None:
        bar.close()
    out = Path(out)

    def write(staging: Path) -> None:  # all files or none (a full disk leaves nothing half-written)
        save_pretrained(model, staging)
        tokenizer.save(staging)

    publish(Path(out), write)
    tail = losses[-max(1, steps // 10) :]
    # a model that knows the format but not the key pays ln(90000) nats over the answer tokens
    no_retrieval = math.log(9 * 10**4) / len(tokenizer.encode(" 12345"))
    return {
        "steps": steps,
        "length": length,
        "lr": lr,
        "final_answer_loss": sum(tail) / len(tail),
        "no_retrieval_loss": no_retrieval,
    }
