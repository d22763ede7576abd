"""The ready-made losses against closed forms, and the input checks of every entry point."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import imaml
from imaml import losses
from imaml.inner import GD
from imaml.solvers import CG
from imaml.testing import make_mlp, make_regression_batch

CLASSES = 3


def classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, CLASSES)).double()


def image_batch(tasks: int = 4, shots: int = 2) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(xs, ys, xq, yq): 2×2 one-channel float64 images, every class in each split."""
    g = torch.Generator().manual_seed(0)
    n = CLASSES * shots
    xs, xq = (torch.randn(tasks, n, 1, 2, 2, generator=g, dtype=torch.float64) for _ in "sq")
    y = torch.arange(CLASSES).repeat(shots).expand(tasks, n)
    return xs, y, xq, y.clone()


def test_regression_loss_is_the_mean_squared_error():
    model = make_mlp()
    params = dict(model.named_parameters())
    xs, ys, _, _ = make_regression_batch()
    expected = ((model(xs[0]) - ys[0]) ** 2).mean()
    torch.testing.assert_close(imaml.regression_loss(model)(params, xs[0], ys[0]), expected)


def test_classification_loss_is_cross_entropy_and_accuracy():
    model = classifier()
    xs, ys, _, _ = image_batch()
    logits = model(xs[0])
    loss, aux = imaml.classification_loss(model)(dict(model.named_parameters()), xs[0], ys[0])
    torch.testing.assert_close(loss, F.cross_entropy(logits, ys[0]))
    accuracy = (logits.argmax(-1) == ys[0]).double().mean()
    torch.testing.assert_close(aux["accuracy"], accuracy)


def test_regression_targets_must_match_the_predictions():
    # Targets (N,) against predictions (N, 1) broadcast to an (N, N) error: the gradient of
    # the measured case (8 tasks of 10 points) was 1.26 in norm instead of 25.07.
    model = make_mlp()
    params = dict(model.named_parameters())
    loss_fn = imaml.regression_loss(model)
    xs, ys, xq, yq = make_regression_batch(num_tasks=8)
    with pytest.raises(ValueError, match=r"^y \(the targets\) has shape \(10,\) per task, but "):
        loss_fn(params, xs[0], ys[0, :, 0])
    with pytest.raises(ValueError, match=r"support\[1\] .* \(10,\) per task.*\(10, 1\)"):
        imaml.maml_gradient(loss_fn, params, (xs, ys[..., 0]), (xq, yq), inner=GD(1, 0.1))


def test_labels_must_be_int64_indices_shaped_like_the_logits():
    model = classifier()
    params = dict(model.named_parameters())
    loss_fn = imaml.classification_loss(model)
    xs, ys, _, _ = image_batch()
    with pytest.raises(ValueError, match=r"y \(the labels\) has dtype torch.float64; .*long"):
        loss_fn(params, xs[0], ys[0].double())
    with pytest.raises(ValueError, match=r"has shape \(6, 1\) per task.*must have shape \(6,\)"):
        loss_fn(params, xs[0], ys[0, :, None])


def call_entry_point(name: str, loss_fn: Callable, params, support, query, has_aux: bool):
    """Call the entry point ``name`` with one GD step (and CG(1) where it solves)."""
    inner = GD(1, 0.1)
    common = dict(has_aux=has_aux)
    if name == "meta_gradient":
        return imaml.meta_gradient(
            loss_fn, params, support, query, lam=1.0, inner=inner, solver=CG(1), **common
        )
    if name == "implicit_gradient":
        tasks = support[0].shape[0]
        phi = {k: v.detach().expand(tasks, *v.shape) for k, v in params.items()}
        return imaml.implicit_gradient(
            loss_fn, params, phi, support, query, lam=1.0, solver=CG(1), **common
        )
    if name == "adapt":
        return imaml.adapt(loss_fn, params, support, lam=1.0, inner=inner, **common)
    if name == "maml_gradient":
        return imaml.maml_gradient(loss_fn, params, support, query, inner=inner, **common)
    return imaml.reptile_gradient(loss_fn, params, support, inner=inner, **common)


