"""Published models: the file format, the manifest, `imaml models`, `imaml eval NAME`,
`imaml export` and `imaml.pretrained`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import imaml
from imaml import zoo
from imaml.cli import main
from imaml.config import bundled_configs
from imaml.training import load_trained_model

MODELS = Path(__file__).resolve().parents[1] / "models"


def run(capsys: Any, *argv: Any) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def test_a_model_file_round_trips_params_config_and_step(tmp_path: Path) -> None:
    params = {"w": torch.randn(3, 2, dtype=torch.float64), "b": torch.randn(2)}
    digest = zoo.save_model(tmp_path / "m.safetensors", params, '{"a": 1}', 7)
    assert digest == zoo.sha256(tmp_path / "m.safetensors")
    model = zoo.read_model(tmp_path / "m.safetensors")
    assert model.config == '{"a": 1}' and model.step == 7
    assert model.params.keys() == params.keys()
    assert all(
        torch.equal(model.params[k], v) and model.params[k].dtype == v.dtype
        for k, v in params.items()
    )


def test_files_that_are_not_model_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    torch.save({"x": torch.ones(1)}, tmp_path / "pickle.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.ones(1)}, tmp_path / "foreign.safetensors")
    for name in ("junk", "pickle"):
        with pytest.raises(zoo.ModelError, match="not a readable safetensors file"):
            zoo.read_model(tmp_path / f"{name}.safetensors")
    with pytest.raises(zoo.ModelError, match="not an imaml model file"):
        zoo.read_model(tmp_path / "foreign.safetensors")
    with pytest.raises(zoo.ModelError, match="no model file"):
        zoo.read_model(tmp_path / "missing.safetensors")


def test_every_published_model_is_intact_and_fits_its_config() -> None:
    entries = zoo.list_models(MODELS)
    assert len(entries) >= 6 and len({e.name for e in entries}) == len(entries)
    files = {p.name for p in MODELS.glob("*.safetensors")}
    assert files == {e.file for e in entries}, "every model file has an entry, and no more"
    for entry in entries:
        path = zoo.model_path(entry.name, MODELS)  # checks the sha256
        trained = load_trained_model(path)  # checks the parameters fit the config's model
        config = trained.config
        assert trained.step == entry.meta_steps <= entry.config_meta_steps
        assert (config.data.dataset, config.data.ways, config.data.shots) == (
            entry.dataset, entry.ways, entry.shots,
        )  # fmt: skip
        assert config.data.character_split == entry.character_split
        algorithm = {  # the manifest's label: (config.algorithm, config.inner.optimizer)
            "iMAML-GD": ("imaml", "gd"), "iMAML-HF": ("imaml", "hf"), "MAML": ("maml", "gd"),
            "first-order MAML": ("fomaml", "gd"), "iMAML (released code)": ("imaml-released", "gd"),
        }  # fmt: skip
        assert (config.algorithm, config.inner.optimizer) == algorithm[entry.algorithm]
        assert 0.5 < entry.accuracy < 1 and 0 < entry.ci95 < 0.02 and entry.tasks == 600
        assert 0.5 < entry.k_query_accuracy < 1 and 0 < entry.k_query_ci95 < 0.03
        assert entry.config in bundled_configs()
        assert "imaml export runs/R/" in entry.train and entry.file in entry.train


def test_imaml_models_lists_them(capsys: Any) -> None:
    code, out, err = run(capsys, "models")
    assert code == 0, err
    for entry in zoo.list_models(MODELS):
        assert entry.name in out
    assert "omniglot 5-way 1-shot, iMAML-GD, vinyals split: 97.39 ± 0.29 %" in out
    code, out, _ = run(capsys, "models", "--json")
    assert [json.loads(line)["name"] for line in out.splitlines()] == [
        e.name for e in zoo.list_models(MODELS)
    ]


def test_eval_by_name_reproduces_the_published_figure(
    capsys: Any, omniglot_root: Path, cache_dir: Path
) -> None:
    """The cheapest published model (MAML, 3 test-time steps) on all 600 test tasks, with 15
    query images per class in one batch and in the papers' batches of 1 per class."""
    entry = zoo.find_model("omniglot-5w1s-maml", MODELS)
    machine = ["--data-dir", omniglot_root, "--cache-dir", cache_dir]
    code, out, err = run(capsys, "eval", entry.name, "--json", *machine)
    assert code == 0, err
    result = json.loads(out)
    assert result["tasks"] == 600 and result["step"] == entry.meta_steps
    assert result["accuracy"] == pytest.approx(entry.accuracy, abs=2e-5)
    assert result["ci95"] == pytest.approx(entry.ci95, abs=2e-5)
    code, out, err = run(
        capsys, "eval", entry.name, "--json", *machine, "--set", "eval.query_batch_shots=1"
    )
    assert code == 0, err
    result = json.loads(out)  # the papers' protocol: batches of 1 query image per class
    assert result["accuracy"] == pytest.approx(entry.k_query_accuracy, abs=2e-5)
    assert result["ci95"] == pytest.approx(entry.k_query_ci95, abs=2e-5)


