"""Adapt a published model to new tasks: `imaml.pretrained` and the learner it comes with.

Shows: loading a published model by name (its file's sha256 is checked against
``models/manifest.toml``), drawing 5-way 1-shot tasks of Omniglot characters it never saw, adapting
to them with the model's own learner (iMAML's inner loop, as its published accuracy was
measured), and using one task's adapted network as a plain ``nn.Module``.

Needs Omniglot: ``--data-dir DIR`` (or ``$IMAML_DATA``) is the folder holding ``omniglot/``.

Run:
    python examples/pretrained.py --data-dir DIR              # 100 test tasks
    python examples/pretrained.py --data-dir DIR --smoke      # 4 tasks, seconds
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

import imaml


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the example; return the mean accuracy over the new tasks, and task 0's from its
    own module and from the batched model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="omniglot-5w1s-imaml", help="see `imaml models`")
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("IMAML_DATA"))
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--smoke", action="store_true", help="4 tasks")
    args = parser.parse_args(argv)
    if args.data_dir is None:
        parser.error("--data-dir DIR (the folder holding omniglot/) or $IMAML_DATA is needed")
    tasks = 4 if args.smoke else args.tasks

    net = imaml.pretrained(args.model)
    data = net.config.data
    print(f"{net.name}: {net.config.algorithm}, {data.ways}-way {data.shots}-shot, step {net.step}")

    # Test characters, split as the model was trained (whole alphabets held out, or at random).
    test = imaml.data.Omniglot(
        args.data_dir / "omniglot", "test", character_split=data.character_split,
        character_seed=data.character_seed,
    )  # fmt: skip
    sampler = imaml.data.TaskSampler(test, data.ways, data.shots, data.query_shots, seed=1)
    batch = sampler.sample(tasks)  # xs (B, 5, 1, 28, 28), ys (B, 5); xq (B, 75, ...), yq (B, 75)

    adapted = net.learner.adapt((batch.xs, batch.ys))
    with torch.no_grad():
        accuracy = (adapted(batch.xq).argmax(-1) == batch.yq).double().mean(dim=1)
    print(f"{tasks} new tasks: accuracy {100 * accuracy.mean():.2f} % after adaptation")

    # One task's adapted network is an ordinary module: classify new images of its 5 characters.
    first = adapted.task(0).eval()
    with torch.no_grad():
        predicted = first(batch.xq[0]).argmax(-1)
    right = int((predicted == batch.yq[0]).sum())
    print(f"task 0: {right} of {len(predicted)} query images right (batched: {accuracy[0]:.3f})")
    return {
        "accuracy": accuracy.mean().item(),
        "task0": right / len(predicted),
        "task0_batched": accuracy[0].item(),
    }


if __name__ == "__main__":
    main()
