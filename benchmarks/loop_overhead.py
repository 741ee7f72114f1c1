"""Loop overhead: `Learner.fine_tune` against a hand-written PyTorch loop doing the same work.

Same model (timm resnet18, random init), same data (random 64 px images), same steps: one frozen epoch
(body frozen except its BatchNorm parameters, head one-cycle) and one unfrozen epoch (two param groups,
one-cycle), each followed by a validation pass. The hand-written loop uses torch's own AdamW and
OneCycleLR. Runs alternate in one process; the median of each is reported, with the ratio.

    python benchmarks/loop_overhead.py [--runs 5] [--batches 20] [--bs 64] [--size 64]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time

import timm
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from fastfreeze import DataLoaders, Learner


def make_data(n_batches: int, bs: int, size: int, n_classes: int = 10):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_batches * bs, 3, size, size, generator=g)
    y = torch.randint(0, n_classes, (n_batches * bs,), generator=g)
    xv, yv = x[: bs * 2], y[: bs * 2]
    train = DataLoader(TensorDataset(x, y), batch_size=bs, shuffle=True, drop_last=True)
    valid = DataLoader(TensorDataset(xv, yv), batch_size=bs * 2)
    return train, valid


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False, num_classes=10)


def body_head(model: nn.Module):
    head = list(model.get_classifier().parameters())
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    return body, head


def run_fastfreeze(train, valid) -> float:
    model = make_model()
    learn = Learner(model, DataLoaders(train, valid), splitter=lambda m: list(body_head(m)))
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the progress table is part of the cost, not the output
        learn.fine_tune(1, base_lr=2e-3, freeze_epochs=1)
    return time.perf_counter() - start


def hand_written_phase(model, train, valid, groups, max_lrs, pct_start, div, trainable) -> None:
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    opt = torch.optim.AdamW([{"params": g} for g in groups], lr=max_lrs[-1], betas=(0.9, 0.99), eps=1e-5,
                            weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lrs, total_steps=len(train), pct_start=pct_start,
                                                div_factor=div, final_div_factor=1e5 / div,
                                                base_momentum=0.85, max_momentum=0.95)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for x, y in train:
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        for x, y in valid:
            loss_fn(model(x), y)


def run_hand_written(train, valid) -> float:
    model = make_model()
    body, head = body_head(model)
    norm_ids = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    start = time.perf_counter()
    trainable = {id(p) for p in head} | norm_ids
    hand_written_phase(model, train, valid, [body, head], [2e-4, 2e-3], 0.99, 25.0, trainable)
    hand_written_phase(model, train, valid, [body, head], [1e-5, 1e-3], 0.3, 5.0,
                       {id(p) for p in model.parameters()})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    train, valid = make_data(args.batches, args.bs, args.size)
    run_fastfreeze(train, valid), run_hand_written(train, valid)  # warm-up
    ours, hand = [], []
    for _ in range(args.runs):
        ours.append(run_fastfreeze(train, valid))
        hand.append(run_hand_written(train, valid))
    m_ours, m_hand = statistics.median(ours), statistics.median(hand)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, resnet18 {args.size}px, bs {args.bs}, "
          f"{args.batches} batches/epoch, fine_tune(1, freeze_epochs=1), {args.runs} alternating runs")
    print(f"hand-written loop : median {m_hand:.2f} s  (runs: {', '.join(f'{t:.2f}' for t in hand)})")
    print(f"fastfreeze        : median {m_ours:.2f} s  (runs: {', '.join(f'{t:.2f}' for t in ours)})")
    print(f"ratio fastfreeze / hand-written: {m_ours / m_hand:.3f}x")


if __name__ == "__main__":
    main()
