"""Offline scale dashboard from a run's ``scales.jsonl``: ``python -m lit_unitscale scales``.

    python -m lit_unitscale scales runs/ptb-tiny                      # -> runs/ptb-tiny/scales.html
    python -m lit_unitscale scales runs/ptb-tiny --out scales.png --step 100

The HTML dashboard is one self-contained file (inline script and style; no server, no
network) that opens from the run directory: a step slider and a layer filter drive, per layer
and tensor, the histogram of log2 |x| at the selected step against the E4M3, E5M2 and fp16
normal ranges, the scale profile (log2 RMS of every layer and tensor), the RMS-over-steps
curves and a table of the step's values; the watchdog's alerts are listed and flag their
histograms from the step they fired. Records written
before the monitor kept histograms show RMS only. ``#step=100&layers=block0,head`` in the
address opens a given view.

The PNG output is the scale profile at one step on a log2 axis (forward tensors, backward
tensors and updates in different colours, the format ranges as vertical lines) and, beside
it, each tensor kind's RMS over steps, one line per layer.
"""

from __future__ import annotations

import html
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser

from lit_unitscale.errors import ToolError
from lit_unitscale.tools.arguments import parse_arguments, tool_parser
from lit_unitscale.unit.fp8 import E4M3, E5M2

JSONL_NAME = "scales.jsonl"
TENSORS = ("act", "act_grad", "weight", "weight_grad", "update")
COLOURS = {
    "act": "tab:blue",
    "weight": "tab:cyan",
    "act_grad": "tab:orange",
    "weight_grad": "tab:red",
    "update": "tab:green",
}
FP16_MIN_NORMAL, FP16_MAX = 2.0**-14, 65504.0
# (label, log2 value, colour, line style) of the range limits drawn on the profile.
LIMITS = [
    ("E4M3 min normal", math.log2(E4M3.min_normal), "purple", "--"),
    ("E4M3 max", math.log2(E4M3.max_value), "purple", "-"),
    ("E5M2 and fp16 min normal", math.log2(E5M2.min_normal), "grey", "--"),
    ("E5M2 max", math.log2(E5M2.max_value), "grey", "-"),
    ("fp16 max", math.log2(FP16_MAX), "black", ":"),
]
assert E5M2.min_normal == FP16_MIN_NORMAL  # one line marks both


class ScalesError(ToolError):
    """A problem the user can fix; printed as one line."""


# The ScaleMonitor's histogram key (its HIST_STAT; not imported: that would load Lightning).
HIST = "log2_hist"


