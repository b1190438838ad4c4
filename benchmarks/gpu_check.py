"""What only a GPU can show: speed on the GPU, and the checks whose failure modes need CUDA.

    python -m benchmarks.gpu_check                 # every part, on the GPU(s) of this machine
    python -m benchmarks.gpu_check --quick         # fewer steps; one JSON line either way
    python -m benchmarks.gpu_check --device cpu --parts fp8,fsdp2_dtypes --quick   # CPU-safe
    torchrun --nproc-per-node 8 -m benchmarks.gpu_check --parts fsdp2,fsdp2_dtypes  # all GPUs

Parts (``--parts``, comma-separated):

- ``throughput``: the ptb-small recipe's model and batch shape (synthetic tokens: the GPU
  machine has no network for the corpus) in bf16-mixed and fp16-noscale (fp16 autocast, no loss
  scaler): tokens/s and MFU (6·parameters + attention FLOPs per token over the device's peak).
- ``fsdp2``: the same model under FSDP2 on every GPU (meta-device build, the strategy's
  mixed-precision policy), in bf16-mixed and with real FP8 matmuls: tokens/s per GPU, MFU, peak
  memory.
- ``fsdp2_dtypes``: the dtypes FSDP2 all-gathers and reduce-scatters in under 32-true and
  bf16-mixed (expected: fp32/fp32 and bf16/fp32).
- ``fp8``: ``torch._scaled_mm`` (E4M3 × E4M3) against a bf16 matmul: TFLOP/s of each.
- ``fp8_training``: training steps in bf16-mixed against bf16-mixed + real FP8 matmuls in every
  hidden linear (``recipes/precision/fp8.yaml``: static unit scales, no amax), u-μP and SP under
  the same cast, for the ptb-small shapes and a ~1B decoder (d_model 2048, 16 layers), eager and
  compiled, interleaved: tokens/s, MFU (against the bf16 peak, as torchtitan reports it) and
  FP8/bf16 (goal >= 1.3 at d_model 2048); torchao's ``Float8Linear`` on SP beside it where
  torchao is installed. ``--device cpu --quick`` runs a tiny one, to check the part.
- ``umup_vs_sp``: a d_model-2048 decoder in bf16-mixed, u-μP and SP steps interleaved (eager,
  and compiled on CUDA): tokens/s, MFU and the u-μP/SP ratio (goal >= 1.00: every unit scale
  rides in a kernel SP runs too). ``--device cpu --quick`` runs a tiny one, to check the part.
- ``syncs``: ``aten::_local_scalar_dense`` on CUDA tensors per training micro-batch of the
  tiny decoder through the Trainer (expected 0 outside logging steps).
- ``scale_monitor_offload``: ScaleMonitor every step under DeepSpeed ZeRO-3 with CPU offload
  (partitions in pinned host memory, activations on the GPU): it must log finite RMS values.

A part that fails reports its error in the JSON line instead of stopping the others.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import socket
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
PARTS = (
    "fsdp2_dtypes",
    "fp8",
    "fp8_training",
    "syncs",
    "throughput",
    "umup_vs_sp",
    "fsdp2",
    "scale_monitor_offload",
)
# Dense bf16/fp16 tensor-core peaks (TFLOP/s) from the vendors' data sheets.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


@contextlib.contextmanager
def collective_dtypes() -> Iterator[dict[str, set[str]]]:
    """Record the dtype of every tensor FSDP2 all-gathers or reduce-scatters in the context.

    The real collectives run; they are only observed on the way.
    """
    seen: dict[str, set[str]] = defaultdict(set)
    names = {
        "all_gather": ("all_gather_single", "all_gather_into_tensor"),
        "reduce_scatter": ("reduce_scatter_single", "reduce_scatter_tensor"),
    }
    originals = {}
    for kind, functions in names.items():
        for name in functions:
            original = getattr(dist, name, None)
            if original is None:
                continue
            originals[name] = original

            def spy(output, input, *args, _kind=kind, _original=original, **kwargs):
                seen[_kind].add(str(input.dtype).removeprefix("torch."))
                return _original(output, input, *args, **kwargs)

            setattr(dist, name, spy)
    try:
        yield seen
    finally:
        for name, original in originals.items():
            setattr(dist, name, original)


class DeviceSyncs(TorchDispatchMode):
    """Counts reads of device tensors' values by the host (``aten::_local_scalar_dense``).

    Args:
        device_type: count only tensors on this kind of device (a read of a CPU tensor
            waits for nothing).
    """

    def __init__(self, device_type: str) -> None:
        super().__init__()
        self.device_type = device_type
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            if args[0].device.type == self.device_type:
                self.count += 1
        return func(*args, **(kwargs or {}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _process_group(device: str) -> Iterator[None]:
    if dist.is_initialized():
        yield
        return
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if "WORLD_SIZE" in os.environ:  # started by torchrun: one process per GPU
        dist.init_process_group(backend)
    else:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        dist.init_process_group(backend, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _recipe_model(name: str) -> tuple[Any, dict[str, Any]]:
    """TransformerConfig and data shape of a recipe (vocab from its word-level corpus)."""
    import yaml

    from lit_unitscale.models import TransformerConfig

    recipe = yaml.safe_load((ROOT / "recipes" / "decoder" / f"{name}.yaml").read_text())
    fields = dict(recipe["model"]["init_args"]["model"])
    fields.setdefault("vocab_size", 10_000)  # PTB's word vocabulary
    data = recipe["data"]["init_args"]
    return TransformerConfig(**fields), {
        "batch": int(data.get("batch_size", 32)),
        "seq": int(data.get("seq_len", fields["max_seq_len"])),
    }


def _flops_per_token(model: torch.nn.Module, config: Any, seq: int) -> float:
    params = sum(p.numel() for p in model.parameters())
    # Forward + backward: 6 per parameter, plus attention scores and values (12·L·d·T).
    return 6.0 * params + 12.0 * config.n_layers * config.d_model * seq


def _peak(device: str) -> float | None:
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def _train_loop(model, plugin, config, shape, steps: int, device: str) -> dict[str, Any]:
    from lit_unitscale.unit import param_groups

    opt = torch.optim.AdamW(param_groups(model, 1e-3, parametrization=config.parametrization))
    ids = torch.randint(0, config.vocab_size, (shape["batch"], shape["seq"]), device=device)
    times = []
    for step in range(steps + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with plugin.forward_context():
            loss = model.loss(model(ids), ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= 2:  # warm-up: allocator, kernels picked
            times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]
    tokens = shape["batch"] * shape["seq"] / seconds
    flops = _flops_per_token(model, config, shape["seq"])
    peak = _peak(device)
    return {
        "tokens_per_s": round(tokens, 1),
        "mfu": None if peak is None else round(tokens * flops / (peak * 1e12), 4),
        "loss": round(float(loss), 4),
    }


def part_throughput(device: str, steps: int) -> dict[str, Any]:
    from lightning.pytorch.plugins.precision import MixedPrecision

    from lit_unitscale.models import DecoderLM
    from lit_unitscale.strategies import FP16NoScalePrecision

    config, shape = _recipe_model("ptb-small")
    out = {}
    for name, plugin in (
        ("bf16-mixed", MixedPrecision("bf16-mixed", device)),
        ("fp16-noscale", FP16NoScalePrecision(device)),
    ):
        torch.manual_seed(0)
        model = DecoderLM(config).to(device)
        out[name] = _train_loop(model, plugin, config, shape, steps, device)
    return out


def part_umup_vs_sp(device: str, steps: int) -> dict[str, Any]:
    from lightning.pytorch.plugins.precision import MixedPrecision

    from lit_unitscale.models import DecoderLM, TransformerConfig
    from lit_unitscale.unit import param_groups

    small = device == "cpu"  # a shape that checks the part, not one that measures
    d, layers, batch, seq = (128, 2, 2, 64) if small else (2048, 8, 8, 1024)
    plugin = MixedPrecision("bf16-mixed", device)
    modes = ("eager",) if small else ("eager", "compiled")
    out: dict[str, Any] = {"d_model": d, "layers": layers, "batch": batch, "seq": seq}
    steps_of, flops = {}, {}
    for p in ("umup", "sp"):
        config = TransformerConfig(
            vocab_size=10_000, d_model=d, n_layers=layers, n_heads=d // 128 or 1,
            max_seq_len=seq, parametrization=p,
        )  # fmt: skip
        for mode in modes:
            torch.manual_seed(0)
            model = DecoderLM(config).to(device)
            flops[p] = _flops_per_token(model, config, seq)
            opt = torch.optim.AdamW(param_groups(model, 1e-3, parametrization=p))
            fwd = torch.compile(model) if mode == "compiled" else model

            def step(model=model, fwd=fwd, opt=opt):
                ids = torch.randint(0, 10_000, (batch, seq), device=device)
                with plugin.forward_context():
                    loss = model.loss(fwd(ids), ids)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            steps_of[f"{p}_{mode}"] = step
    times: dict[str, list[float]] = defaultdict(list)
    names = list(steps_of)
    for r in range(steps + 2):  # candidates alternate, the order rotating every round
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            steps_of[name]()
            if device == "cuda":
                torch.cuda.synchronize()
            if r >= 2:  # warm-up: compilation, allocator, kernels picked
                times[name].append(time.perf_counter() - start)
    peak = _peak(device)
    for name, ts in times.items():
        seconds = sorted(ts)[len(ts) // 2]
        tokens = batch * seq / seconds
        achieved = tokens * flops[name.split("_")[0]] / 1e12
        out[name] = {
            "tokens_per_s": round(tokens, 1),
            "spread_pct": round(100 * (max(ts) - min(ts)) / seconds, 1),
            "mfu": None if peak is None else round(achieved / peak, 4),
        }
    for mode in modes:
        sp, umup = out[f"sp_{mode}"]["tokens_per_s"], out[f"umup_{mode}"]["tokens_per_s"]
        out[f"umup_vs_sp_{mode}"] = round(umup / sp, 3)
    return out


def _fsdp2_model(config, precision: str, device: str):
    """A DecoderLM built on meta, sharded with FSDP2Strategy's policy for ``precision``."""
    from lightning.pytorch.plugins.precision import MixedPrecision, Precision
    from torch.distributed.device_mesh import init_device_mesh

    from lit_unitscale.models import DecoderLM
    from lit_unitscale.strategies import FSDP2Strategy
    from lit_unitscale.strategies.meta_init import MetaInit

    plugin = MixedPrecision("bf16-mixed", device) if precision == "bf16-mixed" else Precision()
    strategy = FSDP2Strategy()
    strategy.precision_plugin = plugin
    mesh = init_device_mesh(device, (dist.get_world_size(),), mesh_dim_names=("data_parallel",))
    torch.manual_seed(0)
    with MetaInit() as init:
        model = DecoderLM(config)
    init.name_parameters(model)
    strategy.parallelize(model, mesh)
    target = torch.device(device, torch.cuda.current_device()) if device == "cuda" else device
    init.materialise(model, target)
    return model, plugin


