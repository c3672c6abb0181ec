"""AdamW step time: torch's default (foreach) implementation vs the fused kernel the trainer uses.

Side by side in one run, on the same parameters and gradients; prints both times, the ratio and the largest
difference between the two updated weights (float rounding only).

    .venv/bin/python benchmarks/optimizer_step.py [--params-millions 100] [--steps 5]
"""
import argparse
import time

import torch


def timed_steps(fused: bool, shapes: list, steps: int) -> tuple[float, list]:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, fused=fused or None)
    grads = torch.Generator().manual_seed(1)
    times = []
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=grads)
        start = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params-millions", type=float, default=100.0)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    side = 2048
    count = max(1, round(args.params_millions * 1e6 / side ** 2))
    shapes = [(side, side)] * count
    default, a = timed_steps(False, shapes, args.steps)
    fused, b = timed_steps(True, shapes, args.steps)
    diff = max((x - y).abs().max().item() for x, y in zip(a, b))
    print(f"AdamW step on {count * side * side / 1e6:.0f}M float32 params ({torch.get_num_threads()} threads), "
          f"median of {args.steps}")
    print(f"{'implementation':<16}{'ms/step':>10}")
    print(f"{'default':<16}{default * 1000:>10.1f}")
    print(f"{'fused':<16}{fused * 1000:>10.1f}")
    print(f"ratio default/fused: {default / fused:.2f}   max |weight difference|: {diff:.2e}")


if __name__ == "__main__":
    main()