def test_pretrained_adapts_as_eval_does(capsys: Any, omniglot_root: Path, cache_dir: Path) -> None:
    """`imaml.pretrained(NAME).learner` scores the same test tasks as `imaml eval NAME`."""
    from imaml.training import DataSource, build_sampler

    net = imaml.pretrained("omniglot-5w1s-imaml")
    assert net.step == 10_000 and net.config.algorithm == "imaml"
    assert isinstance(net.learner, imaml.IMAML) and net.learner.lam == net.config.imaml.lam
    sampler = build_sampler(net.config, "test", DataSource(omniglot_root, cache_dir), seed=0)
    tasks = sampler.sample_tasks(range(6))
    adapted = net.learner.adapt((tasks.xs, tasks.ys))
    accuracy = (adapted(tasks.xq).argmax(-1) == tasks.yq).double().mean().item()

    machine = ["--data-dir", omniglot_root, "--cache-dir", cache_dir]
    code, out, err = run(capsys, "eval", "omniglot-5w1s-imaml", "--tasks", "6", "--json", *machine)
    assert code == 0, err
    assert accuracy == pytest.approx(json.loads(out)["accuracy"], abs=1e-6)


def test_an_altered_model_file_is_a_one_line_error(
    tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(MODELS, tmp_path / "models")
    target = tmp_path / "models" / "omniglot-5w1s-maml.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    monkeypatch.setenv("IMAML_MODELS", str(tmp_path / "models"))
    code, _, err = run(capsys, "eval", "omniglot-5w1s-maml")
    assert code == 1
    assert err.startswith("imaml: error: model 'omniglot-5w1s-maml':") and "sha256" in err
    assert len(err.strip().splitlines()) == 1

    code, _, err = run(capsys, "eval", "no-such-model")
    assert code == 1
    assert "no file or run directory no-such-model, and no published model named" in err
    assert "omniglot-5w1s-imaml" in err

    monkeypatch.setenv("IMAML_MODELS", str(tmp_path / "empty"))
    code, _, err = run(capsys, "models")
    assert code == 1 and "set IMAML_MODELS" in err


def test_export_writes_a_model_file_that_evaluates_as_its_checkpoint(
    tmp_path: Path, capsys: Any
) -> None:
    sets = ["--set", "train.meta_steps=3", "--set", "train.meta_batch=4", "--set", "eval.tasks=8"]
    code, _, err = run(capsys, "train", "--run-dir", tmp_path / "run", "-q", *sets)
    assert code == 0, err
    ckpt = tmp_path / "run" / "checkpoint.pt"
    code, out, err = run(capsys, "export", ckpt, tmp_path / "sinusoid.safetensors")
    assert code == 0, err
    assert zoo.sha256(tmp_path / "sinusoid.safetensors") in out
    results = []
    for path in (ckpt, tmp_path / "sinusoid.safetensors"):
        code, out, err = run(capsys, "eval", path, "--json")
        assert code == 0, err
        results.append({k: v for k, v in json.loads(out).items() if k != "checkpoint"})
    assert results[0] == results[1]

    code, _, err = run(capsys, "export", tmp_path / "run", tmp_path / "model.pt")
    assert code == 1 and "must end in .safetensors" in err
