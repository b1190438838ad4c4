"""The offline scale dashboard renders every layer from a scales.jsonl."""

import json
import math

import pytest

from lit_unitscale.tools import scales

LAYERS = ["embed", "block0", "block1", "final_norm", "head"]


def _record(step: int) -> dict:
    stats = {"underflow_e4m3": 0.0, "overflow_e4m3": 0.0, "underflow_e5m2": 0.0}
    layers = {
        layer: {
            t: {"rms": 2.0 ** (i - 2 - step), **stats}
            for t in ("act", "act_grad", "weight", "weight_grad", "update")
        }
        for i, layer in enumerate(LAYERS)
    }
    return {"step": step, "formats": ["e4m3"], "layers": layers, "first_non_finite": None}


@pytest.fixture
def run_dir(tmp_path):
    lines = [json.dumps(_record(s)) for s in (0, 10, 20)]
    (tmp_path / "scales.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_html_contains_every_layer_and_both_plots(run_dir):
    assert scales.main([str(run_dir), "--step", "10"]) == 0
    page = (run_dir / "scales.html").read_text()
    assert page.count("data:image/png;base64,") == 2
    for layer in LAYERS:
        assert f"<td>{layer}</td>" in page
    assert "Values at step 10" in page
    assert f"<td>{math.log2(2.0**-12):.2f}</td>" in page  # embed at step 10


def test_png_profile_has_a_row_per_layer_and_tensor(run_dir, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = tmp_path / "p.png"
    assert scales.main([str(run_dir), "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "p-curves.png").read_bytes()[:4] == b"\x89PNG"
    fig, ax = plt.subplots()
    scales.plot_profile(scales.pick(scales.load_records(run_dir), None), ax)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    plt.close(fig)
    assert len(labels) == 5 * len(LAYERS)
    assert {label.split()[0] for label in labels} == set(LAYERS)


def test_clear_errors(tmp_path, capsys):
    assert scales.main([str(tmp_path)]) == 1
    assert "no scales.jsonl" in capsys.readouterr().err
    (tmp_path / "scales.jsonl").write_text(json.dumps(_record(0)) + "\n")
    assert scales.main([str(tmp_path), "--step", "5"]) == 1
    assert "no monitor step 5" in capsys.readouterr().err
