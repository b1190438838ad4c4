"""Trials of a hyperparameter search, shared by ``sweep`` and ``tune``.

A trial is a JSON mapping of settings — ``width``, ``steps`` and any field of the task
(``lr``, ``weight_decay``, ``warmup_steps``) or of its ``TransformerConfig`` (``attn_mult``,
``parametrization``) — applied to a recipe and trained through the same task, data module and
``Trainer.fit`` as a user's run. Each finished trial is one line of a results JSONL, written
as soon as it ends, so a search that is interrupted resumes: a trial whose settings are
already recorded is not run again. Trials run in this process, in parallel local processes,
or as a SLURM job array whose tasks append to the same file (``fcntl`` locks keep the lines
whole on a shared filesystem).
"""

from __future__ import annotations

import dataclasses
import fcntl
import importlib
import json
import logging
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from lit_unitscale.errors import LitUnitscaleError

Settings = dict[str, Any]
Objective = Callable[[Settings], dict]
"""A trial function: settings in, a result row (at least ``val_loss``) out."""


class SearchError(LitUnitscaleError):
    """A search that cannot go on (trials that failed, a job array that did not finish)."""

    exit_code = 1


# -- results bookkeeping --------------------------------------------------------------------
def trial_key(settings: Settings, fields: Iterable[str] | None = None) -> str:
    """The canonical text of a trial's settings: two trials with the same key are the same run.

    Args:
        settings: the trial's settings (or a result row, which carries them).
        fields: the settings that identify a trial (default: all of ``settings``).
    """
    names = sorted(settings if fields is None else fields)
    return json.dumps({k: _canonical(settings.get(k)) for k in names}, sort_keys=True)


def _canonical(value: Any) -> Any:
    # 0.1 * 3 and 0.3 are the same grid point: compare floats to 10 significant digits.
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.10g}")
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    return value