def find_jsonl(path: Path) -> Path:
    """``path`` itself, ``path/scales.jsonl``, or the newest ``scales.jsonl`` below ``path``.

    Args:
        path: a run directory or a scales.jsonl file.
    """
    if not path.exists():
        raise ScalesError(f"{path} does not exist (give a run directory or its {JSONL_NAME})")
    if path.is_file():
        return path
    if (path / JSONL_NAME).is_file():
        return path / JSONL_NAME
    found = sorted(path.rglob(JSONL_NAME), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ScalesError(f"no {JSONL_NAME} in {path} (was the run trained with ScaleMonitor?)")
    return found[-1]


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Monitor-step records in step order (the last of repeated steps) and alert records.

    A monitor-step record holds ``step`` and ``layers``; a histogram written beside a tensor's
    statistics as ``"<layer>/<tensor>/log2_hist"`` is moved under ``layers[layer][tensor]``.
    Records of other kinds (alerts) are returned apart, in file order.

    Args:
        path: a run directory or a scales.jsonl file.
    """
    jsonl = find_jsonl(path)
    by_step: dict[int, dict[str, Any]] = {}
    others: list[dict[str, Any]] = []
    for number, line in enumerate(jsonl.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{jsonl} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ScalesError(f"{where}: not JSON ({err.msg}, column {err.colno})") from None
        if not isinstance(record, dict):
            raise ScalesError(f"{where}: expected a JSON object, got {type(record).__name__}")
        if "layers" not in record:
            others.append(record)
            continue
        by_step[_check_step(record, where)] = _nest_histograms(record, where)
    if not by_step:
        raise ScalesError(f"{jsonl}: no monitor steps in it (empty or alerts only)")
    return [by_step[s] for s in sorted(by_step)], others


def _check_step(record: dict[str, Any], where: str) -> int:
    step, layers = record.get("step"), record["layers"]
    if not isinstance(step, int) or isinstance(step, bool):
        raise ScalesError(f"{where}: 'step' must be an integer, got {step!r}")
    if not isinstance(layers, dict) or not all(
        isinstance(t, dict) and all(isinstance(v, dict) and "rms" in v for v in t.values())
        for t in layers.values()
    ):
        raise ScalesError(f"{where}: 'layers' must map layer -> tensor -> statistics with 'rms'")
    return step


def _nest_histograms(record: dict[str, Any], where: str) -> dict[str, Any]:
    for key in [k for k in record if k.endswith("/" + HIST)]:
        layer, tensor, _ = key.rsplit("/", 2)
        if tensor not in record["layers"].get(layer, {}):
            raise ScalesError(f"{where}: {key} has no statistics for {layer}/{tensor}")
        record["layers"][layer][tensor][HIST] = record.pop(key)
    for layer, tensors in record["layers"].items():
        for tensor, values in tensors.items():
            hist = values.get(HIST)
            if hist is None:
                continue
            counts = hist.get("counts") if isinstance(hist, dict) else None
            if not (
                isinstance(counts, list)
                and isinstance(hist.get("min_exp"), int)
                and all(isinstance(c, int) and c >= 0 for c in counts)
                and isinstance(hist.get("zeros", 0), int)
            ):
                raise ScalesError(
                    f"{where}: {layer}/{tensor}/{HIST} must be "
                    '{"min_exp": int, "counts": [non-negative ints], "zeros": int}'
                )
    return record


def load_records(path: Path) -> list[dict[str, Any]]:
    """Monitor-step records from a scales.jsonl, in step order (the last of repeated steps).

    Args:
        path: a run directory or a scales.jsonl file.
    """
    return read_jsonl(path)[0]


def _log2(value: float) -> float:
    return math.log2(value) if value > 0 and math.isfinite(value) else float("nan")


def profile_rows(record: dict[str, Any]) -> list[tuple[str, str, float]]:
    """(layer, tensor, rms) for every layer and tensor of one record, in forward order.

    Args:
        record: one line of scales.jsonl.
    """
    return [
        (layer, tensor, tensors[tensor]["rms"])
        for layer, tensors in record["layers"].items()
        for tensor in TENSORS
        if tensor in tensors
    ]


def plot_profile(record: dict[str, Any], ax) -> None:
    """Draw the scale profile of one record on ``ax``."""
    rows = profile_rows(record)
    ys = list(range(len(rows)))[::-1]  # first layer at the top
    for y, (_layer, tensor, rms) in zip(ys, rows, strict=True):
        ax.barh(y, _log2(rms), color=COLOURS[tensor], height=0.7, left=0)
        ax.plot(_log2(rms), y, "o", color=COLOURS[tensor], ms=4)
    ax.axvspan(LIMITS[0][1], LIMITS[1][1], color="purple", alpha=0.06, label="E4M3 normal range")
    for label, x, colour, style in LIMITS:
        ax.axvline(x, color=colour, linestyle=style, linewidth=1, label=label)
    ax.axvline(0, color="black", linewidth=0.5)
    ax.set_yticks(ys, [f"{layer} {tensor}" for layer, tensor, _ in rows], fontsize=7)
    ax.set_xlabel("log2 RMS")
    ax.set_title(f"scale profile, step {record['step']}")
    handles = [
        _patch(COLOURS[t], name)
        for t, name in (
            ("act", "activation (fwd)"),
            ("weight", "weight (fwd)"),
            ("act_grad", "activation grad (bwd)"),
            ("weight_grad", "weight grad (bwd)"),
            ("update", "update"),
        )
    ]
    ax.legend(handles=handles + ax.get_legend_handles_labels()[0], fontsize=6, loc="lower left")


def _patch(colour: str, label: str):
    from matplotlib.patches import Patch

    return Patch(color=colour, label=label)


def plot_curves(records: list[dict[str, Any]], axes) -> None:
    """RMS over steps, one panel per tensor kind, one line per layer (log2 y axis)."""
    layers = list(dict.fromkeys(layer for r in records for layer in r["layers"]))
    steps = [r["step"] for r in records]
    cycle = [f"C{i % 10}" for i in range(len(layers))]  # a layer keeps its colour in every panel
    for ax, tensor in zip(axes, TENSORS, strict=False):
        for layer, colour in zip(layers, cycle, strict=True):
            values = [r["layers"].get(layer, {}).get(tensor, {}).get("rms") for r in records]
            if all(v is None for v in values):
                continue
            ys = [v if v is not None and v > 0 else float("nan") for v in values]
            ax.plot(steps, ys, marker=".", label=layer, color=colour)
        ax.set_yscale("log", base=2)
        ax.set_title(tensor)
        ax.set_xlabel("step")
        ax.legend(fontsize=6, loc="upper right")


def render_png(records: list[dict[str, Any]], step: int | None) -> tuple[bytes, bytes]:
    """The profile and the curves as two PNGs.

    Args:
        records: monitor-step records, in step order.
        step: step of the profile (None: the last one).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    record = pick(records, step)
    n_rows = len(profile_rows(record))
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.22 * n_rows + 1.5)))
    plot_profile(record, ax)
    fig.tight_layout()
    profile = _png(fig)
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    plot_curves(records, axes.flat)
    axes.flat[-1].axis("off")
    fig.tight_layout()
    return profile, _png(fig)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def pick(records: list[dict[str, Any]], step: int | None) -> dict[str, Any]:
    """The record at ``step`` (None: the last).

    Args:
        records: monitor-step records.
        step: wanted step.
    """
    if step is None:
        return records[-1]
    for record in records:
        if record["step"] == step:
            return record
    raise ScalesError(f"no monitor step {step}; recorded: {[r['step'] for r in records]}")


