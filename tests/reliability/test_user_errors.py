"""Every user mistake gives one short message through the real CLI: which file, which key,
what was expected, a suggestion when one is close; non-zero exit; no traceback unless --debug.

The cases fail while parsing or instantiating (before training), so they run concurrently."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT

RECIPE = "tests/fixtures/recipes/decoder-tiny.yaml"

# name -> (overlay recipe text or None, extra args, substrings the message must contain)
CASES: dict[str, tuple[str | None, list[str], list[str]]] = {
    "unknown_top_key": (
        "trainer:\n  max_stepz: 3\n",
        [],
        ["unknown key 'trainer.max_stepz' in", "case.yaml", "did you mean 'trainer.max_steps'"],
    ),
    "unknown_top_key_cli": (
        None,
        ["--trainer.max_stepz", "3"],
        ["unknown key 'trainer.max_stepz' on the command line", "'trainer.max_steps'"],
    ),
    "unknown_model_key": (
        "model:\n  init_args:\n    model:\n      d_modle: 64\n",
        [],
        ["unknown key 'model.init_args.model.d_modle' in", "'model.init_args.model.d_model'"],
    ),
    "unknown_model_key_cli": (
        None,
        ["--model.init_args.model.d_modle", "64"],
        ["unknown key 'model.init_args.model.d_modle' on the command line", "d_model'?"],
    ),
    "unknown_data_key": (
        "data:\n  init_args:\n    batch_sise: 4\n",
        [],
        ["unknown key 'data.init_args.batch_sise' in", "'data.init_args.batch_size'"],
    ),
    "wrong_type": (
        "model:\n  init_args:\n    lr: fast\n",
        [],
        ["model.init_args.lr in", "case.yaml: expected float, got 'fast'"],
    ),
    "malformed_yaml": (
        "trainer:\n  max_steps: 3\n   devices: [1\n",
        [],
        ["case.yaml, line 3, column 11: malformed YAML"],
    ),
    "python_tag": (
        'seed_everything: !!python/object/apply:os.system ["echo pwned"]\n',
        [],
        ["case.yaml, line 1", "python/object/apply:os.system' is not allowed"],
    ),
    "missing_interpolation": (
        "model:\n  init_args:\n    warmup_steps: ${trainer.warmup}\n",
        [],
        ["model.init_args.warmup_steps in", "${trainer.warmup} points at a key that is not set"],
    ),
    "unknown_class_path": (
        "model:\n  class_path: lit_unitscale.tasks.causal_lm.CasualLM\n",
        [],
        [
            "model.class_path in",
            "no class",
            "did you mean 'lit_unitscale.tasks.causal_lm.CausalLM'",
        ],
    ),
    "missing_recipe": (
        None,
        ["--config", "recipes/decoder/ptb-tinyy.yaml"],
        ["file not found", "did you mean 'ptb-tiny.yaml'"],
    ),
    "missing_data": (
        "data:\n  init_args:\n    corpus: {tmp}/no-such-corpus\n",
        [],
        ["data.init_args.corpus in", "no-such-corpus does not exist"],
    ),
    "empty_data": (
        "data:\n  init_args:\n    corpus: {tmp}/empty\n",
        [],
        ["data.init_args.corpus in", "holds no .txt files"],
    ),
    "truncated_tokenizer": (
        "data:\n  init_args:\n    tokenizer_path: {tmp}/tokenizer.json\n",
        [],
        ["data.init_args.tokenizer_path in", "tokenizer.json is not a valid"],
    ),
    "missing_checkpoint": (
        None,
        ["--ckpt_path", "{tmp}/nothere.ckpt"],
        ["nothere.ckpt: file not found"],
    ),
    "truncated_checkpoint": (
        None,
        ["--ckpt_path", "{tmp}/truncated.ckpt"],
        ["truncated.ckpt: truncated or corrupt"],
    ),
    "pickled_checkpoint": (
        None,
        ["--ckpt_path", "{tmp}/pickled.ckpt"],
        ["pickled.ckpt: refused by the safe loader"],
    ),
    "other_architecture": (
        None,
        ["--model.init_args.model.d_model", "64", "--ckpt_path", "{tmp}/arch.ckpt"],
        ["arch.ckpt: architecture does not match the recipe (checkpoint/recipe): d_model=32/64"],
    ),
    "heads_not_dividing": (
        "model:\n  init_args:\n    model:\n      n_heads: 5\n",
        [],
        ["model.init_args.model.n_heads in", "n_heads=5 does not divide d_model=32"],
    ),
    "zero_layers": (
        "model:\n  init_args:\n    model:\n      n_layers: 0\n",
        [],
        ["model.init_args.model.n_layers in", "n_layers must be > 0, got 0"],
    ),
    "zero_batch": (
        "data:\n  init_args:\n    batch_size: 0\n",
        [],
        ["data.init_args.batch_size in", "batch_size must be >= 1 (per process), got 0"],
    ),
    "gpu_without_gpu": (
        "trainer:\n  accelerator: gpu\n",
        [],
        ["trainer.accelerator=gpu in", "This machine can run accelerator: cpu"],
    ),
    "unknown_strategy": (
        None,
        ["--trainer.strategy=nosuchstrategy"],
        ["trainer.strategy=nosuchstrategy on the command line", "invalid strategy name"],
    ),
    "tpu_without_xla": (
        None,
        ["--trainer.accelerator=tpu"],
        ["trainer.accelerator=tpu on the command line", "torch_xla"],
    ),
    "callback_argument": (
        "trainer:\n  callbacks:\n    - class_path: lit_unitscale.callbacks.ScaleMonitor\n"
        "      init_args: {every_n_steps: 0}\n",
        [],
        ["trainer.callbacks=ScaleMonitor in", "every_n_steps must be >= 1, got 0"],
    ),
    "strategy_argument": (
        "trainer:\n  strategy:\n    class_path: lit_unitscale.strategies.FSDP2Strategy\n"
        "    init_args: {tensor_parallel_size: 0}\n",
        [],
        ["trainer.strategy"],
    ),
    "run_directory_taken": (
        None,
        ["--trainer.default_root_dir", "{tmp}/taken"],
        ["{tmp}/taken already holds a run (config.yaml)", "--ckpt_path last"],
    ),
    "unknown_subcommand": (None, [], ["unknown subcommand 'fitt' (did you mean 'fit'?)"]),
}


class _Pickled:
    """Any class outside the allow-list: a weights-only load must refuse it."""


def _fixtures(tmp: Path) -> None:
    (tmp / "empty").mkdir()
    (tmp / "taken").mkdir()
    (tmp / "taken" / "config.yaml").write_text("trainer: {}\n")
    (tmp / "tokenizer.json").write_text('{"version": "1.0", "trunc')
    config = {"d_model": 32, "n_layers": 2, "n_heads": 4, "max_seq_len": 16}
    torch.save({"state_dict": {}, "model_config": config}, tmp / "arch.ckpt")
    whole = (tmp / "arch.ckpt").read_bytes()
    (tmp / "truncated.ckpt").write_bytes(whole[: len(whole) // 2])
    torch.save({"state_dict": {}, "extra": _Pickled()}, tmp / "pickled.ckpt")


def _command(name: str, tmp: Path) -> list[str]:
    overlay, extra, _ = CASES[name]
    sub = "fitt" if name == "unknown_subcommand" else "fit"
    args = [sub, "--config", RECIPE, "--trainer.default_root_dir", str(tmp / "run" / name)]
    if name == "missing_recipe":
        args = [sub]
    if overlay is not None:
        path = tmp / name / "case.yaml"
        path.parent.mkdir(parents=True)
        path.write_text(overlay.replace("{tmp}", str(tmp)))
        args += ["--config", str(path)]
    return args + [a.replace("{tmp}", str(tmp)) for a in extra]


def _run_all(commands: dict[str, list[str]], parallel: int = 4) -> dict[str, tuple[int, str]]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "LIT_UNITSCALE_DEBUG": ""}
    pending, running, done = list(commands), {}, {}
    while pending or running:
        while pending and len(running) < parallel:
            name = pending.pop(0)
            running[name] = subprocess.Popen(
                [sys.executable, "-m", "lit_unitscale", *commands[name]],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        for name, proc in list(running.items()):
            if proc.poll() is not None:
                done[name] = (proc.returncode, proc.stderr.read())
                del running[name]
        time.sleep(0.05)
    return done


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str]]:
    tmp = tmp_path_factory.mktemp("user-errors")
    _fixtures(tmp)
    commands = {name: _command(name, tmp) for name in CASES}
    commands["debug"] = [*_command("unknown_top_key_cli", tmp), "--debug"]
    return {**_run_all(commands), "tmp": tmp}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_one_clear_message(name: str, results: dict[str, tuple[int, str]]) -> None:
    (code, stderr), tmp_root = results[name], results["tmp"]
    messages = [line for line in stderr.splitlines() if line.startswith("lit_unitscale: ")]
    assert code != 0, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert len(messages) == 1, stderr[-2000:]
    for expected in CASES[name][2]:
        assert expected.replace("{tmp}", str(tmp_root)) in messages[0], messages[0]
    assert len(messages[0]) < 400, messages[0]


@pytest.mark.slow
def test_debug_shows_the_traceback(results: dict[str, tuple[int, str]]) -> None:
    code, stderr = results["debug"]
    assert code != 0
    assert "Traceback" in stderr and "unrecognized arguments" in stderr
