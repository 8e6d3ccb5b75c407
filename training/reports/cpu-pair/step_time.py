"""Seconds per training step of Lite2 on this CPU: fully trained, bf16 autocast, and with frozen stages.

One batch of random 296-px images (32), forward + cross-entropy + backward + AdamW, the first
step (allocation) left out. `python training/reports/cpu-pair/step_time.py [--compile]` from
the repository root; the README's step times come from it.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from training.models import apply_strategy, build_model, set_train_mode  # noqa: E402


def step_times(frozen: int, bf16: bool, compiled: bool, size: int, steps: int) -> list[float]:
    model = build_model("efficientnet_lite2", 6, True).to(memory_format=torch.channels_last)
    apply_strategy(model, "efficientnet_lite2", "full", frozen)
    set_train_mode(model)
    run = torch.compile(model) if compiled else model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-4)
    x = torch.randn(32, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 6, (32,))
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(run(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times[1:]


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=296)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--compile", action="store_true", help="also the fully trained network under torch.compile")
    args = p.parse_args()
    cases = [(0, False, False), (0, True, False), (2, False, False), (3, False, False), (4, False, False),
             (5, False, False)] + ([(0, False, True)] if args.compile else [])
    for frozen, bf16, compiled in cases:
        times = step_times(frozen, bf16, compiled, args.size, args.steps)
        print(f"frozen stages {frozen}{' bf16' if bf16 else ''}{' compiled' if compiled else ''}: "
              + " ".join(f"{t:.2f}" for t in times) + " s", flush=True)
