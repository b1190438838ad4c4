"""W&B: scale metrics, the log2 histograms and the profile table in an offline run, read back
from disk with `wandb leet inspect --json`; the scales workspace spec built offline."""

import json
import shutil
import subprocess

import pytest

from lit_unitscale.callbacks import ScaleMonitor
from lit_unitscale.callbacks.scale_wandb import PROFILE_KEY
from lit_unitscale.tools import dashboard

from .tiny import tiny_loader, tiny_task


def _history(run_dir) -> list[dict]:
    wandb_cli = shutil.which("wandb")
    assert wandb_cli, "the wandb CLI is installed with the wandb package"
    out = subprocess.run(
        [wandb_cli, "leet", "inspect", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [r["history"]["item"] for r in records if r.get("type") == "history"]


def test_offline_run_holds_the_jsonl_values(trainer_factory, tmp_path, monkeypatch):
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="scales-test")
    trainer = trainer_factory([ScaleMonitor(every_n_steps=1)], max_steps=2, logger=logger)
    try:
        trainer.fit(tiny_task(), tiny_loader())
    finally:
        wandb.finish()
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    history = _history(run_dir)
    lines = [json.loads(s) for s in (tmp_path / "scales.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 1]
    for record in lines:
        rows = [
            h
            for h in history
            if h.get("trainer/global_step") == record["step"] and "scales/block0/act/rms" in h
        ]
        assert len(rows) == 1, record["step"]
        for layer, tensors in record["layers"].items():
            for tensor, values in tensors.items():
                for stat, value in values.items():
                    key = f"scales/{layer}/{tensor}/{stat}"
                    if stat == "log2_hist":
                        continue
                    assert rows[0][key] == pytest.approx(value, rel=1e-12, abs=0), key
        # Every tensor's log2 histogram, one series per layer and tensor, counts as in the jsonl.
        hists = [
            h
            for h in history
            if h.get("trainer/global_step") == record["step"]
            and "scales/block0/act/log2_hist._type" in h
        ]
        assert len(hists) == 1, record["step"]
        n_hist = 0
        for layer, tensors in record["layers"].items():
            for tensor, values in tensors.items():
                key, hist = f"scales/{layer}/{tensor}/log2_hist", values["log2_hist"]
                assert hists[0][f"{key}._type"] == "histogram"
                assert hists[0][f"{key}.values"] == hist["counts"], key
                n = len(hist["counts"])
                edges = list(range(hist["min_exp"], hist["min_exp"] + n + 1))
                assert hists[0][f"{key}.bins"] == edges
                n_hist += 1
        assert n_hist == sum(len(t) for t in record["layers"].values()) > 0
        # The table is stored as a file; the history row holds its flattened reference.
        tables = [
            h
            for h in history
            if h.get("trainer/global_step") == record["step"] and f"{PROFILE_KEY}._type" in h
        ]
        assert len(tables) == 1
        assert tables[0][f"{PROFILE_KEY}._type"] == "table-file"
        n_rows = sum(len(tensors) for tensors in record["layers"].values())
        assert tables[0][f"{PROFILE_KEY}.nrows"] == n_rows


def test_workspace_spec_has_a_section_per_tensor_and_the_profile():
    ws = dashboard.build_workspace("entity", "project", layers=["embed", "block0", "head"])
    names = [s.name for s in ws.sections]
    assert names == [f"scales: {t}" for t in dashboard.TENSOR_TITLES.values()] + [
        dashboard.PROFILE_SECTION
    ]
    act = ws.sections[0].panels
    assert act[0].log_y is True
    assert act[0].y == ["scales/embed/act/rms", "scales/block0/act/rms", "scales/head/act/rms"]
    titles = [p.title for p in act]
    for fmt in ("E4M3", "E5M2"):
        assert any(f"underflow {fmt}" in t for t in titles)
        assert any(f"overflow {fmt}" in t for t in titles)
    profile = ws.sections[-1].panels
    assert profile[0].table_name == PROFILE_KEY
    # Without layer names, a regex picks up every layer of any depth.
    ws = dashboard.build_workspace("entity", "project")
    assert ws.sections[4].panels[0].metric_regex == "^scales/[^/]+/update/rms$"
    assert dashboard.main(["spec", "--entity", "e", "--project", "p"]) == 0


def test_push_without_a_key_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", "")
    monkeypatch.setenv("WANDB_CONFIG_DIR", "/nonexistent-wandb-config")
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    assert dashboard.main(["push", "--entity", "e", "--project", "p"]) == 1
    assert "dashboard:" in capsys.readouterr().err