WITH_QUERY = ["meta_gradient", "implicit_gradient", "maml_gradient"]
ENTRY_POINTS = [*WITH_QUERY, "adapt", "reptile_gradient"]
ENTRY_SPLITS = [(e, "support") for e in ENTRY_POINTS] + [(e, "query") for e in WITH_QUERY]


class TestEntryPointsCheckTheirInputs:
    """Each case: a ValueError naming the tensor, before any batched computation."""

    def run(self, entry: str, split: str, change: Callable[[Tensor, Tensor], tuple]):
        model = classifier()
        xs, ys, xq, yq = image_batch()
        splits = {"support": (xs, ys), "query": (xq, yq)}
        splits[split] = change(*splits[split])
        return call_entry_point(
            entry, imaml.classification_loss(model), dict(model.named_parameters()),
            splits["support"], splits["query"], has_aux=True,
        )  # fmt: skip

    @pytest.mark.parametrize("entry", ENTRY_POINTS)
    def test_valid_inputs_pass(self, entry):
        self.run(entry, "support", lambda x, y: (x, y))

    @pytest.mark.parametrize(("entry", "split"), ENTRY_SPLITS)
    def test_an_empty_set(self, entry, split):
        with pytest.raises(ValueError, match=rf"^{split}\[0\] has shape \(4, 0, 1, 2, 2\), no "):
            self.run(entry, split, lambda x, y: (x[:, :0], y[:, :0]))

    @pytest.mark.parametrize(("entry", "split"), ENTRY_SPLITS)
    def test_mismatched_task_counts(self, entry, split):
        with pytest.raises(ValueError, match=rf"number of tasks B.*{split}\[1\]: 3"):
            self.run(entry, split, lambda x, y: (x, y[:3]))

    @pytest.mark.parametrize(("entry", "split"), ENTRY_SPLITS)
    def test_integer_images(self, entry, split):
        message = rf"^{split}\[0\] \(the inputs\) has dtype torch.uint8, but the parameters"
        with pytest.raises(ValueError, match=message):
            self.run(entry, split, lambda x, y: ((10 * x.abs()).to(torch.uint8), y))

    @pytest.mark.parametrize(("entry", "split"), ENTRY_SPLITS)
    @pytest.mark.parametrize(("shift", "low", "high"), [(1, 1, 3), (-1, -1, 1)])
    def test_out_of_range_labels(self, entry, split, shift, low, high):
        message = rf"^{split}\[1\] holds labels from {low} to {high}, but the model outputs 3 "
        with pytest.raises(ValueError, match=message):
            self.run(entry, split, lambda x, y: (x, y + shift))

    @pytest.mark.parametrize("entry", ENTRY_POINTS)
    def test_zero_tasks(self, entry):
        model = classifier()
        xs, ys, xq, yq = (t[:0] for t in image_batch())
        with pytest.raises(ValueError, match=r"^support\[0\] has 0 tasks"):
            call_entry_point(
                entry, imaml.classification_loss(model), dict(model.named_parameters()),
                (xs, ys), (xq, yq), has_aux=True,
            )  # fmt: skip


def test_splits_are_checked_once_per_call(monkeypatch):
    # Outside vmap: the label check synchronizes with the device once per call, never in
    # the inner loop.
    calls = []
    check = losses.ClassificationLoss.check_splits

    def counted(self, params, splits):
        calls.append(sorted(splits))
        return check(self, params, splits)

    monkeypatch.setattr(losses.ClassificationLoss, "check_splits", counted)
    model = classifier()
    xs, ys, xq, yq = image_batch()
    params = dict(model.named_parameters())
    imaml.meta_gradient(
        imaml.classification_loss(model), params, (xs, ys), (xq, yq),
        lam=1.0, inner=GD(3, 0.1), solver=CG(3), has_aux=True,
    )  # fmt: skip
    assert calls == [["query", "support"]]