def part_fsdp2_dtypes(device: str, steps: int) -> dict[str, Any]:
    from lit_unitscale.models import TransformerConfig

    config = TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, max_seq_len=16)
    out = {}
    with _process_group(device):
        for precision in ("32-true", "bf16-mixed"):
            model, plugin = _fsdp2_model(config, precision, device)
            ids = torch.randint(0, 64, (2, 16), device=device)
            computed: set[str] = set()

            # Inside a block's forward its parameters are the gathered ones (also on one
            # process, where FSDP2 skips the collectives).
            def record(module, args, computed=computed) -> None:
                computed.update(str(p.dtype).removeprefix("torch.") for p in module.parameters())

            hook = model.blocks()[0].register_forward_pre_hook(record)
            with collective_dtypes() as seen:
                with plugin.forward_context():
                    loss = model.loss(model(ids), ids)
                loss.backward()
            hook.remove()
            out[precision] = {
                **{k: sorted(v) for k, v in seen.items()},
                "in_forward": sorted(computed),
            }
        out["world_size"] = dist.get_world_size()
    return out


def part_fsdp2(device: str, steps: int) -> dict[str, Any]:
    from lit_unitscale.unit import use_fp8_matmuls

    config, shape = _recipe_model("ptb-small")
    out: dict[str, Any] = {}
    with _process_group(device):
        for name in ("bf16-mixed", "bf16-mixed+fp8"):
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            model, plugin = _fsdp2_model(config, "bf16-mixed", device)
            if name.endswith("fp8"):
                use_fp8_matmuls(model)
            result = _train_loop(model, plugin, config, shape, steps, device)
            if device == "cuda":
                result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
            out[name] = result
        out["world_size"] = dist.get_world_size()
    return out


