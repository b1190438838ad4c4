"""The offline scale dashboard renders every layer from a scales.jsonl, with or without
histograms, and turns bad input into one line."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_unitscale.tools import scales
from tests.conftest import run_cli

from .scales_records import LAYERS, record, write_run


@pytest.fixture
def run_dir(tmp_path):
    return write_run(tmp_path, [0, 10, 20])


def _page_data(page: str) -> dict:
    start = page.index("<script type='application/json' id='scales-data'>")
    body = page[page.index(">", start) + 1 : page.index("</script>", start)]
    return json.loads(body)


def test_html_is_self_contained_and_carries_every_layer_and_histogram(run_dir):
    assert scales.main([str(run_dir), "--step", "10"]) == 0
    page = (run_dir / "scales.html").read_text()
    for remote in ("http://", "https://", "src=", "<link"):
        assert remote not in page  # opens from disk: nothing to fetch
    data = _page_data(page)
    assert data["layers"] == LAYERS
    assert data["initial_step"] == 10
    assert [r["step"] for r in data["records"]] == [0, 10, 20]
    want = record(10)["layers"]["block1"]["act_grad"]["log2_hist"]
    assert data["records"][1]["layers"]["block1"]["act_grad"]["log2_hist"] == want
    assert {b["label"] for b in data["bands"]} == {"E4M3 normal range", "E5M2 normal range"}
    assert any(limit["label"] == "fp16 max" for limit in data["limits"])


def test_flat_histogram_keys_are_read_beside_their_statistics(tmp_path):
    rec = record(0)
    hist = rec["layers"]["head"]["act"].pop("log2_hist")
    rec["head/act/log2_hist"] = hist
    (tmp_path / "scales.jsonl").write_text(json.dumps(rec) + "\n")
    (loaded,) = scales.load_records(tmp_path)
    assert loaded["layers"]["head"]["act"]["log2_hist"] == hist


def test_records_without_histograms_and_alert_records_still_render(tmp_path):
    write_run(tmp_path, [0, 10], histograms=False)
    # The watchdog's record, written after the monitor's at the same step.
    reasons = ["RMS 0.001 < 0.01", "100.0% underflow e4m3 > 5.0%"]
    alert = {"step": 10, "alerts": [{"layer": "head", "tensor": "act", "reasons": reasons}]}
    with open(tmp_path / "scales.jsonl", "a") as f:
        f.write(json.dumps(alert) + "\n")
    assert scales.main([str(tmp_path)]) == 0
    page = (tmp_path / "scales.html").read_text()
    data = _page_data(page)
    assert [r["step"] for r in data["records"]] == [0, 10]  # the alert line is not a step
    assert "rms" in data["records"][1]["layers"]["head"]["act"]
    assert data["alerts"] == [alert]
    line = "step 10: head/act RMS 0.001 &lt; 0.01; 100.0% underflow e4m3 &gt; 5.0%"
    assert f"<ul id='alerts'><li>{line}</li></ul>" in page


def test_non_finite_statistics_travel_as_null(tmp_path):
    rec = record(0)
    rec["layers"]["head"]["act_grad"]["rms"] = float("nan")
    rec["first_non_finite"] = ["head", "act_grad"]
    (tmp_path / "scales.jsonl").write_text(json.dumps(rec) + "\n")
    assert scales.main([str(tmp_path)]) == 0
    data = _page_data((tmp_path / "scales.html").read_text())  # json.loads refuses NaN too
    assert data["records"][0]["layers"]["head"]["act_grad"]["rms"] is None


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


def _error(argv: list[str], capsys) -> str:
    assert scales.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("scales: "), err
    return err


def test_clear_errors(tmp_path, capsys):
    assert "does not exist" in _error([str(tmp_path / "missing")], capsys)
    assert "no scales.jsonl" in _error([str(tmp_path)], capsys)
    jsonl = tmp_path / "scales.jsonl"
    jsonl.write_text(json.dumps(record(0)) + "\n")
    assert "no monitor step 5" in _error([str(tmp_path), "--step", "5"], capsys)
    assert "--out must end in" in _error([str(tmp_path), "--out", "x.pdf"], capsys)
    jsonl.write_text(json.dumps(record(0)) + "\n{truncated\n")
    assert "scales.jsonl line 2: not JSON" in _error([str(tmp_path)], capsys)
    jsonl.write_text("[1, 2]\n")
    assert "line 1: expected a JSON object" in _error([str(tmp_path)], capsys)
    jsonl.write_text(json.dumps({"step": "ten", "layers": {}}) + "\n")
    assert "'step' must be an integer" in _error([str(tmp_path)], capsys)
    bad = record(0)
    bad["layers"]["embed"]["act"]["log2_hist"] = {"min_exp": -40, "counts": [1, -1]}
    jsonl.write_text(json.dumps(bad) + "\n")
    assert "embed/act/log2_hist must be" in _error([str(tmp_path)], capsys)
    jsonl.write_text(json.dumps({"alerts": []}) + "\n")
    assert "no monitor steps" in _error([str(tmp_path)], capsys)


def test_a_corrupt_file_is_one_line_and_a_non_zero_exit_from_the_command_line(tmp_path):
    (tmp_path / "scales.jsonl").write_text(json.dumps(record(0))[:200] + "\n")
    proc = run_cli("scales", str(tmp_path), check=False, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"scales: {tmp_path / 'scales.jsonl'} line 1: not JSON ("), line


HISTOGRAMS = st.fixed_dictionaries(
    {
        "min_exp": st.integers(-60, 0),
        "counts": st.lists(st.integers(0, 2**40), max_size=80),
        "zeros": st.integers(0, 2**40),
    }
)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 50), st.floats(2.0**-30, 2.0**30), HISTOGRAMS, st.booleans()),
        min_size=1,
        max_size=12,
    )
)
def test_steps_come_back_in_order_the_last_of_a_repeated_step_with_its_histogram(lines):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        text = []
        for step, rms, hist, flat in lines:
            rec = {"step": step, "layers": {"block0": {"act": {"rms": rms}}}}
            if flat:
                rec["block0/act/log2_hist"] = hist
            else:
                rec["layers"]["block0"]["act"]["log2_hist"] = hist
            text.append(json.dumps(rec))
        Path(tmp, "scales.jsonl").write_text("\n".join(text) + "\n")
        records = scales.load_records(Path(tmp))
        data = json.loads(json.dumps(scales.dashboard_data(records, None), allow_nan=False))
    last = {step: (rms, hist) for step, rms, hist, _ in lines}
    assert [r["step"] for r in records] == sorted(last)
    for r in data["records"]:
        assert r["layers"]["block0"]["act"] == {
            "rms": last[r["step"]][0],
            "log2_hist": last[r["step"]][1],
        }


def test_no_text_in_the_data_can_end_the_script_element(tmp_path):
    rec = record(0)
    rec["layers"]["</script><!--"] = rec["layers"].pop("head")
    (tmp_path / "scales.jsonl").write_text(json.dumps(rec) + "\n")
    assert scales.main([str(tmp_path)]) == 0
    page = (tmp_path / "scales.html").read_text()
    assert page.count("</script>") == 2  # the data's and the dashboard's own
    assert _page_data(page)["layers"][-1] == "</script><!--"


def test_the_dashboard_reads_the_key_the_monitor_writes():
    from lit_unitscale.callbacks.scale_wandb import HIST_STAT

    assert scales.HIST == HIST_STAT
