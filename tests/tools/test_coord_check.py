"""Coordinate check on a tiny recipe over the fixture corpus: activation RMS stays within 1.5x
across widths under umup and drifts apart under sp."""

import math
from pathlib import Path

import pytest

from lit_unitscale.tools import coord_check

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "text"
RECIPE = f"""
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  logger: false
model:
  class_path: lit_unitscale.tasks.causal_lm.CausalLM
  init_args:
    model: {{d_model: 32, n_layers: 2, n_heads: 2, max_seq_len: 16, parametrization: umup}}
    lr: 0.05
    warmup_steps: 30
data:
  class_path: lit_unitscale.data.causal_lm.CausalLMData
  init_args: {{corpus: {FIXTURES}, tokenizer: word, seq_len: 16, batch_size: 8}}
"""
WIDTHS = [32, 64, 128]


def _width_ratios(per_width):
    # The readout's output (logits) shrinks as width**-0.5 at init by design (μP readout,
    # forward scale 1/fan_in); compare it with that trend divided out.
    corrected = {
        w: [{k: v * (math.sqrt(w) if k == "head" else 1.0) for k, v in s.items()} for s in steps]
        for w, steps in per_width.items()
    }
    return coord_check.max_width_ratio(corrected)


@pytest.mark.slow
def test_umup_is_width_stable_and_sp_is_not(tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_UNITSCALE_CACHE", str(tmp_path / "cache"))
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(RECIPE)
    task, data = coord_check.build_from_recipe([str(recipe)], [])
    results = coord_check.run_coord_check(task, data, WIDTHS, steps=3)
    umup, sp = _width_ratios(results["umup"]), _width_ratios(results["sp"])
    assert set(umup) == {"embed", "block0", "block1", "final_norm", "head"}
    assert all(r <= 1.5 for r in umup.values()), umup
    assert max(sp.values()) > 1.5, sp
    out = tmp_path / "cc.png"
    coord_check.plot(results, out)
    assert out.read_bytes()[:4] == b"\x89PNG"