# Shaded normal ranges of the histograms: (label, low, high, fill); log2 of the range limits.
# The wider band first, so the narrower one stays visible on top of it.
BANDS = [
    ("E5M2 normal range", math.log2(E5M2.min_normal), math.log2(E5M2.max_value), "#eeeeee"),
    ("E4M3 normal range", math.log2(E4M3.min_normal), math.log2(E4M3.max_value), "#e6dcf5"),
]
HTML_COLOURS = {"purple": "#7b3fb5", "grey": "#888888", "black": "#000000"}
JS_DASH = {"-": [], "--": [5, 3], ":": [2, 2]}
SCRIPT = Path(__file__).with_name("scales_dashboard.js")


def _finite(value: Any) -> Any:
    # JSON has no NaN or infinity (the page's JSON.parse rejects them): a non-finite statistic
    # travels as null and is drawn as missing.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def dashboard_data(
    records: list[dict[str, Any]], step: int | None, alerts: list[dict[str, Any]] = ()
) -> dict[str, Any]:
    """What the HTML dashboard draws, as one JSON-able dict.

    Args:
        records: monitor-step records, in step order.
        step: the step shown first (None: the last).
        alerts: alert records of the run, shown as a list.
    """
    initial = pick(records, step)["step"]
    layers = list(dict.fromkeys(layer for r in records for layer in r["layers"]))
    present = {t for r in records for tensors in r["layers"].values() for t in tensors}
    return _finite(
        {
            "records": [
                {k: r[k] for k in ("step", "layers", "first_non_finite") if k in r} for r in records
            ],
            "layers": layers,
            "tensors": [t for t in TENSORS if t in present],
            "initial_step": initial,
            "bands": [
                {"label": label, "lo": lo, "hi": hi, "fill": fill} for label, lo, hi, fill in BANDS
            ],
            "limits": [
                {"label": label, "log2": x, "colour": HTML_COLOURS[colour], "dash": JS_DASH[style]}
                for label, x, colour, style in LIMITS
            ],
            "alerts": list(alerts),
        }
    )


def _alerts(record: dict[str, Any]) -> list[Any]:
    # A watchdog record holds its step and a list of alerts; any other record is shown whole.
    alerts = record.get("alerts")
    if isinstance(alerts, list):
        return [{"step": record.get("step"), **a} if isinstance(a, dict) else a for a in alerts]
    return [record]


def alert_line(alert: Any) -> str:
    """One alert as the console states it: ``step 10: head/act_grad RMS 0.001 < 0.01``.

    Args:
        alert: an alert of a watchdog record, with the record's step.
    """
    if isinstance(alert, dict) and {"layer", "tensor", "reasons"} <= alert.keys():
        reasons = alert["reasons"]
        text = "; ".join(map(str, reasons)) if isinstance(reasons, list) else str(reasons)
        return f"step {alert.get('step')}: {alert['layer']}/{alert['tensor']} {text}"
    return json.dumps(alert)