def _float8_linear(model: torch.nn.Module) -> str | None:
    """Give SP's hidden linears torchao's dynamic-scaling ``Float8Linear`` (tensorwise amax),
    the peer of static unit scales; a reason instead where torchao is missing.

    torchao converts ``torch.nn.Linear`` modules only, so each hidden linear's weights are
    shared with an ``nn.Linear`` that torchao converts and that then does the layer's
    multiply (SP's neighbour multipliers are all 1: nothing else rides in the layer).
    """
    try:
        from torchao.float8 import convert_to_float8_training
    except ImportError:
        return "torchao not installed"
    from lit_unitscale.unit import Linear, LinearReadout

    for module in model.modules():
        if not isinstance(module, Linear) or isinstance(module, LinearReadout):
            continue
        plain = torch.nn.Linear(module.in_features, module.out_features, bias=False)
        plain.weight = module.weight
        holder = torch.nn.ModuleDict({"linear": plain})
        convert_to_float8_training(holder)
        module.peer = holder["linear"]

        def forward(input, input_mult=1.0, output_mult=1.0, grad_input_mult=1.0, m=module):
            assert (input_mult, output_mult, grad_input_mult) == (1.0, 1.0, 1.0)
            out = m.peer(input)
            return out + m.bias if m.bias is not None else out

        module.forward = forward
    return None


