"""The sweep tool on a tiny grid, and its analysis functions on hand-made results."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lit_unitscale.tools.short_run import short_trainer
from lit_unitscale.tools.sweep import (
    best_lrs,
    compute_frontier,
    fit_power_law,
    main,
    scaling_fit,
    transfer_shift,
)
from tests.conftest import ROOT


def test_power_law_fit_recovers_a_known_exponent() -> None:
    x = [1e5, 3e5, 1e6, 3e6, 1e7]
    y = [4.0 * v**-0.076 for v in x]
    fit = fit_power_law(x, y)
    assert fit["alpha"] == pytest.approx(0.076, rel=1e-6)
    assert fit["a"] == pytest.approx(4.0, rel=1e-6)
    assert fit["r2"] == pytest.approx(1.0, abs=1e-9)


def _rows(best_lr_per_width: dict[int, float], p: str = "umup") -> list[dict]:
    rows = []
    for w, best in best_lr_per_width.items():
        for lr in (0.01, 0.03, 0.1, 0.3):
            loss = 3.0 + abs(math.log(lr / best)) - 0.1 * math.log(w)
            rows.append(
                {
                    "parametrization": p,
                    "width": w,
                    "lr": lr,
                    "steps": 10,
                    "val_loss": loss,
                    "params": w * 1000,
                    "non_embedding_params": w * 100,
                }
            )
    return rows


def test_best_lr_and_transfer_shift() -> None:
    stable = _rows({64: 0.1, 128: 0.1, 256: 0.1})
    moving = _rows({64: 0.3, 128: 0.1, 256: 0.01}, "sp")
    assert best_lrs(stable)[("umup", 256)]["lr"] == 0.1
    assert transfer_shift(stable, "umup") == 0
    assert transfer_shift(moving, "sp") == -3
    fit = scaling_fit(stable, "umup", tokens_per_step=512)
    assert [p["width"] for p in fit["points"]] == [64, 128, 256]
    assert fit["vs_params"]["alpha"] > 0


def test_compute_frontier_keeps_the_cheapest_best_points() -> None:
    # Two widths, 100 tokens per step: the small one (params 10) is best early, the large one
    # (params 40) overtakes it; points beaten by a cheaper one are dropped.
    rows = [
        {"width": 16, "params": 10, "curve": [[0, 9.0], [10, 5.0], [20, 4.0], [40, 3.8]]},
        {"width": 64, "params": 40, "curve": [[10, 4.5], [20, 3.5], [40, 3.0]]},
    ]
    frontier = compute_frontier(rows, tokens_per_step=100)
    got = [(p["width"], p["step"], p["flops"], p["val_loss"]) for p in frontier]
    # 6*params*step*100: small 6e4/1.2e5/2.4e5, large 2.4e5/4.8e5/9.6e5 FLOPs.
    assert got == [
        (16, 10, 60_000, 5.0),
        (16, 20, 120_000, 4.0),
        (16, 40, 240_000, 3.8),
        (64, 20, 480_000, 3.5),
        (64, 40, 960_000, 3.0),
    ]
    # Ties in compute: the large model's step 10 (2.4e5, loss 4.5) loses to the small one's 3.8.
    assert (64, 10) not in {(w, s) for w, s, _, _ in got}


@pytest.mark.slow
def test_sweep_cli_on_a_tiny_grid(tmp_path) -> None:
    recipe = str(ROOT / "tests" / "fixtures" / "recipes" / "decoder-tiny.yaml")
    out = tmp_path / "sweep"
    args = [
        "--config",
        recipe,
        "--widths",
        "16",
        "32",
        "--lrs",
        "0.01",
        "0.1",
        "--steps",
        "3",
        "--val-batches",
        "1",
        "--sp-lrs",
        "0.001",
        "--parametrizations",
        "umup",
        "sp",
        "--out",
        str(out),
        "--fit",
        "--val-every",
        "2",
    ]
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    grid = {(r["parametrization"], r["width"], r["lr"]) for r in rows}
    # SP runs on its own LR grid, u-μP on --lrs.
    assert grid == {
        ("umup", 16, 0.01),
        ("umup", 16, 0.1),
        ("umup", 32, 0.01),
        ("umup", 32, 0.1),
        ("sp", 16, 0.001),
        ("sp", 32, 0.001),
    }
    assert all(math.isfinite(r["val_loss"]) and r["val_loss"] > 0 for r in rows)
    assert rows[0]["params"] < rows[3]["params"]
    assert (out / "lr_sweep.png").stat().st_size > 10_000
    table = (out / "table.md").read_text()
    assert "| umup | 32 |" in table and "| sp | 32 |" in table
    assert "| parametrization | width | lr 0.001 |\n" in table  # SP's table has SP's grid only
    summary = json.loads((out / "summary.json").read_text())
    assert "vs_params" in summary["umup"]["scaling"]
    # Curves: step 2 from the periodic validation, step 3 (the end) evaluated after fit.
    assert all([p[0] for p in r["curve"]] == [2, 3] for r in rows)
    assert all(r["curve"][-1][1] == pytest.approx(r["val_loss"], abs=1e-4) for r in rows)
    assert summary["umup"]["scaling"]["frontier"]
    assert (out / "scaling-umup.png").stat().st_size > 10_000
    # Rerunning skips finished points (resumable sweeps).
    assert main(args) == 0
    assert len((out / "results.jsonl").read_text().splitlines()) == 6


def test_short_runs_never_write_to_the_working_directory(tmp_path) -> None:
    # An MLM task copies its tokenizer into default_root_dir; a tool's short run must not put
    # it (or anything) into the directory the user ran the tool from.
    assert Path(short_trainer(1).default_root_dir).resolve() != Path.cwd().resolve()
    assert Path(short_trainer(1, root=tmp_path).default_root_dir) == tmp_path
