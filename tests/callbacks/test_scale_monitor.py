"""ScaleMonitor on a tiny causal LM: values against a direct computation, logging, jsonl,
hook removal and the non-finite guard."""

import json
import logging

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import Logger

from lit_unitscale.callbacks import ScaleMonitor
from lit_unitscale.callbacks.nonfinite import NonFiniteGuard
from lit_unitscale.unit import named_param_specs

from .tiny import tiny_loader, tiny_task


def rms(x: torch.Tensor) -> float:
    return float(x.detach().double().pow(2).mean().sqrt())


def rms_of(tensors: list[torch.Tensor]) -> float:
    sq = sum(float(t.detach().double().pow(2).sum()) for t in tensors)
    return (sq / sum(t.numel() for t in tensors)) ** 0.5


class DirectProbe(L.Callback):
    """Captures block0's output, its gradient, and the head's weight, grad and update with
    plain hooks, to check the monitor against."""

    def on_fit_start(self, trainer, pl_module):
        block = pl_module.model.blocks()[0]

        def fwd(module, args, out):
            self.act = out.detach().clone()
            out.register_hook(lambda g: setattr(self, "act_grad", g.clone()))

        self.handle = block.register_forward_hook(fwd)
        self.head = pl_module.model.head.proj.weight
        self.block_params = [p for _, p, _ in named_param_specs(block)]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.before = self.head.detach().clone()
        self.grad = self.head.grad.clone()
        self.block_weights = [p.detach().clone() for p in self.block_params]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.update = self.head.detach() - self.before
        self.handle.remove()


class Capture(Logger):
    name, version = "capture", 0

    def __init__(self):
        super().__init__()
        self.metrics: dict[int, dict[str, float]] = {}

    @property
    def experiment(self):
        return None

    def log_metrics(self, metrics, step=None):
        self.metrics.setdefault(step, {}).update(metrics)

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def test_values_match_direct_computation(trainer_factory, tmp_path):
    monitor, probe, capture = ScaleMonitor(every_n_steps=1), DirectProbe(), Capture()
    trainer = trainer_factory([probe, monitor], logger=capture)
    trainer.fit(tiny_task(), tiny_loader())
    layers = monitor.last["layers"]
    assert monitor.last["step"] == 0
    assert layers["block0"]["act"]["rms"] == pytest.approx(rms(probe.act), rel=1e-5)
    assert layers["block0"]["act_grad"]["rms"] == pytest.approx(rms(probe.act_grad), rel=1e-5)
    assert layers["block0"]["weight"]["rms"] == pytest.approx(rms_of(probe.block_weights), rel=1e-5)
    assert layers["head"]["weight"]["rms"] == pytest.approx(rms(probe.before), rel=1e-5)
    assert layers["head"]["weight_grad"]["rms"] == pytest.approx(rms(probe.grad), rel=1e-5)
    assert layers["head"]["update"]["rms"] == pytest.approx(rms(probe.update), rel=1e-4)
    assert set(layers) == {"embed", "block0", "block1", "final_norm", "head"}
    assert set(layers["embed"]) == {"act", "act_grad", "weight", "weight_grad", "update"}
    assert monitor.first_non_finite is None
    # Logged through the trainer's loggers at the monitored step, same values as the jsonl.
    logged = capture.metrics[0]
    line = json.loads((tmp_path / "scales.jsonl").read_text().splitlines()[0])
    assert line == monitor.last
    for layer, tensors in line["layers"].items():
        for tensor, values in tensors.items():
            for stat, value in values.items():
                if stat == "log2_hist":  # a distribution, in scales.jsonl (and W&B) only
                    assert f"scales/{layer}/{tensor}/{stat}" not in logged
                    continue
                assert logged[f"scales/{layer}/{tensor}/{stat}"] == value
    assert "scales/block1/act/underflow_e4m3" in logged
    assert "scales/head/update/overflow_e5m2" in logged


def test_only_monitor_steps_and_hooks_removed(trainer_factory, tmp_path):
    task, monitor = tiny_task(), ScaleMonitor(every_n_steps=2)
    trainer = trainer_factory([monitor], max_steps=5)
    trainer.fit(task, tiny_loader())
    steps = [json.loads(s)["step"] for s in (tmp_path / "scales.jsonl").read_text().splitlines()]
    assert steps == [0, 2, 4]
    assert monitor.recorder is None
    assert all(not m._forward_hooks for m in task.model.modules())


class InjectNaN(L.Callback):
    """Poisons block1's MLP: its output (forward) or the gradient arriving at it (backward).
    Forward, block1's output is the first NaN; backward, block1's own output gradient is still
    finite and block0's output gradient is the first NaN."""

    def __init__(self, where: str):
        self.where = where

    def on_fit_start(self, trainer, pl_module):
        mlp = pl_module.model.blocks()[1].mlp
        if self.where == "forward":
            mlp.register_forward_hook(lambda m, a, out: out * float("nan"))
        else:

            def poison_grad(module, args, out):
                out.register_hook(lambda g: g * float("nan"))

            mlp.register_forward_hook(poison_grad)


@pytest.mark.parametrize(
    "where, expected", [("forward", ["block1", "act"]), ("backward", ["block0", "act_grad"])]
)
def test_non_finite_guard_names_first_layer(trainer_factory, caplog, where, expected):
    monitor = ScaleMonitor(every_n_steps=1)
    # The tasks' default NonFiniteGuard would stop at the NaN; skipping lets the step finish.
    guard = NonFiniteGuard(action="skip", max_skips=10)
    trainer = trainer_factory([monitor, InjectNaN(where), guard])
    with caplog.at_level(logging.WARNING, logger="lit_unitscale.callbacks.scale_monitor"):
        trainer.fit(tiny_task(), tiny_loader())
    assert monitor.first_non_finite == {"step": 0, "layer": expected[0], "tensor": expected[1]}
    assert monitor.last["first_non_finite"] == expected
    assert f"{expected[0]}/{expected[1]} went non-finite first" in caplog.text


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="every_n_steps"):
        ScaleMonitor(every_n_steps=0)
    with pytest.raises(ValueError, match="unknown formats"):
        ScaleMonitor(formats=("e3m4",))
    with pytest.raises(ValueError, match="max_elements"):
        ScaleMonitor(max_elements=0)
    with pytest.raises(ValueError, match="unknown tensors"):
        ScaleMonitor(tensors=("acts",))