def part_fp8_training(device: str, steps: int) -> dict[str, Any]:
    from lightning.pytorch.plugins.precision import MixedPrecision

    from lit_unitscale.models import DecoderLM, TransformerConfig
    from lit_unitscale.unit import param_groups, use_fp8_matmuls

    small = device == "cpu"  # a shape that checks the part, not one that measures
    recipe, shape = _recipe_model("ptb-small")
    shapes = {
        "ptb-small": (recipe, shape),
        "d2048": (
            TransformerConfig(
                vocab_size=32_000,
                d_model=2048,
                n_layers=16,
                n_heads=16,
                max_seq_len=2048,
                mlp="swiglu",
                norm="rms",
            ),  # fmt: skip
            {"batch": 4, "seq": 2048},
        ),
    }
    if small:
        tiny = TransformerConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=2, max_seq_len=32)
        shapes = {"tiny": (tiny, {"batch": 2, "seq": 32})}
    modes = ("eager",) if small else ("eager", "compiled")
    plugin = MixedPrecision("bf16-mixed", device)
    out: dict[str, Any] = {}
    for label, (base, shape) in shapes.items():
        # One model and optimizer per parametrization, shared by its candidates (the matmul
        # format is switched before each step): ten ~1B models would not fit one GPU.
        steps_of, flops = {}, {}
        for p in ("umup", "sp"):
            config = TransformerConfig(**{**base.__dict__, "parametrization": p})
            for fmt in ("bf16", "fp8", "torchao-float8") if p == "sp" else ("bf16", "fp8"):
                torch.manual_seed(0)
                if fmt != "fp8":  # fp8 reuses the bf16 candidate's model
                    model = DecoderLM(config).to(device)
                    opt = torch.optim.AdamW(param_groups(model, 1e-3, parametrization=p))
                    compiled = torch.compile(model) if "compiled" in modes else None
                if fmt == "torchao-float8":
                    missing = _float8_linear(model)
                    if missing:
                        for mode in modes:
                            out.setdefault(label, {})[f"{p}_{fmt}_{mode}"] = missing
                        continue
                    compiled = torch.compile(model) if "compiled" in modes else None
                for mode in modes:
                    name = f"{p}_{fmt}_{mode}"
                    flops[name] = _flops_per_token(model, config, shape["seq"])
                    fwd = compiled if mode == "compiled" else model
                    matmul = "fp8" if fmt == "fp8" else None

                    def step(model=model, fwd=fwd, opt=opt, matmul=matmul, size=shape):
                        use_fp8_matmuls(model, matmul=matmul)
                        vocab = model.config.vocab_size
                        ids = torch.randint(0, vocab, (size["batch"], size["seq"]), device=device)
                        with plugin.forward_context():
                            loss = model.loss(fwd(ids), ids)
                        loss.backward()
                        opt.step()
                        opt.zero_grad(set_to_none=True)
                        return loss

                    steps_of[name] = step
        out.setdefault(label, {}).update(_interleaved(steps_of, flops, shape, steps, device))
        for p in ("umup", "sp"):
            for mode in modes:
                bf16, fp8 = out[label].get(f"{p}_bf16_{mode}"), out[label].get(f"{p}_fp8_{mode}")
                if isinstance(bf16, dict) and isinstance(fp8, dict):
                    ratio = fp8["tokens_per_s"] / bf16["tokens_per_s"]
                    out[label][f"{p}_fp8_vs_bf16_{mode}"] = round(ratio, 3)
        del steps_of
        if device == "cuda":
            torch.cuda.empty_cache()
    return out


