"""Your own model and your own tasks, meta-learned with ``imaml.IMAML`` and ``torch.optim.Adam``.

Shows: an ordinary ``nn.Module`` (no imaml code in it), few-shot classification tasks generated
here (5-way, 1 example per class to adapt on), a meta-training loop that is a plain PyTorch
loop (``zero_grad``, ``learner.meta_backward``, ``step``), and test-time adaptation to new
tasks from classes never seen in training: ``learner.adapt`` gives one adapted model per task,
called on a batch of tasks at once, and ``adapted.task(i)`` a stand-alone copy for task i.

The tasks: each class is a point ``A z`` in 32 dimensions, for a latent ``z`` in 4 dimensions
and one fixed matrix ``A``; an example is its class point plus noise in all 32 dimensions. What
carries over between tasks is the 4-dimensional subspace: a network whose first layer has
learned it separates new classes from one example each.

Run:
    python examples/custom_model.py            # 200 meta-steps
    python examples/custom_model.py --smoke    # tiny settings, a few seconds
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import imaml

DIM, LATENT, WAYS, SHOTS, QUERY = 64, 4, 5, 1, 5


class Classifier(nn.Module):
    """A small MLP: inputs (N, DIM) to logits (N, WAYS)."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(DIM, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.head = nn.Linear(hidden, WAYS)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.body(x)))


class TaskFamily:
    """Classes ``A z`` (z ~ N(0, 4 I) in LATENT dims, A fixed): ``num_classes`` of them."""

    def __init__(self, num_classes: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        mixing = torch.randn(DIM, LATENT, generator=torch.Generator().manual_seed(0))
        self.centers = 0.5 * torch.randn(num_classes, LATENT, generator=g) @ mixing.T / LATENT**0.5
        self.generator = g

    def sample(self, num_tasks: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(xs, ys, xq, yq)``: xs (B, WAYS·SHOTS, DIM), ys (B, WAYS·SHOTS), query likewise."""
        g = self.generator
        picks = torch.rand(num_tasks, len(self.centers), generator=g).argsort(dim=1)[:, :WAYS]
        centers = self.centers[picks]  # (B, WAYS, DIM): label j is the j-th class picked

        def examples(per_class: int) -> tuple[Tensor, Tensor]:
            x = centers.repeat_interleave(per_class, dim=1)
            x = x + torch.randn(x.shape, generator=g)
            y = torch.arange(WAYS).repeat_interleave(per_class).expand(num_tasks, -1)
            return x, y

        return *examples(SHOTS), *examples(QUERY)


def accuracy(logits: Tensor, y: Tensor) -> Tensor:
    """The fraction of correct predictions, a 0-d tensor."""
    return (logits.argmax(dim=-1) == y).float().mean()


def evaluate(learner: imaml.IMAML, tasks: tuple[Tensor, ...]) -> tuple[float, float]:
    """Query loss and accuracy after adapting to each task's support set, averaged over tasks."""
    xs, ys, xq, yq = tasks
    logits = learner.adapt((xs, ys))(xq)  # (B, WAYS·QUERY, WAYS)
    return F.cross_entropy(logits.flatten(0, 1), yq.flatten()).item(), accuracy(logits, yq).item()


def main(argv: list[str] | None = None) -> dict[str, tuple[float, float]]:
    """Meta-train, then print and return ``{"before"/"after": (query loss, accuracy)}``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="meta-steps")
    parser.add_argument("--smoke", action="store_true", help="tiny settings, for tests")
    args = parser.parse_args(argv)
    steps, meta_batch, num_test = (20, 8, 100) if args.smoke else (args.steps, 16, 200)

    torch.manual_seed(0)
    model = Classifier()
    learner = imaml.IMAML(
        model,
        F.cross_entropy,
        lam=2.0,
        inner=imaml.GD(steps=15, lr=0.05),
        solver=imaml.CG(iters=5),
        metrics={"accuracy": accuracy},  # info["query_accuracy"]: (B,) per task
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train, test = TaskFamily(200, seed=1), TaskFamily(100, seed=2)  # disjoint sets of classes
    test_tasks = test.sample(num_test)
    results = {"before": evaluate(learner, test_tasks)}

    for step in range(1, steps + 1):
        xs, ys, xq, yq = train.sample(meta_batch)
        optimizer.zero_grad()
        info = learner.meta_backward((xs, ys), (xq, yq))  # accumulates into .grad
        optimizer.step()
        if step % max(1, steps // 5) == 0:
            print(
                f"step {step:4d}  query loss {info['query_loss'].mean():.3f}  "
                f"accuracy {info['query_accuracy'].mean():.1%}"
            )

    results["after"] = evaluate(learner, test_tasks)
    for when, (loss, acc) in results.items():
        print(f"new classes, {when} meta-training: query loss {loss:.3f}, accuracy {acc:.1%}")

    xs, ys, xq, yq = test_tasks
    first = learner.adapt((xs[:1], ys[:1])).task(0)  # a plain nn.Module for one new task
    print("one adapted model's predictions:", first(xq[0]).argmax(dim=-1).tolist())
    return results


if __name__ == "__main__":
    main()
