"""The W&B workspace spec holds a log2 |x| histogram panel per layer and tensor kind, with the
formats' normal ranges marked, and builds and serialises offline."""

import json
import math
import re

import torch

from lit_unitscale.tools import dashboard

from .scales_records import LAYERS, TENSORS, write_run


def _histogram_panels(section) -> list:
    return [p for p in section.panels if "histogram" in (getattr(p, "title", None) or "")]


def test_a_histogram_panel_per_layer_and_tensor_with_the_ranges_marked():
    ws = dashboard.build_workspace("entity", "project", layers=LAYERS)
    by_tensor = dict(zip(dashboard.TENSOR_TITLES, ws.sections, strict=False))
    # The ranges come from torch's own dtypes, not from the code under test.
    ranges = {
        name: (math.log2(torch.finfo(dtype).smallest_normal), math.log2(torch.finfo(dtype).max))
        for name, dtype in (
            ("E4M3", torch.float8_e4m3fn),
            ("E5M2", torch.float8_e5m2),
            ("fp16", torch.float16),
        )
    }
    for tensor, section in by_tensor.items():
        panels = _histogram_panels(section)
        assert [p.y for p in panels] == [[f"scales/{layer}/{tensor}/log2_hist"] for layer in LAYERS]
        for p in panels:
            assert p.x == "Step" and p.title_y.startswith("log2 |x| (normal: ")
            for name, (lo, hi) in ranges.items():
                assert f"{name} {lo:.0f}..{hi:.1f}" in p.title_y
    (note,) = [p for p in ws.sections[-1].panels if "| format |" in getattr(p, "markdown", "")]
    rows = {
        m[0]: (float(m[1]), float(m[2]))
        for m in re.findall(r"\| (\w+) \| (-?\d+) \| ([\d.]+) \|", note.markdown)
    }
    assert rows.keys() == ranges.keys()
    for name, (lo, hi) in ranges.items():
        assert rows[name][0] == lo and abs(rows[name][1] - hi) < 0.005
    # Without layer names, one panel per tensor kind matches the layers by a regex.
    ws = dashboard.build_workspace("entity", "project")
    for tensor, section in zip(dashboard.TENSOR_TITLES, ws.sections, strict=False):
        (panel,) = _histogram_panels(section)
        assert panel.metric_regex == f"^scales/[^/]+/{tensor}/log2_hist$"


def test_spec_takes_the_layers_from_a_run(tmp_path, capsys):
    write_run(tmp_path, [0, 10])
    argv = ["spec", "--entity", "e", "--project", "p", "--run-dir", str(tmp_path)]
    assert dashboard.main(argv) == 0
    spec = capsys.readouterr().out
    json.loads(spec)
    for layer in LAYERS:
        for tensor in TENSORS:
            assert f'"scales/{layer}/{tensor}/log2_hist"' in spec


def test_bad_run_dir_is_one_line(tmp_path, capsys):
    base = ["spec", "--entity", "e", "--project", "p"]
    assert dashboard.main([*base, "--run-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dashboard: no scales.jsonl in") and err.count("\n") == 1
    write_run(tmp_path, [0])
    assert dashboard.main([*base, "--run-dir", str(tmp_path), "--layers", "embed"]) == 1
    assert capsys.readouterr().err == "dashboard: give --layers or --run-dir, not both\n"