def _interleaved(steps_of, flops, shape, steps: int, device: str) -> dict[str, Any]:
    """Time candidates in alternation (the order rotating every round), 2 warm-up rounds."""
    times: dict[str, list[float]] = defaultdict(list)
    losses: dict[str, float] = {}
    names = list(steps_of)
    for r in range(steps + 2):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            loss = steps_of[name]()
            if device == "cuda":
                torch.cuda.synchronize()
            if r >= 2:
                times[name].append(time.perf_counter() - start)
            losses[name] = float(loss)
    peak = _peak(device)
    out = {}
    for name, ts in times.items():
        seconds = sorted(ts)[len(ts) // 2]
        tokens = shape["batch"] * shape["seq"] / seconds
        out[name] = {
            "tokens_per_s": round(tokens, 1),
            "spread_pct": round(100 * (max(ts) - min(ts)) / seconds, 1),
            "mfu": None if peak is None else round(tokens * flops[name] / (peak * 1e12), 4),
            "last_loss": round(losses[name], 4),
        }
    return out


def part_fp8(device: str, steps: int) -> dict[str, Any]:
    n = 4096 if device == "cuda" else 256
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    one = torch.ones((), device=device)
    a8 = a.to(torch.float8_e4m3fn)
    b8 = b.t().contiguous().t().to(torch.float8_e4m3fn)  # column-major, as _scaled_mm needs
    bf_a, bf_b = a.bfloat16(), b.bfloat16()

    def fp8() -> torch.Tensor:
        return torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)

    def bf16() -> torch.Tensor:
        return bf_a @ bf_b

    out = {"n": n}
    for name, fn in (("fp8_e4m3", fp8), ("bf16", bf16)):
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / steps
        out[f"{name}_tflops"] = float(f"{2 * n**3 / seconds / 1e12:.4g}")
    exact = torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.float32)
    reference = a8.float() @ b8.float()
    out["fp8_max_abs_error_vs_upcast"] = float((exact - reference).abs().max())
    return out


