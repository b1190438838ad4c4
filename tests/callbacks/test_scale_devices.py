"""Scale statistics meet on one device whatever device each tensor's local part lives on.

Under DeepSpeed ZeRO-3 with CPU offload a parameter's partition (``ds_tensor``) sits in host
memory while activations and gradients are on the GPU. The meta device stands in for the GPU
here: mixing meta and CPU vectors in one ``torch.stack`` fails exactly as CUDA and CPU ones do.
"""

from __future__ import annotations

import pytest
import torch

from lit_unitscale.callbacks.scale_recorder import ScaleRecorder
from lit_unitscale.callbacks.scale_stats import resolve_formats, tensor_stats, width
from lit_unitscale.models import DecoderLM, TransformerConfig
from lit_unitscale.unit import named_param_specs

FORMATS = resolve_formats(["e4m3", "e5m2"])


def _offloaded_model() -> DecoderLM:
    """A model on the compute device (meta) whose parameters' partitions live on the host, as
    ZeRO-3 offload lays them out: an empty compute-side tensor and ``ds_tensor`` in memory."""
    config = TransformerConfig(vocab_size=37, d_model=16, n_layers=2, n_heads=2, max_seq_len=8)
    model = DecoderLM(config).to("meta")
    for _, param, _ in named_param_specs(model):
        param.ds_tensor = torch.randn(param.numel())
        param.ds_numel = param.numel()
        param.ds_process_group = None
    return model


def _record(recorder: ScaleRecorder, model: DecoderLM) -> torch.Tensor:
    recorder.attach()
    recorder.active = True
    ids = torch.zeros(2, 8, dtype=torch.long, device="meta")
    model.loss(model(ids), ids).backward()
    recorder.record_params()
    return recorder.collect()


def test_host_partitions_and_device_activations_stack_on_the_collective_device() -> None:
    model = _offloaded_model()
    stats = _record(ScaleRecorder(model, FORMATS, device="meta"), model)
    assert stats.device.type == "meta"
    assert stats.shape == (len(ScaleRecorder(model, FORMATS).keys()), width(FORMATS))


def test_without_a_device_the_mix_is_caught() -> None:
    model = _offloaded_model()
    with pytest.raises(RuntimeError, match="device"):
        _record(ScaleRecorder(model, FORMATS), model)


def test_vector_is_computed_where_the_tensor_lives_and_moved_once() -> None:
    x = torch.randn(1000)
    on_host = tensor_stats(x, FORMATS)
    moved = tensor_stats(x, FORMATS, device="meta")
    assert on_host.device.type == "cpu" and moved.device.type == "meta"
    assert moved.shape == on_host.shape