def load_rows(path: Path) -> list[dict]:
    """Rows of a results JSONL (empty when the file does not exist; a torn last line from a
    killed writer is ignored).

    Args:
        path: the JSONL file.
    """
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def append_row(path: Path, row: dict) -> None:
    """Append one result line under an exclusive lock (several processes write one file).

    Args:
        path: the JSONL file.
        row: the result.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.write(json.dumps(row) + "\n")
            f.flush()
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def pending(trials: list[Settings], rows: list[dict], fields: Iterable[str] | None = None):
    """The trials not yet recorded in ``rows``, each once, in order.

    Args:
        trials: the trials wanted.
        rows: results recorded so far.
        fields: the settings that identify a trial (default: each trial's own keys).
    """
    fields = list(fields) if fields is not None else None
    done: dict[tuple[str, ...], set[str]] = {}  # recorded keys, per set of identifying fields
    todo, seen = [], set()
    for t in trials:
        names = tuple(sorted(fields or t))
        if names not in done:
            done[names] = {trial_key(r, names) for r in rows}
        k = trial_key(t, names)
        if k not in done[names] and k not in seen:
            seen.add(k)
            todo.append(t)
    return todo


def find(rows: list[dict], settings: Settings) -> dict | None:
    """The recorded row of ``settings`` (the last one if recorded twice), or None.

    Args:
        rows: results.
        settings: a trial's settings.
    """
    key = trial_key(settings)
    found = None
    for r in rows:
        if trial_key(r, settings) == key:
            found = r
    return found


# -- one trial through the recipe's fit path --------------------------------------------------
def build_from_recipe(configs: list[str], overrides: list[str] = ()) -> tuple[Any, Any]:
    """The task and datamodule a recipe describes (nothing is trained).

    Args:
        configs: recipe YAML files, merged in order.
        overrides: extra ``--key value`` arguments for the CLI.
    """
    from lit_unitscale.tools.coord_check import build_from_recipe as build

    return build(list(configs), list(overrides))


def apply_settings(task: Any, settings: Settings) -> Any:
    """A fresh copy of ``task`` with ``settings`` applied: ``width`` sets ``d_model`` (head
    width kept, so heads grow with width), ``TransformerConfig`` fields go to the model, the
    task's own arguments to the task; ``steps`` and ``seed`` are the Trainer's.

    Args:
        task: the recipe's task.
        settings: the trial's settings.
    """
    config = task.config
    names = {f.name for f in dataclasses.fields(config)}
    model, hparams = {}, {}
    for k, v in settings.items():
        if k in ("steps", "seed"):
            continue
        if k == "width":
            model.update(d_model=v, n_heads=max(1, v // config.d_head))
        elif k in names:
            model[k] = v
        else:
            hparams[k] = v
    return task.untrained_copy(model=dataclasses.replace(config, **model), **hparams)


def train_point(
    task: Any,
    datamodule: Any,
    steps: int,
    val_batches: int,
    seed: int,
    val_every: int = 0,
    root: Path | None = None,
    gradient_clip_val: float | None = None,
) -> dict:
    """Train ``task`` for ``steps`` optimizer steps and return its final validation loss (and,
    with ``val_every``, the validation curve).

    Args:
        task: a UnitScaledTask (a fresh copy per run).
        datamodule: the recipe's datamodule.
        steps: optimizer steps.
        val_batches: validation batches per evaluation.
        seed: seed of the initialisation and data order.
        val_every: also evaluate every this many steps (0: only at the end).
        root: the run directory (default: a temporary one).
        gradient_clip_val: the recipe's clipping threshold, read by the task's clipping rule
            (None: no clipping).
    """
    import lightning as L

    from lit_unitscale.tools.short_run import short_trainer

    class Curve(L.Callback):
        def __init__(self) -> None:
            self.points: list[list[float]] = []

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            loss = trainer.callback_metrics.get("val/loss")
            if loss is not None and not trainer.sanity_checking:
                self.points.append([trainer.global_step, round(float(loss), 5)])

    L.seed_everything(seed, verbose=False)
    curve = Curve()
    extra = {"val_check_interval": val_every} if val_every else {}
    trainer = short_trainer(
        steps,
        [curve],
        val_batches=val_batches,
        root=root,
        gradient_clip_val=gradient_clip_val,
        **extra,
    )
    start = time.perf_counter()
    trainer.fit(task, datamodule=datamodule)
    seconds = time.perf_counter() - start
    if curve.points and curve.points[-1][0] != trainer.global_step:
        trainer.validate(task, datamodule=datamodule, verbose=False)  # the end point
    loss = float(trainer.callback_metrics.get("val/loss", float("nan")))
    params = sum(p.numel() for p in task.model.parameters())
    embed = sum(p.numel() for n, p in task.model.named_parameters() if "embed" in n or "head" in n)
    row = {
        "val_loss": loss,
        "params": params,
        "non_embedding_params": params - embed,
        "seconds": round(seconds, 2),
    }
    if val_every:
        row["curve"] = curve.points
    return row


_RECIPES: dict[str, tuple[Any, Any]] = {}  # recipes this process has built, by their files


@dataclasses.dataclass
class RecipeObjective:
    """Trials of one recipe: each builds a fresh task from it with the trial's settings and
    trains it through ``Trainer.fit``. The recipe is loaded once per process, on first use,
    so an instance can be sent to worker processes and SLURM tasks."""

    configs: list[str]
    """Recipe YAML files, merged in order."""
    overrides: list[str] = dataclasses.field(default_factory=list)
    """Extra ``--key value`` arguments for the recipe."""
    val_batches: int = 20
    """Validation batches per evaluation."""
    seed: int = 0
    """Seed of every trial (a trial's own ``seed`` setting wins)."""
    val_every: int = 0
    """Also record a validation curve every this many steps (0: final loss only)."""
    gradient_clip_val: float | None = None
    """Clipping threshold of every trial (the recipe's ``trainer.gradient_clip_val``)."""
    scratch: str | None = None
    """Directory for what a run writes (an MLM task's tokenizer copy); default: temporary."""

    def __post_init__(self) -> None:
        self._built: tuple[Any, Any] | None = None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_built"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _built=None)

    @classmethod
    def of(cls, task: Any, datamodule: Any, **kwargs: Any) -> RecipeObjective:
        """An objective over an already built task and datamodule (worker processes and SLURM
        tasks rebuild them from ``configs``).

        Args:
            task: the recipe's task.
            datamodule: the recipe's datamodule.
            kwargs: the other fields.
        """
        objective = cls(**kwargs)
        objective._built = (task, datamodule)
        return objective

    def recipe(self) -> tuple[Any, Any]:
        """The recipe's task and datamodule (built once per process: a worker receives a new
        copy of the objective with every trial)."""
        if self._built is None:
            key = json.dumps([self.configs, self.overrides])
            if key not in _RECIPES:
                _RECIPES[key] = build_from_recipe(self.configs, self.overrides)
            self._built = _RECIPES[key]
        return self._built

    def __call__(self, settings: Settings) -> dict:
        task, datamodule = self.recipe()
        logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
        copy = apply_settings(task, settings)
        root = Path(self.scratch) if self.scratch else None
        return train_point(
            copy,
            datamodule,
            int(settings["steps"]),
            self.val_batches,
            int(settings.get("seed", self.seed)),
            self.val_every,
            root,
            self.gradient_clip_val,
        )


def recipe_clip(configs: list[str]) -> float | None:
    """The recipe's ``trainer.gradient_clip_val`` after merging (None: unset).

    Args:
        configs: recipe YAML files, merged in order.
    """
    from lit_unitscale.tools.slurm import resolved_recipe

    return resolved_recipe(list(configs)).get("trainer", {}).get("gradient_clip_val")


# -- executors --------------------------------------------------------------------------------
def _init_worker(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)


def _run_one(objective: Objective, settings: Settings) -> dict:
    return {**settings, **objective(settings)}


def run_trials(
    trials: list[Settings],
    objective: Objective,
    results: Path,
    workers: int = 1,
    threads_per_worker: int | None = None,
    executor: str = "local",
    slurm: SlurmArray | None = None,
    fields: Iterable[str] | None = None,
    echo: bool = True,
) -> list[dict]:
    """Run every trial not yet in ``results``; return the rows of all ``trials``.

    Args:
        trials: the settings of each trial.
        objective: the trial function (a :class:`RecipeObjective` for SLURM).
        results: the JSONL the rows are appended to, one per finished trial.
        workers: local processes running trials at once (1: in this process).
        threads_per_worker: torch threads of each local worker (default: torch's).
        executor: ``local`` or ``slurm`` (a job array, one task per trial).
        slurm: the job array's settings (``executor: slurm``).
        fields: the settings that identify a trial (default: all of each trial's).
        echo: print each finished row.
    """
    todo = pending(trials, load_rows(results), fields)
    if todo and executor == "slurm":
        (slurm or SlurmArray()).run(todo, objective, results)
    elif todo and workers <= 1:
        for settings in todo:
            row = _run_one(objective, settings)
            append_row(results, row)
            if echo:
                print(json.dumps(row), flush=True)
    elif todo:
        context = get_context("spawn")  # a fresh interpreter: no inherited torch threads
        with ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_worker, initargs=(threads_per_worker,)
        ) as pool:
            running = {pool.submit(_run_one, objective, s) for s in todo}
            while running:
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    row = future.result()
                    append_row(results, row)
                    if echo:
                        print(json.dumps(row), flush=True)
    rows = load_rows(results)
    out, missing = [], []
    for t in trials:
        key = trial_key(t, fields)
        row = next((r for r in reversed(rows) if trial_key(r, fields or t) == key), None)
        (out if row is not None else missing).append(row if row is not None else t)
    if missing:
        raise SearchError(
            f"{len(missing)} trial(s) left no result in {results}, first: {json.dumps(missing[0])}"
        )
    return out


# -- SLURM job arrays ---------------------------------------------------------------------------
ARRAY_SCRIPT = """#!/bin/bash
# A search's trials as a SLURM job array, written by lit_unitscale (tools/search.py): task
# $$SLURM_ARRAY_TASK_ID runs trial number $$SLURM_ARRAY_TASK_ID of {trials} and appends its
# result line to {results}.
#SBATCH --job-name={job_name}
#SBATCH --array=0-{last}{throttle}
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task={cpus}
#SBATCH --time={time}
#SBATCH --chdir={workdir}
#SBATCH --output={logs}/%x-%A_%a.out
#SBATCH --error={logs}/%x-%A_%a.err
{optional}
set -euo pipefail
{venv}
export PYTHONUNBUFFERED=1
# One compute thread per allocated core (as the training template does).
export OMP_NUM_THREADS=$${{SLURM_CPUS_PER_TASK:-1}}
python -m lit_unitscale.tools.search --trials {trials_q} --index "$$SLURM_ARRAY_TASK_ID"
"""


@dataclasses.dataclass
class SlurmArray:
    """How a search's trials are submitted as a SLURM job array and waited for."""

    partition: str | None = None
    """SLURM partition (default: the cluster's)."""
    account: str | None = None
    """SLURM account (default: the user's)."""
    time: str = "01:00:00"
    """Time limit of each trial."""
    cpus_per_task: int = 1
    """Cores of each trial; also its torch threads."""
    max_parallel: int | None = None
    """Trials running at once (``--array=...%N``; default: no limit)."""
    poll_s: float = 2.0
    """Seconds between checks of the array's state."""
    timeout_s: float | None = None
    """Give up waiting after this many seconds (default: never)."""

    def script(self, trials: Path, results: Path, count: int, job_name: str) -> str:
        """The sbatch script of ``count`` trials listed in ``trials``.

        Args:
            trials: the JSON file of the objective and the trials' settings.
            results: the results JSONL (named in the script's comment).
            count: number of trials.
            job_name: the array's name.
        """
        from lit_unitscale.tools.slurm import _default_venv, check_printable

        optional = []
        if self.partition:
            optional.append(f"#SBATCH --partition={check_printable('--partition', self.partition)}")
        if self.account:
            optional.append(f"#SBATCH --account={check_printable('--account', self.account)}")
        venv = _default_venv()
        activate = f". {shlex.quote(str(venv / 'bin' / 'activate'))}" if venv else ""
        logs = trials.parent / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        return ARRAY_SCRIPT.format(
            trials=trials,
            trials_q=shlex.quote(str(trials)),
            results=results,
            job_name=job_name,
            last=count - 1,
            throttle=f"%{self.max_parallel}" if self.max_parallel else "",
            cpus=self.cpus_per_task,
            time=check_printable("--time", self.time),
            workdir=Path.cwd(),
            logs=logs,
            optional="\n".join(optional),
            venv=activate,
        ).replace("$$", "$")

    def run(self, todo: list[Settings], objective: Objective, results: Path) -> None:
        """Submit one array task per trial in ``todo`` and wait until the array has ended.

        Args:
            todo: the trials to run.
            objective: the trial function, a dataclass importable by the array's tasks.
            results: the results JSONL every task appends to.
        """
        from lit_unitscale.tools.slurm import submit

        if not dataclasses.is_dataclass(objective):
            raise SearchError("a SLURM search needs a recipe objective (RecipeObjective)")
        results = results.resolve()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        folder = results.parent / "slurm"
        folder.mkdir(parents=True, exist_ok=True)
        trials = folder / f"trials-{stamp}-{os.getpid()}.json"
        spec = {
            "objective": f"{type(objective).__module__}:{type(objective).__qualname__}",
            "kwargs": dataclasses.asdict(objective),
            "results": str(results),
            "trials": todo,
        }
        trials.write_text(json.dumps(spec, indent=1))
        name = f"tune-{results.parent.name}"[:64]
        script = trials.with_suffix(".sbatch")
        script.write_text(self.script(trials, results, len(todo), name))
        job = submit(script)
        print(f"submitted job array {job}: {len(todo)} trial(s), logs in {folder / 'logs'}")
        self.wait(job)

    def wait(self, job: str) -> None:
        """Poll ``squeue`` until no task of array ``job`` is pending or running.

        Args:
            job: the array's job id.
        """
        start = time.monotonic()
        while True:
            out = subprocess.run(
                ["squeue", "-h", "-j", job, "-o", "%i %T"], capture_output=True, text=True
            )
            if out.returncode == 0 and not out.stdout.strip():
                return
            if self.timeout_s is not None and time.monotonic() - start > self.timeout_s:
                subprocess.run(["scancel", job], check=False)
                raise SearchError(f"job array {job} not finished after {self.timeout_s:.0f} s")
            time.sleep(self.poll_s)


def run_array_task(trials: Path, index: int) -> dict:
    """Run trial ``index`` of a job array's trials file and append its row (a SLURM task).

    Args:
        trials: the JSON file written by :meth:`SlurmArray.run`.
        index: the array task id.
    """
    spec = json.loads(Path(trials).read_text())
    module, name = spec["objective"].split(":")
    objective = getattr(importlib.import_module(module), name)(**spec["kwargs"])
    _init_worker(None)
    row = _run_one(objective, spec["trials"][index])
    append_row(Path(spec["results"]), row)
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    """One array task: ``python -m lit_unitscale.tools.search --trials FILE --index N``.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).
    """
    from lit_unitscale.tools.arguments import documented, parse_arguments, tool_parser

    docs = documented(run_array_task)
    parser = tool_parser(
        "search",
        "Run one trial of a job array written by tune's SLURM executor.",
        prog="python -m lit_unitscale.tools.search",
    )
    parser.add_argument("--trials", type=Path, required=True, help=docs["trials"])
    parser.add_argument("--index", type=int, required=True, help=docs["index"])
    args = parse_arguments(parser, argv, SearchError, "search")
    run_array_task(args.trials, args.index)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SearchError as error:  # run by sbatch, not through lit_unitscale's CLI
        print(f"lit_unitscale: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
