"""What a config builds: samplers of the right split and data sets found where --data-dir says."""

from __future__ import annotations

from pathlib import Path

import torch

from imaml.config import load_config
from imaml.data.omniglot import random_split_ids
from imaml.training import DataSource, build_sampler
from training.helpers import SOURCE, tiny


def test_the_configs_character_split_picks_omniglots_characters(
    tmp_path: Path, omniglot_root: Path
) -> None:
    source = DataSource(omniglot_root, cache_dir=tmp_path)
    split = ["data.character_split=random", "data.character_seed=3"]
    config = load_config("omniglot-5w1s", split)[1]
    test = build_sampler(config, "test", source, seed=0).dataset
    assert test.character_split == "random"
    assert test.character_ids.tolist() == random_split_ids("test", seed=3).tolist()
    vinyals = build_sampler(load_config("omniglot-5w1s")[1], "test", source, seed=0).dataset
    assert vinyals.character_split == "vinyals" and vinyals.character_ids.min() == 1201


def test_the_released_config_turns_the_classes_of_unrotated_characters(
    tmp_path: Path, omniglot_root: Path
) -> None:
    config = load_config("omniglot-5w1s-released")[1]
    sampler = build_sampler(config, "trainval", DataSource(omniglot_root, cache_dir=tmp_path), 0)
    assert sampler.random_rotation and sampler.pool == 200_000
    assert sampler.dataset.num_classes == 1200 and not sampler.dataset.rotations
    assert sampler.sample(32).xs.shape == (32, 5, 1, 28, 28)
    assert set(sampler.quarter_turns(range(32)).ravel().tolist()) == {0, 1, 2, 3}


def test_held_out_sinusoid_tasks_differ_from_training_tasks() -> None:
    config = tiny()
    train_tasks = build_sampler(config, "train", SOURCE, seed=0).sample_tasks(range(4))
    for split in ("val", "test"):
        held_out = build_sampler(config, split, SOURCE, seed=0).sample_tasks(range(4))
        assert not torch.equal(train_tasks.xs, held_out.xs)


# -- --data-dir: the folder holding the data sets, or a data set's own folder ---------------------


def test_a_data_source_takes_paths_as_strings(tmp_path: Path) -> None:
    source = DataSource(str(tmp_path), cache_dir=str(tmp_path / "cache"))
    assert source == DataSource(tmp_path, tmp_path / "cache")
    assert source.dataset_root("omniglot") == tmp_path / "omniglot"


def test_data_dir_may_be_the_data_sets_own_folder(tmp_path: Path) -> None:
    (tmp_path / "omniglot").mkdir()
    assert DataSource(tmp_path).dataset_root("omniglot") == tmp_path / "omniglot"
    assert DataSource(tmp_path / "omniglot").dataset_root("omniglot") == tmp_path / "omniglot"
    assert DataSource(tmp_path / "Omniglot").dataset_root("omniglot") == tmp_path / "Omniglot"
    assert DataSource(tmp_path / "elsewhere").dataset_root("miniimagenet") == (
        tmp_path / "elsewhere" / "miniimagenet"
    )  # not there: the error names the folder it looked in
    nested = tmp_path / "omniglot" / "omniglot"
    nested.mkdir()  # a folder named omniglot that holds omniglot/: the one inside
    assert DataSource(tmp_path / "omniglot").dataset_root("omniglot") == nested
    home = DataSource(Path("~/no-such-folder")).dataset_root("omniglot")
    assert home == Path.home() / "no-such-folder" / "omniglot"


def test_omniglot_loads_from_either_folder(tmp_path: Path, omniglot_root: Path) -> None:
    config = load_config("omniglot-5w1s", ["data.rotations=false"])[1]
    datasets = [
        build_sampler(config, "val", DataSource(root, cache_dir=tmp_path), seed=0).dataset
        for root in (omniglot_root, omniglot_root / "omniglot")
    ]
    assert datasets[0].character_ids.tolist() == datasets[1].character_ids.tolist()
    assert (datasets[0].images == datasets[1].images).all()


def test_build_learner_follows_the_config_and_adapts_as_evaluation_does() -> None:
    import pytest

    import imaml
    from imaml.config import ConfigError
    from imaml.training import build_learner, build_problem
    from imaml.training.builders import build_inner

    for algorithm, cls in [
        ("imaml", imaml.IMAML),
        ("maml", imaml.MAML),
        ("reptile", imaml.Reptile),
    ]:
        config = tiny(f"algorithm={algorithm}", "eval.inner_steps=3")
        learner = build_learner(config, build_problem(config).model)
        assert type(learner) is cls and learner.inner == build_inner(config.inner, 3)
    fomaml = tiny("algorithm=fomaml")
    assert build_learner(fomaml, build_problem(fomaml).model).first_order
    assert build_learner(tiny(), build_problem(tiny()).model).lam == tiny().imaml.lam
    released = load_config("omniglot-5w1s-released")[1]
    with pytest.raises(ConfigError, match="no model-level learner for algorithm 'imaml-released'"):
        build_learner(released, torch.nn.Linear(1, 1))
