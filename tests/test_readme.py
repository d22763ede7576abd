"""The Python examples of the README and the guide run as written, and the README keeps its
promises: at most 200 lines, every published model in its results table, the manifest's figures."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from imaml import zoo

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GUIDE = ROOT / "docs" / "guide.md"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


def run_block(path: Path, block: str) -> dict:
    namespace: dict = {}
    exec(compile(block, str(path), "exec"), namespace)
    return namespace


def test_the_readme_quickstart_runs_and_learns() -> None:
    (block,) = python_blocks(README)
    namespace = run_block(README, block)
    assert namespace["info"]["solver_residual"].shape == (25,)
    assert namespace["predictions"].shape == (4, 10, 1)
    new = namespace["new"]
    # the meta-learned init adapts better than the untrained one, on the same new tasks
    untrained = namespace["imaml"].IMAML(
        namespace["imaml"].models.MLP(1, 1), torch.nn.functional.mse_loss, lam=10.0,
        inner=namespace["imaml"].Adam(steps=10, lr=0.01), solver=namespace["imaml"].CG(iters=5),
    )  # fmt: skip
    before = torch.nn.functional.mse_loss(untrained.adapt((new.xs, new.ys))(new.xq), new.yq)
    after = torch.nn.functional.mse_loss(namespace["predictions"], new.yq)
    assert after < before


def test_the_guides_functional_example_runs() -> None:
    blocks = python_blocks(GUIDE)
    assert blocks, "the guide has no Python example"
    namespace = run_block(GUIDE, blocks[0])
    assert namespace["info"]["solver_residual"].shape == (8,)
    assert namespace["phi"]["0.weight"].shape == (8, 40, 1)


def test_the_readme_is_a_product_page_with_every_published_model() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    table = [line for line in text.splitlines() if line.startswith("| Omniglot")]
    for entry in zoo.list_models():
        (row,) = [line for line in table if f"`{entry.name}`" in line]
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1:5] == [
            str(entry.ways),
            str(entry.shots),
            entry.algorithm,
            entry.character_split,
        ]
        assert cells[5] == entry.paper
        assert cells[6] == f"{100 * entry.accuracy:.2f} ± {100 * entry.ci95:.2f}"
        assert cells[7] == f"{100 * entry.k_query_accuracy:.2f} ± {100 * entry.k_query_ci95:.2f}"
        assert cells[8] == f"{entry.meta_steps:,} ({entry.config_meta_steps:,})"
    assert len(table) == len(zoo.list_models())
    for word in ("paused", "in progress", "git show"):
        assert word not in text.lower()