def render_html(
    records: list[dict[str, Any]], step: int | None, alerts: list[dict[str, Any]] = ()
) -> str:
    """A self-contained interactive HTML page (inline script and style, no network).

    A step slider and a layer filter drive, per layer and tensor, the log2|x| histogram at the
    selected step with the E4M3, E5M2 and fp16 ranges marked (RMS only where a record has no
    histogram), the scale profile, the RMS-over-steps curves and a table of the step's values.

    Args:
        records: monitor-step records, in step order.
        step: the step shown first (None: the last).
        alerts: alert records of the run, listed under the controls.
    """
    data = json.dumps(dashboard_data(records, step, alerts), allow_nan=False)
    data = data.replace("<", "\\u003c")  # no text in the data can close or open a script element
    items = "".join(f"<li>{html.escape(alert_line(a))}</li>" for r in alerts for a in _alerts(r))
    alert_list = f"<h2>Alerts</h2><ul id='alerts'>{items}</ul>" if alerts else ""
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>scales</title><style>"
        "body{font-family:sans-serif;margin:12px;background:#fff} canvas{margin:2px}"
        "td,th{padding:2px 8px;text-align:right;font-size:12px}"
        "table{border-collapse:collapse} tr:nth-child(even){background:#f3f3f3}"
        ".controls{position:sticky;top:0;background:#fff;padding:4px 0;z-index:1}"
        ".controls label{margin-right:10px} #step{width:420px;vertical-align:middle}"
        ".swatch{display:inline-block;width:12px;height:12px;margin:0 3px 0 10px}"
        ".legend{font-size:12px} .hist-row{white-space:nowrap} #non-finite{color:#b00}"
        ".gap{display:inline-block;width:274px}"
        "</style></head><body>"
        "<h1>Scales</h1><div class='controls'>"
        "<label>step <input type='range' id='step' min='0' step='1'> "
        "<b id='step-label'></b></label> <b id='non-finite'></b>"
        "<div id='layers'>layers: </div></div>"
        f"{alert_list}"
        "<h2>log2 |x| at the selected step</h2><div class='legend' id='legend'></div>"
        "<p class='legend'>Bars: share of non-zero elements per power of two (scaled to the "
        "tallest bin); black line: log2 RMS.</p><div id='histograms'></div>"
        "<h2>Scale profile (log2 RMS)</h2><canvas id='profile' width='900'></canvas>"
        "<h2>RMS over steps</h2><div class='legend' id='layer-legend'></div>"
        "<div id='curves'></div>"
        "<h2>Values at the selected step</h2><table id='values'></table>"
        f"<script type='application/json' id='scales-data'>{data}</script>"
        f"<script>{SCRIPT.read_text()}</script></body></html>"
    )


def build_parser() -> ArgumentParser:
    """The ``scales`` tool's parser."""
    parser = tool_parser(
        "scales", "Render the scale profile and RMS curves of a run from its scales.jsonl."
    )
    parser.add_argument("run_dir", type=Path, help="run directory (or its scales.jsonl)")
    parser.add_argument(
        "--out",
        type=Path | None,
        default=None,
        help="output .html (profile, curves and a table) or .png (the profile; the curves go "
        "to <name>-curves.png beside it); default RUN_DIR/scales.html",
    )
    parser.add_argument(
        "--step", type=int | None, default=None, help="profile step (default: last)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m lit_unitscale scales``.

    Args:
        argv: arguments after the subcommand name.
    """
    args = parse_arguments(build_parser(), argv, ScalesError, "scales")
    try:
        records, alerts = read_jsonl(args.run_dir)
        run_dir = args.run_dir if args.run_dir.is_dir() else args.run_dir.parent
        out = args.out or run_dir / "scales.html"
        if out.suffix == ".png":
            profile, curves = render_png(records, args.step)
            out.write_bytes(profile)
            curves_out = out.with_name(out.stem + "-curves.png")
            curves_out.write_bytes(curves)
            print(f"wrote {out} and {curves_out}")
        elif out.suffix in (".html", ".htm"):
            out.write_text(render_html(records, args.step, alerts))
            print(f"wrote {out}")
        else:
            raise ScalesError(f"--out must end in .html or .png, got {out}")
    except ScalesError as err:
        print(f"scales: {err}", file=sys.stderr)
        return 1
    return 0
