"""The tune procedure on planted optima (no training), resuming an interrupted search, local
worker processes, and one real tiny tune on ptb-tiny whose overlay ``fit`` accepts."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lit_unitscale.tools.search import (
    build_from_recipe,
    load_rows,
    pending,
    run_trials,
    trial_key,
)
from lit_unitscale.tools.tune import (
    HYPERPARAMETERS,
    MULTIPLIERS,
    Search,
    log_grid,
    overlay_text,
    run_search,
)
from lit_unitscale.tools.tune import main as tune_main
from tests.conftest import ROOT

SPAN, LR_SPAN = 2, 3
FIXTURE = [HealthCheck.function_scoped_fixture]  # tmp_path_factory: a new folder per example
DECAYS = [0.0, 1e-4, 2e-4, 4e-4, 8e-4]
DEFAULTS = {**{m: 1.0 for m in MULTIPLIERS}, "weight_decay": 0.0}


def planted_search() -> Search:
    grids = {m: log_grid(1.0, SPAN) for m in MULTIPLIERS}
    grids["weight_decay"] = DECAYS
    return Search({"width": 32, "steps": 10}, dict(DEFAULTS), log_grid(0.5, LR_SPAN), grids)


class Planted:
    """A separable bowl over the search's coordinates (log2 of LR and multipliers, index of
    the decay) whose minimum is ``optimum``; counts its calls."""

    def __init__(self, optimum: dict[str, float]) -> None:
        self.optimum, self.calls = optimum, []

    def coordinate(self, name: str, value: float) -> float:
        return DECAYS.index(value) if name == "weight_decay" else math.log2(value)

    def __call__(self, s: dict) -> dict:
        self.calls.append(s)
        loss = 3.0 + sum(
            (k + 1) * (self.coordinate(n, s[n]) - self.coordinate(n, v)) ** 2
            for k, (n, v) in enumerate(self.optimum.items())
        )
        return {"val_loss": loss}


optima = st.fixed_dictionaries(
    {
        "lr": st.sampled_from(log_grid(0.5, LR_SPAN)),
        **{m: st.sampled_from(log_grid(1.0, SPAN)) for m in MULTIPLIERS},
        "weight_decay": st.sampled_from(DECAYS),
    }
)


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE)
@given(optimum=optima)
def test_the_independent_search_finds_a_planted_optimum(optimum, tmp_path_factory) -> None:
    results = tmp_path_factory.mktemp("tune") / "results.jsonl"
    objective = Planted(optimum)
    result = run_search(planted_search(), objective, results)
    assert result["best_lr"]["lr"] == optimum["lr"]
    assert result["optima"] == {n: optimum[n] for n in HYPERPARAMETERS}
    chosen = result["chosen"]
    assert {n: chosen[n] for n in optimum} == optimum
    assert chosen["val_loss"] == pytest.approx(3.0)
    # 7 LRs, 5 values for each of 6 hyperparameters (each default already ran in the LR sweep),
    # one combination unless it is one of those: no trial is run twice.
    keys = [trial_key(s) for s in objective.calls]
    assert len(keys) == len(set(keys))
    assert len(keys) <= 7 + 6 * 4 + 1


def test_the_better_of_combined_and_best_single_is_kept(tmp_path) -> None:
    # Two multipliers that only help alone: together they are worse than either.
    def interacting(s: dict) -> dict:
        a, b = s["attn_mult"] == 2.0, s["loss_mult"] == 2.0
        loss = 3.0 - 0.1 * a - 0.2 * b + (0.5 if a and b else 0.0) + abs(math.log2(s["lr"]))
        return {"val_loss": loss}

    search = planted_search()
    result = run_search(search, interacting, tmp_path / "results.jsonl")
    assert result["optima"]["attn_mult"] == 2.0 and result["optima"]["loss_mult"] == 2.0
    assert result["chosen_from"] == "single"
    assert result["chosen"]["loss_mult"] == 2.0 and result["chosen"]["attn_mult"] == 1.0


class Interrupted(Exception):
    pass


@settings(max_examples=25, deadline=None, suppress_health_check=FIXTURE)
@given(optimum=optima, stop_after=st.integers(0, 35))
def test_an_interrupted_search_resumes_without_rerunning(optimum, stop_after, tmp_path_factory):
    results = tmp_path_factory.mktemp("tune") / "results.jsonl"
    first = Planted(optimum)

    def stops(s: dict) -> dict:
        if len(first.calls) == stop_after:
            raise Interrupted
        return first(s)

    try:
        run_search(planted_search(), stops, results)
    except Interrupted:
        pass
    assert len(load_rows(results)) == min(stop_after, len(first.calls))
    second = Planted(optimum)
    resumed = run_search(planted_search(), second, results)
    rerun = {trial_key(s) for s in second.calls} & {trial_key(s) for s in first.calls}
    assert not rerun, "a recorded trial ran again"
    fresh = Planted(optimum)
    whole = run_search(planted_search(), fresh, results.with_name("fresh.jsonl"))
    assert len(first.calls) + len(second.calls) == len(fresh.calls)
    assert resumed["chosen"] == whole["chosen"]


def test_a_torn_last_line_is_ignored_and_its_trial_rerun(tmp_path) -> None:
    results = tmp_path / "results.jsonl"
    trials = [{"lr": 1.0, "steps": 2}, {"lr": 2.0, "steps": 2}]
    results.write_text(json.dumps({**trials[0], "val_loss": 1.0}) + '\n{"lr": 2.0, "st')
    assert pending(trials, load_rows(results)) == [trials[1]]


def bowl(s: dict) -> dict:
    """A picklable objective for worker processes."""
    import os

    return {"val_loss": (math.log2(s["lr"]) - 1) ** 2, "pid": os.getpid()}


def test_local_workers_run_each_trial_once_in_other_processes(tmp_path) -> None:
    import os

    trials = [{"lr": lr, "steps": 1} for lr in log_grid(1.0, 2)]
    rows = run_trials(trials, bowl, tmp_path / "r.jsonl", workers=2, threads_per_worker=1)
    assert [r["lr"] for r in rows] == [t["lr"] for t in trials]
    assert all(r["pid"] != os.getpid() for r in rows)
    assert [r["val_loss"] for r in rows] == [bowl(t)["val_loss"] for t in trials]
    assert len(load_rows(tmp_path / "r.jsonl")) == len(trials)


@pytest.mark.slow
def test_tune_on_ptb_tiny_writes_an_overlay_fit_accepts(tmp_path, capsys) -> None:
    recipe = str(ROOT / "recipes" / "decoder" / "ptb-tiny.yaml")
    out = tmp_path / "tune"
    args = [
        "--config",
        recipe,
        "--out",
        str(out),
        "--proxy_width",
        "32",
        "--proxy_steps",
        "3",
        "--lr_span",
        "1",
        "--span",
        "1",
        "--weight_decays",
        "[0.0, 0.001]",
        "--val_batches",
        "1",
    ]
    assert tune_main(args) == 0
    rows = load_rows(out / "results.jsonl")
    # 3 LRs; 2 new values of 5 multipliers, 1 new decay; the combination if new.
    assert 3 + 5 * 2 + 1 <= len(rows) <= 3 + 5 * 2 + 1 + 1
    assert all(math.isfinite(r["val_loss"]) and r["width"] == 32 for r in rows)
    overlay = (out / "tuned.yaml").read_text()
    for name in ("lr", *HYPERPARAMETERS):
        assert f"{name}: " in overlay and "#" in overlay.split(f"{name}: ")[1].splitlines()[0]
    report = (out / "report.md").read_text()
    assert "## 1. Learning rate" in report and "### attn_mult" in report
    assert (out / "report.png").stat().st_size > 20_000
    # Rerunning finds every trial recorded: nothing trains, the same overlay comes out.
    capsys.readouterr()
    assert tune_main(args) == 0
    assert '"val_loss"' not in capsys.readouterr().out  # each trial run prints its row
    assert len(load_rows(out / "results.jsonl")) == len(rows)
    assert (out / "tuned.yaml").read_text() == overlay
    # fit takes the overlay on top of the recipe.
    fit = [
        sys.executable,
        "-m",
        "lit_unitscale",
        "fit",
        "--config",
        recipe,
        "--config",
        str(out / "tuned.yaml"),
        "--trainer.max_steps",
        "1",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.val_check_interval",
        "1",
        "--trainer.default_root_dir",
        str(tmp_path / "fit"),
        "--trainer.logger",
        "false",
        "--trainer.callbacks",
        "[]",
    ]
    done = subprocess.run(fit, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    task, _ = build_from_recipe([recipe, str(out / "tuned.yaml")])
    tuned = yaml.safe_load(overlay)["model"]["init_args"]
    assert task.hparams.lr == tuned["lr"] and task.hparams.weight_decay == tuned["weight_decay"]
    assert {m: getattr(task.config, m) for m in MULTIPLIERS} == tuned["model"]


def test_the_overlay_says_where_each_value_came_from(tmp_path) -> None:
    def interacting(s: dict) -> dict:  # attn_mult 2 and loss_mult 2 help alone, hurt together
        a, b = s["attn_mult"] == 2.0, s["loss_mult"] == 2.0
        decay = 0.1 * (s["weight_decay"] != 4e-4)
        loss = 3.0 - 0.1 * a - 0.2 * b + (0.5 if a and b else 0.0) + abs(math.log2(s["lr"]))
        return {"val_loss": loss + decay}

    search = planted_search()
    result = run_search(search, interacting, tmp_path / "results.jsonl")
    text = overlay_text(search, result, ["recipe.yaml"], target_steps=40, command="tune ...")
    tuned = yaml.safe_load(text)["model"]["init_args"]
    assert tuned["lr"] == 1.0 and tuned["model"]["loss_mult"] == 2.0
    assert tuned["model"]["attn_mult"] == 1.0  # the best single change was loss_mult's
    line = next(x for x in text.splitlines() if x.strip().startswith("attn_mult:"))
    assert "best 2 " in line and "not kept: the combination lost" in line
    assert tuned["weight_decay"] == 0.0
    # Searching only the decay writes no model key (which would replace the model with null),
    # and the per-step decay is rescaled to the target's 40 steps: the same total as 4e-4 x 10.
    only = Search(search.base, search.defaults, search.lrs, {"weight_decay": DECAYS})
    result = run_search(only, interacting, tmp_path / "results.jsonl")
    tuned = yaml.safe_load(overlay_text(only, result, ["r.yaml"], 40, "tune"))["model"]
    assert set(tuned["init_args"]) == {"lr", "weight_decay"}
    assert tuned["init_args"]["weight_decay"] == pytest.approx(4e-4 * 10 / 40)
