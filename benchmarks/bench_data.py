"""Time the data pipeline: Omniglot cache loads and meta-batch sampling.

Usage: python benchmarks/bench_data.py [--data DIR] [--cache-dir DIR] [--device cpu|cuda]

Prints the time to load each Omniglot split from the cache (building the cache first if needed),
then milliseconds per meta-batch for the standard few-shot settings on Omniglot, on a synthetic
mini-ImageNet-shaped data set, and for sinusoid regression. ``--data`` defaults to $IMAML_DATA
(the folder holding omniglot/); without it the Omniglot figures are skipped.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

from imaml.data import ImageDataset, Omniglot, Sinusoid, TaskSampler


def per_batch_ms(sampler: TaskSampler, meta_batch: int, repeats: int) -> tuple[float, float]:
    """Median and 90th-percentile milliseconds of ``sampler.sample(meta_batch)``."""
    for _ in range(5):
        sampler.sample(meta_batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sampler.sample(meta_batch)
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times), statistics.quantiles(times, n=10)[-1]


def report(name: str, sampler: TaskSampler, meta_batch: int, repeats: int) -> None:
    median, p90 = per_batch_ms(sampler, meta_batch, repeats)
    print(f"  {name:<44} {median:7.2f} ms median  {p90:7.2f} ms p90")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=os.environ.get("IMAML_DATA"))
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--meta-batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    batch, repeats, device = args.meta_batch, args.repeats, args.device

    if args.data is not None and (args.data / "omniglot").is_dir():
        root = args.data / "omniglot"
        start = time.perf_counter()
        Omniglot(root, "trainval", cache_dir=args.cache_dir)
        print(f"Omniglot cache ready (built if absent) in {time.perf_counter() - start:.2f} s")
        splits = {}
        for split in ("train", "val", "test", "trainval"):
            start = time.perf_counter()
            splits[split] = Omniglot(root, split, cache_dir=args.cache_dir)
            elapsed = time.perf_counter() - start
            print(f"  load {split:<9} from cache: {elapsed * 1e3:7.1f} ms")
        print(f"Omniglot train, meta-batch {batch}, device {device}:")
        for ways, shots, query in [(5, 1, 15), (5, 5, 15), (20, 1, 5), (20, 5, 5)]:
            sampler = TaskSampler(splits["train"], ways, shots, query, seed=0, device=device)
            report(f"{ways}-way {shots}-shot, {query} queries/class", sampler, batch, repeats)
    else:
        print("Omniglot skipped: pass --data or set IMAML_DATA to the folder holding omniglot/")

    rng = np.random.default_rng(0)
    mini = ImageDataset(rng.integers(0, 256, (16, 600, 3, 84, 84), dtype=np.uint8))
    print(f"mini-ImageNet-shaped (16 x 600 x 3x84x84, synthetic), meta-batch {batch}:")
    for shots in (1, 5):
        sampler = TaskSampler(mini, 5, shots, 15, seed=0, device=device)
        report(f"5-way {shots}-shot, 15 queries/class", sampler, batch, repeats)

    print(f"Sinusoid, meta-batch {batch}:")
    report("10-shot, 10 queries", TaskSampler(Sinusoid(), 1, 10, 10, device=device), batch, repeats)


if __name__ == "__main__":
    main()