def _fit(args: list[str], callbacks: list[Any]) -> Any:
    from lit_unitscale.cli import make_cli

    # tiny.yaml asks for deterministic kernels, which cuBLAS refuses without a workspace
    # setting; speed and sync counts do not need them.
    base = ["--config", str(ROOT / "tests/strategies/tiny.yaml"), "--trainer.deterministic=false"]
    cli = make_cli([*base, *args], run=False)
    cli.trainer.callbacks.extend(callbacks)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli.trainer


def part_syncs(device: str, steps: int, root: Path) -> dict[str, Any]:
    import lightning as L

    class Count(L.Callback):
        def __init__(self) -> None:
            self.counts: list[int] = []
            self.mode: DeviceSyncs | None = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.mode = DeviceSyncs(device)
            self.mode.__enter__()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.mode.__exit__(None, None, None)
            self.counts.append(self.mode.count)

    count = Count()
    _fit(
        [
            f"--trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}",
            f"--trainer.max_steps={max(steps, 4)}",
            "--trainer.accumulate_grad_batches=2",
            "--trainer.log_every_n_steps=3",
            f"--trainer.default_root_dir={root / 'syncs'}",
        ],
        [count],
    )
    return {"per_micro_batch": count.counts}


def part_scale_monitor_offload(device: str, steps: int, root: Path) -> dict[str, Any]:
    from lit_unitscale.callbacks import ScaleMonitor

    monitor = ScaleMonitor(every_n_steps=1, jsonl=False, wandb_table=False)
    trainer = _fit(
        [
            "--config",
            str(ROOT / "recipes/strategy/deepspeed-zero3-offload.yaml"),
            f"--trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}",
            "--trainer.devices=1",
            "--trainer.max_steps=3",
            f"--trainer.default_root_dir={root / 'offload'}",
        ],
        [monitor],
    )
    layers = (monitor.last or {}).get("layers", {})
    rms = [v["rms"] for tensors in layers.values() for v in tensors.values()]
    return {
        "global_step": trainer.global_step,
        "tensors": len(rms),
        "all_finite": bool(rms) and all(math.isfinite(r) for r in rms),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated parts to run")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="where to run")
    parser.add_argument("--quick", action="store_true", help="fewer timed steps")
    parser.add_argument("--root", default="runs/gpu_check", help="folder for the runs' files")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here: run the CPU-safe parts with --device cpu")
    steps = 3 if args.quick else 20
    root = Path(args.root)
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "fsdp2_dtypes": lambda: part_fsdp2_dtypes(args.device, steps),
        "fp8": lambda: part_fp8(args.device, steps),
        "fp8_training": lambda: part_fp8_training(args.device, steps),
        "syncs": lambda: part_syncs(args.device, steps, root),
        "throughput": lambda: part_throughput(args.device, steps),
        "umup_vs_sp": lambda: part_umup_vs_sp(args.device, steps),
        "fsdp2": lambda: part_fsdp2(args.device, steps),
        "scale_monitor_offload": lambda: part_scale_monitor_offload(args.device, steps, root),
    }
    result: dict[str, Any] = {"device": args.device}
    if args.device == "cuda":
        result["gpu"] = torch.cuda.get_device_name()
    for part in args.parts.split(","):
        if part not in runners:
            parser.error(f"--parts: unknown part {part!r}; choose from {', '.join(PARTS)}")
        try:
            result[part] = runners[part]()
        except Exception as error:  # one part's failure is a result too
            result[part] = {"error": "".join(traceback.format_exception(error))[-1500:]}
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