def test_a_loss_of_its_own_is_checked_only_for_empty_sets():
    # A user's loss_fn may take any tensors (here integer inputs, used as indices).
    def lookup(params, idx, y):
        return ((params["table"][idx] - y) ** 2).mean()

    params = {"table": torch.zeros(5, dtype=torch.float64)}
    idx = torch.arange(4).repeat(2, 1)
    y = torch.ones(2, 4, dtype=torch.float64)
    grads, _ = imaml.reptile_gradient(lookup, params, (idx, y), inner=GD(1, 0.5))
    # One step of lr 0.5 on (t − 1)² averaged over 4 entries moves each of t[0..3] by 0.25.
    expected = torch.tensor([-0.25, -0.25, -0.25, -0.25, 0.0], dtype=torch.float64)
    torch.testing.assert_close(grads["table"], expected)
    with pytest.raises(ValueError, match=r"^support\[0\] has shape \(2, 0\), no elements"):
        imaml.reptile_gradient(lookup, params, (idx[:, :0], y[:, :0]), inner=GD(1, 0.5))


def test_class_batches_hold_the_same_shots_of_every_class() -> None:
    batches = losses.ClassBatches(ways=3, shots=2)
    y = torch.arange(3).repeat_interleave(4)  # 4 examples per class, as the sampler lays them out
    x = torch.arange(12.0)[:, None] + 100
    assert batches.count(12) == 2 and batches.split(y)[1].tolist() == [0, 0, 1, 1, 2, 2]
    # Batch g, class c: the class's examples g·k .. g·k + k - 1.
    assert batches.split(x)[1, :, 0].tolist() == [i + 100 for i in (2, 3, 6, 7, 10, 11)]
    assert torch.equal(batches.merge(batches.split(x)), x)
    assert torch.equal(losses.ClassBatches(3, 4).split(x), x[None])  # one batch: all of them
    with pytest.raises(ValueError, match="12 examples do not split into batches of 5 of each of 3"):
        losses.ClassBatches(3, 5).split(x)
    with pytest.raises(ValueError, match="ways and shots must be >= 1"):
        losses.ClassBatches(3, 0)


def test_a_loss_in_class_batches_is_the_mean_over_separate_batchnorm_passes() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(4, 5),
        nn.BatchNorm1d(5, track_running_stats=False),
        nn.Linear(5, CLASSES),
    )
    model = model.double()
    params = dict(model.named_parameters())
    xs, _, _, _ = image_batch(tasks=1, shots=4)
    x, y = xs[0], torch.arange(CLASSES).repeat_interleave(4)  # 4 per class, class by class
    whole = imaml.classification_loss(model)
    batched = imaml.classification_loss(model, losses.ClassBatches(CLASSES, 2))
    first, second = ([0, 1, 4, 5, 8, 9], [2, 3, 6, 7, 10, 11])  # the two 2-per-class batches
    parts = [whole(params, x[i], y[i]) for i in (first, second)]
    loss, aux = batched(params, x, y)
    torch.testing.assert_close(loss, (parts[0][0] + parts[1][0]) / 2)
    torch.testing.assert_close(
        aux["accuracy"], (parts[0][1]["accuracy"] + parts[1][1]["accuracy"]) / 2
    )
    assert not torch.allclose(loss, whole(params, x, y)[0])  # BatchNorm saw other statistics
    # Its gradient is the mean of the batches' gradients (what training with it takes).
    grads = [
        torch.func.grad(lambda p, i=i: whole(p, x[i], y[i])[0])(params) for i in (first, second)
    ]
    batched_grad = torch.func.grad(lambda p: batched(p, x, y)[0])(params)
    for name in params:
        torch.testing.assert_close(batched_grad[name], (grads[0][name] + grads[1][name]) / 2)


def test_a_loss_in_class_batches_changes_nothing_without_batchnorm() -> None:
    model = make_mlp()
    params = dict(model.named_parameters())
    xs, ys, _, _ = make_regression_batch()
    for shots in (1, 5):
        batched = imaml.regression_loss(model, losses.ClassBatches(1, shots))
        torch.testing.assert_close(
            batched(params, xs[0], ys[0]), imaml.regression_loss(model)(params, xs[0], ys[0])
        )
