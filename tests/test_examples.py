"""Each example script runs on its tiny settings (``--smoke``) and its numbers make sense."""

from __future__ import annotations

import runpy
from pathlib import Path

import torch
import torch.nn.functional as F

import imaml

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> dict:
    """The example's module namespace (its ``main`` not run)."""
    return runpy.run_path(str(EXAMPLES / f"{name}.py"))


def test_every_example_is_listed_and_documented():
    readme = (EXAMPLES / "README.md").read_text()
    scripts = sorted(EXAMPLES.glob("*.py"))
    assert len(scripts) >= 3
    for script in scripts:
        assert f"python examples/{script.name}" in readme, script.name
        namespace = load(script.stem)
        assert "--smoke" in namespace["__doc__"] and callable(namespace["main"])


def test_custom_model_learns_new_classes(capsys):
    results = load("custom_model")["main"](["--smoke"])
    (loss_before, acc_before), (loss_after, acc_after) = results["before"], results["after"]
    assert loss_after < loss_before - 0.02
    assert acc_after > acc_before + 0.03
    assert "new classes, after meta-training" in capsys.readouterr().out


def test_nesterov_inner_optimizer():
    example = load("custom_inner_optimizer")
    nesterov = example["NesterovGD"]
    # With momentum 0 it is plain gradient descent: the same meta-gradient as imaml.GD.
    torch.manual_seed(0)
    model = imaml.models.MLP(1, 1, hidden=(8,)).double()
    g = torch.Generator().manual_seed(0)
    xs, xq = (torch.randn(3, 5, 1, generator=g, dtype=torch.float64) for _ in "sq")
    support, query = (xs, torch.sin(xs)), (xq, torch.sin(xq))
    grads = []
    for inner in (nesterov(5, 0.05, momentum=0.0), imaml.GD(5, 0.05)):
        model.zero_grad()
        imaml.IMAML(model, F.mse_loss, lam=2.0, inner=inner, solver=imaml.CG(3)).meta_backward(
            support, query
        )
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)

    results = example["main"](["--smoke"])
    assert results["nesterov_inner_grad_norm"] < results["gd_inner_grad_norm"]
    assert results["last_loss"] < results["first_loss"]


def test_sinusoid_regression_beats_no_meta_training(capsys):
    results = load("sinusoid_regression")["main"](["--smoke"])
    assert set(results) == {"iMAML", "MAML", "first-order MAML", "Reptile", "no meta-training"}
    for name in ("iMAML", "MAML", "first-order MAML", "Reptile"):
        assert results[name] < results["no meta-training"], name
    assert "held-out tasks" in capsys.readouterr().out


def test_a_published_model_adapts_to_new_characters(omniglot_root, capsys):
    results = load("pretrained")["main"](["--data-dir", str(omniglot_root), "--smoke"])
    assert results["accuracy"] > 0.8  # 97.4 % on 600 test tasks (models/manifest.toml)
    out = capsys.readouterr().out
    assert "omniglot-5w1s-imaml: imaml, 5-way 1-shot, step 10000" in out
    assert results["task0"] == results["task0_batched"]  # a task's module = the batched model
