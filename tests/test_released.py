"""The released iMAML code's pipeline (imaml.released) against a per-task reference written from
aravindr93/imaml_dev, and its bundled config end to end."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import imaml
from imaml.cli import main
from imaml.config import ConfigError, load_config
from imaml.data import TaskBatch
from imaml.models import Conv4
from imaml.released import ReleasedCG, ReleasedGD, damped_operator, released_gradient
from imaml.testing import LinearTasks, linear_loss, make_mlp, make_regression_batch
from imaml.training import build_problem
from imaml.training.evaluation import Adaptation
from imaml.training.step import make_gradient_fn
from imaml.tree import flatten

# The README's settings, but 4 inner steps (16 only cost time here).
LAM, STEPS, LR, CG_DAMPING, LAM_DAMPING, CG_STEPS = 2.0, 4, 0.1, 1.0, 10.0, 5


def cg_solve(f_ax: Callable[[Tensor], Tensor], b: Tensor, cg_iters: int) -> Tensor:
    """implicit_maml/utils.py ``cg_solve``: CG from 0, breaking once ``r·r < 1e-10``."""
    x = torch.zeros_like(b)
    r = b - f_ax(x)
    p = r.clone()
    for _ in range(cg_iters):
        rdotr = r.dot(r)
        ap = f_ax(p)
        alpha = rdotr / p.dot(ap)
        x = x + alpha * p
        r = r - alpha * ap
        newrdotr = r.dot(r)
        p = r + (newrdotr / rdotr) * p
        if newrdotr < 1e-10:
            break
    return x


def flat(tensors: Any) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def released_reference(
    model: nn.Module, loss: Callable[..., Tensor], xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor
) -> tuple[Tensor, Tensor]:
    """examples/omniglot_implicit_maml.py's loop over the tasks, with learner_model.py's Learner.

    Returns the meta-gradient (flat) and each task's ‖∇L_s(φ) + λ(φ − θ)‖ at its φ.
    """
    w_k = flat(p.detach() for p in model.parameters())
    meta_grad, inner_norms = torch.zeros_like(w_k), []
    for i in range(len(xs)):
        fast = copy.deepcopy(model)  # fast_learner.set_params(w_k.clone())
        params = list(fast.parameters())
        inner_opt = torch.optim.SGD(params, lr=LR)
        for _ in range(STEPS):  # learn_task: learn_on_data without regularization
            inner_opt.zero_grad()
            loss(fast(xs[i]), ys[i]).backward()
            inner_opt.step()
        inner_opt.zero_grad()  # pull back for regularization: regularization_loss(w_k, lam)
        (0.5 * LAM * torch.sum((flat(params) - w_k) ** 2)).backward()
        inner_opt.step()
        valid_grad = flat(torch.autograd.grad(loss(fast(xq[i]), yq[i]), params))

        def evaluator(v: Tensor, x: Tensor = xs[i], y: Tensor = ys[i], fast: nn.Module = fast):
            # matrix_evaluator(task, lam, cg_damping) with hessian_vector_product
            params = list(fast.parameters())
            grad_ft = flat(torch.autograd.grad(loss(fast(x), y), params, create_graph=True))
            hvp = flat(torch.autograd.grad(torch.sum(grad_ft * v), params))
            return (1.0 + CG_DAMPING) * v + hvp / (LAM + LAM_DAMPING)

        meta_grad += cg_solve(evaluator, valid_grad, CG_STEPS) / len(xs)
        support_grad = flat(torch.autograd.grad(loss(fast(xs[i]), ys[i]), params))
        inner_norms.append(torch.linalg.norm(support_grad + LAM * (flat(params) - w_k)))
    return meta_grad, torch.stack(inner_norms)


def tiny_conv_problem() -> tuple[nn.Module, Callable[..., Any], bool, tuple[Tensor, ...]]:
    """A released conv4 with 3 filters on 8×8 images (where its pad changes the network: 4, 2,
    3, 2, 1), 2 tasks of 3-way 2-shot, float64."""
    torch.manual_seed(0)
    model = Conv4(1, 3, hidden=3, image_size=8, variant="released").double()
    g = torch.Generator().manual_seed(1)
    xs, xq = (torch.rand(2, 6, 1, 8, 8, generator=g, dtype=torch.float64) for _ in range(2))
    ys = torch.arange(3).repeat_interleave(2).expand(2, -1)
    return model, imaml.classification_loss(model), True, (xs, ys, xq, ys.clone())


def tiny_mlp_problem() -> tuple[nn.Module, Callable[..., Any], bool, tuple[Tensor, ...]]:
    """The 25-parameter tanh MLP on 3 sinusoid-like regression tasks, float64."""
    model = make_mlp()
    return model, imaml.regression_loss(model), False, make_regression_batch()


@pytest.mark.parametrize(
    ("problem", "loss"), [(tiny_conv_problem, F.cross_entropy), (tiny_mlp_problem, F.mse_loss)]
)
def test_released_gradient_matches_the_released_loop(problem: Callable, loss: Callable) -> None:
    model, loss_fn, has_aux, (xs, ys, xq, yq) = problem()
    expected, inner_norms = released_reference(model, loss, xs, ys, xq, yq)
    grads, info = released_gradient(
        loss_fn, dict(model.named_parameters()), (xs, ys), (xq, yq), lam=LAM, steps=STEPS,
        lr=LR, cg_damping=CG_DAMPING, lam_damping=LAM_DAMPING, cg_steps=CG_STEPS,
        has_aux=has_aux,
    )  # fmt: skip
    got = flat(grads[k] for k, _ in model.named_parameters())
    assert torch.linalg.norm(got - expected) <= 1e-10 * torch.linalg.norm(expected)
    # The inner diagnostics are of the proximal problem at λ, not of the damped operator.
    torch.testing.assert_close(info["inner_grad_norm"], inner_norms, rtol=1e-10, atol=0)


def test_cg_stops_at_the_released_absolute_residual() -> None:
    # A = 2I + H/12 with eigenvalues in two tight clusters: ‖r‖² falls to 5e-11 after 3 steps,
    # where cg_solve stops; a 4th step would still move x by about 1e-6.
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0)).double())
    eigenvalues = torch.tensor([2, 2.001, 2.002, 3, 3.001, 3.002], dtype=torch.float64)
    a = q @ torch.diag(eigenvalues) @ q.T
    h = (LAM + LAM_DAMPING) * (a - (1 + CG_DAMPING) * torch.eye(6, dtype=torch.float64))
    b = 0.5 * torch.randn(6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def matvec(v: dict[str, Tensor]) -> dict[str, Tensor]:  # implicit_gradient's v + Hv/λ
        return {"v": v["v"] + h @ v["v"] / LAM}

    expected = cg_solve(lambda v: a @ v, b, CG_STEPS)
    released = ReleasedCG(LAM, CG_DAMPING, LAM_DAMPING, CG_STEPS)(matvec, {"v": b}).x["v"]
    torch.testing.assert_close(released, expected, rtol=0, atol=1e-12)
    unstopped = ReleasedCG(LAM, CG_DAMPING, LAM_DAMPING, CG_STEPS, residual_tol=0.0)
    assert (unstopped(matvec, {"v": b}).x["v"] - expected).abs().max() > 1e-7


def test_the_damped_solve_is_half_of_imamls_at_lambda_24() -> None:
    # (1 + d)I + H/(λ + ld) = (1 + d)(I + H/λ') with λ' = (1 + d)(λ + ld), and CG's iterates
    # scale with the operator: the released solve is exact iMAML's CG at λ' = 24, halved.
    model, loss_fn, _, (xs, ys, xq, yq) = tiny_mlp_problem()
    params = dict(model.named_parameters())
    phi = imaml.adapt(loss_fn, params, (xs, ys), lam=LAM, inner=ReleasedGD(STEPS, LR))

    def gradient(solver: Any, lam: float) -> Tensor:
        g, _ = imaml.implicit_gradient(
            loss_fn, params, phi, (xs, ys), (xq, yq), lam=lam, solver=solver
        )
        return flatten(g)[0]

    released = gradient(ReleasedCG(LAM, residual_tol=0.0), LAM)
    scaled = gradient(imaml.CG(CG_STEPS), (1 + CG_DAMPING) * (LAM + LAM_DAMPING))
    torch.testing.assert_close(scaled / (1 + CG_DAMPING), released, rtol=1e-10, atol=1e-14)


def test_released_gd_is_plain_gd_then_one_pull_back_step(linear_tasks: LinearTasks) -> None:
    phi = imaml.adapt(
        linear_loss, linear_tasks.theta, linear_tasks.support, lam=LAM, inner=ReleasedGD(7, 0.05)
    )
    theta = linear_tasks.theta_vec
    for i in range(4):
        phi_k, _ = linear_tasks.gd_path(i, 0.05, 7)
        expected = phi_k - 0.05 * LAM * (phi_k - theta)
        got = torch.cat([phi["w"][i], phi["b"][i].reshape(1)])
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # λ = 0 (test-time adaptation) has no pull-back: plain GD.
    plain = imaml.adapt(linear_loss, linear_tasks.theta, linear_tasks.support, lam=0.0,
                        inner=ReleasedGD(7, 0.05))  # fmt: skip
    gd = imaml.adapt(linear_loss, linear_tasks.theta, linear_tasks.support, lam=0.0,
                     inner=imaml.GD(7, 0.05))  # fmt: skip
    assert all(torch.equal(plain[k], gd[k]) for k in gd)


def test_each_released_piece_can_be_replaced_by_the_exact_one() -> None:
    model, loss_fn, _, (xs, ys, xq, yq) = tiny_mlp_problem()
    params = dict(model.named_parameters())
    tasks = {"support": (xs, ys), "query": (xq, yq)}
    gd, minres, released_cg = imaml.GD(STEPS, LR), imaml.MINRES(5), ReleasedCG(LAM)

    def released(**pieces: Any) -> Tensor:
        g, _ = released_gradient(loss_fn, params, *tasks.values(), lam=LAM, steps=STEPS, lr=LR,
                                 **pieces)  # fmt: skip
        return flatten(g)[0]

    def composed(inner: Any, solver: Any) -> Tensor:
        phi = imaml.adapt(loss_fn, params, (xs, ys), lam=LAM, inner=inner)
        g, _ = imaml.implicit_gradient(loss_fn, params, phi, *tasks.values(), lam=LAM,
                                       solver=solver)  # fmt: skip
        return flatten(g)[0]

    # Both replaced: exact iMAML's meta-gradient.
    exact, _ = imaml.meta_gradient(loss_fn, params, *tasks.values(), lam=LAM, inner=gd,
                                   solver=minres)  # fmt: skip
    torch.testing.assert_close(released(inner=gd, solver=minres), flatten(exact)[0],
                               rtol=1e-12, atol=1e-15)  # fmt: skip
    # One replaced: the other is still the released one, and each differs from both pipelines.
    only_solve = released(inner=gd)  # exact inner loop, released damped CG
    only_inner = released(solver=minres)  # released inner loop, exact solve
    torch.testing.assert_close(only_solve, composed(gd, released_cg), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(only_inner, composed(ReleasedGD(STEPS, LR), minres), rtol=1e-12,
                               atol=1e-15)  # fmt: skip
    for a, b in [(only_solve, released()), (only_inner, released()), (only_solve, only_inner)]:
        assert torch.linalg.norm(a - b) > 1e-3 * torch.linalg.norm(b)


def test_damped_operator_on_a_dense_matrix() -> None:
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    h = m @ m.T
    lam = 0.7
    operator = damped_operator(lambda v: {"v": v["v"] + h @ v["v"] / lam}, lam, 0.5, 3.0)
    dense = torch.stack([operator({"v": e})["v"] for e in torch.eye(6, dtype=torch.float64)]).T
    torch.testing.assert_close(dense, 1.5 * torch.eye(6, dtype=torch.float64) + h / 3.7)


def test_bad_arguments_raise_one_line_errors() -> None:
    with pytest.raises(ValueError, match="cg_steps must be an int >= 2"):
        released_gradient(linear_loss, {"w": torch.zeros(2)}, (), (), lam=2.0, steps=1, lr=0.1,
                          cg_steps=1)  # fmt: skip
    with pytest.raises(ValueError, match="lr must be > 0"):
        ReleasedGD(16, 0.0)
    with pytest.raises(ValueError, match="lam must be a positive"):
        ReleasedCG(0.0)
    with pytest.raises(ValueError, match="lam_damping must be >= 0"):
        ReleasedCG(2.0, lam_damping=-1.0)


# -- the bundled config --------------------------------------------------------------------------


def test_the_bundled_config_is_the_released_readmes_command_line() -> None:
    _, config = load_config("omniglot-5w1s-released")
    assert config.algorithm == "imaml-released"
    assert (config.inner.optimizer, config.inner.steps, config.inner.lr) == ("gd", 16, 0.1)
    assert (config.imaml.lam, config.imaml.solver, config.imaml.solver_iters) == (2.0, "cg", 5)
    assert (config.released.cg_damping, config.released.lam_damping) == (1.0, 10.0)
    data = config.data
    assert (data.ways, data.shots, data.query_shots, data.task_pool) == (5, 1, 1, 200_000)
    assert (data.rotations, data.random_rotation) == (False, True)  # dataset.py's rotations
    assert (data.character_split, data.train_split, config.train.val_every) == (
        "random", "trainval", 0,
    )  # fmt: skip
    assert (config.train.meta_batch, config.train.outer_lr, config.train.meta_steps) == (
        32, 1e-3, 20_000,
    )  # fmt: skip
    assert config.model.name == "conv4-released"
    # measure_accuracy.py --n_steps 16 --lam 0.0 --inner_lr 1e-1: plain GD, no proximal term.
    assert Adaptation.of(config) == Adaptation(imaml.GD(16, 0.1), 0.0, None)
    # "imaml" stays the exact algorithm; the variant is opted into by name.
    assert load_config("omniglot-5w1s")[1].algorithm == "imaml"


@pytest.mark.parametrize(
    ("pieces", "inner", "solver"),
    [
        ([], None, None),  # the released pipeline
        (["released.inner_loop=false", "inner.optimizer=hf"], imaml.HessianFree(2), None),
        (["released.solve=false", "imaml.solver=minres"], None, imaml.MINRES(5)),
    ],
)
def test_the_config_builds_the_released_gradient(
    pieces: list[str], inner: Any, solver: Any
) -> None:
    _, config = load_config("omniglot-5w1s-released", ["model.filters=2", "inner.steps=2", *pieces])
    problem = build_problem(config)
    assert problem.model.features[1][-1].padding == (0, 1, 0, 1)
    g = torch.Generator().manual_seed(0)
    xs, xq = (torch.rand(2, 5, 1, 28, 28, generator=g) for _ in range(2))
    ys = torch.arange(5).expand(2, -1)
    params = dict(problem.model.named_parameters())
    got, _ = make_gradient_fn(config, problem)(params, TaskBatch(xs, ys, xq, ys))
    expected, _ = released_gradient(
        problem.loss_fn, params, (xs, ys), (xq, ys), lam=2.0, steps=2, lr=0.1, has_aux=True,
        inner=inner, solver=solver,
    )  # fmt: skip
    assert all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("inner.optimizer=hf", "needs inner.optimizer 'gd'"),
        ("imaml.solver=minres", "needs imaml.solver 'cg'"),
        ("imaml.solver_iters=1", "imaml.solver_iters >= 2"),
        ("imaml.lam=0", "imaml.lam must be > 0 for algorithm 'imaml-released'"),
        ("released.lam_damping=-1", "released.lam_damping must be >= 0"),
        ("data.task_pool=-5", "data.task_pool must be >= 0"),
        ("model.downsample=pool", "'conv4-released' needs model.downsample 'stride'"),
    ],
)
def test_the_released_configs_bad_values(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("omniglot-5w1s-released", [override])


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def test_the_config_trains_and_evaluates_on_omniglot(
    tmp_path: Path, capsys: Any, omniglot_root: Path, cache_dir: Path
) -> None:
    machine = ["--data-dir", str(omniglot_root), "--cache-dir", str(cache_dir)]
    tiny = ["train.meta_steps=2", "train.meta_batch=2", "inner.steps=2", "train.log_every=1",
            "train.checkpoint_every=2", "eval.inner_steps=2", "eval.batch=2"]  # fmt: skip
    run_dir = tmp_path / "run"
    sets = [arg for item in tiny for arg in ("--set", item)]
    argv = ["train", "omniglot-5w1s-released", "--run-dir", str(run_dir), "-q", *machine, *sets]
    assert main(argv) == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    assert all(0 <= r["query_accuracy"] <= 1 and r["inner_stationarity"] > 0 for r in train)
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--tasks", "4", "--json", *machine]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "test" and result["tasks"] == 4 and 0 <= result["accuracy"] <= 1
