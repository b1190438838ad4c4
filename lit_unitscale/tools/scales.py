"""Offline scale dashboard from a run's ``scales.jsonl``: ``python -m lit_unitscale scales``.

    python -m lit_unitscale scales runs/ptb-tiny                      # -> runs/ptb-tiny/scales.html
    python -m lit_unitscale scales runs/ptb-tiny --out scales.png --step 100

The scale profile shows one row per layer and tensor at one step on a log2 axis, forward
tensors (activations, weights) and backward tensors (their gradients) in different colours,
updates in a third, with the FP8 E4M3/E5M2 and fp16 ranges as vertical lines. The curves show
each tensor kind's RMS over steps, one line per layer. HTML embeds both as PNGs plus a table.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

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


class ScalesError(Exception):
    """A problem the user can fix; printed as one line."""


def find_jsonl(path: Path) -> Path:
    """``path`` itself, ``path/scales.jsonl``, or the newest ``scales.jsonl`` below ``path``.

    Args:
        path: a run directory or a scales.jsonl file.
    """
    if path.is_file():
        return path
    if (path / JSONL_NAME).is_file():
        return path / JSONL_NAME
    found = sorted(path.rglob(JSONL_NAME), key=lambda p: p.stat().st_mtime) if path.is_dir() else []
    if not found:
        raise ScalesError(f"no {JSONL_NAME} in {path} (was the run trained with ScaleMonitor?)")
    return found[-1]


def load_records(path: Path) -> list[dict[str, Any]]:
    """Monitor-step records from a scales.jsonl, in step order (the last of repeated steps).

    Args:
        path: a run directory or a scales.jsonl file.
    """
    by_step: dict[int, dict[str, Any]] = {}
    for line in find_jsonl(path).read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_step[record["step"]] = record
    if not by_step:
        raise ScalesError(f"{path}: {JSONL_NAME} is empty")
    return [by_step[s] for s in sorted(by_step)]


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


def render_html(records: list[dict[str, Any]], step: int | None) -> str:
    """A self-contained HTML page: the two PNGs and a table of the profile step's values."""
    record = pick(records, step)
    profile, curves = render_png(records, step)
    stats = [k for k in next(iter(next(iter(record["layers"].values())).values()))]
    head = "".join(f"<th>{html.escape(s)}</th>" for s in ["layer", "tensor", "log2 rms", *stats])
    body = []
    for layer, tensors in record["layers"].items():
        for tensor, values in tensors.items():
            cells = [layer, tensor, f"{_log2(values['rms']):.2f}"]
            cells += [f"{values[s]:.4g}" for s in stats]
            body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    bad = record.get("first_non_finite")
    warning = f"<p><b>non-finite first at {'/'.join(bad)}</b></p>" if bad else ""
    img = lambda png: f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}">'  # noqa: E731
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>scales</title>"
        "<style>body{font-family:sans-serif} td,th{padding:2px 8px;text-align:right}"
        "table{border-collapse:collapse} tr:nth-child(even){background:#f3f3f3}</style></head>"
        f"<body><h1>Scales, step {record['step']}</h1>{warning}{img(profile)}"
        f"<h2>RMS over steps</h2>{img(curves)}"
        f"<h2>Values at step {record['step']}</h2><table><tr>{head}</tr>{''.join(body)}</table>"
        "</body></html>"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lit_unitscale scales",
        description="Render the scale profile and RMS curves of a run from its scales.jsonl.",
    )
    parser.add_argument("run_dir", type=Path, help="run directory (or its scales.jsonl)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output .html (profile, curves and a table) or .png (the profile; the curves go "
        "to <name>-curves.png beside it); default RUN_DIR/scales.html",
    )
    parser.add_argument("--step", type=int, default=None, help="profile step (default: last)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m lit_unitscale scales``.

    Args:
        argv: arguments after the subcommand name.
    """
    args = build_parser().parse_args(argv)
    try:
        records = load_records(args.run_dir)
        run_dir = args.run_dir if args.run_dir.is_dir() else args.run_dir.parent
        out = args.out or run_dir / "scales.html"
        if out.suffix == ".png":
            profile, curves = render_png(records, args.step)
            out.write_bytes(profile)
            curves_out = out.with_name(out.stem + "-curves.png")
            curves_out.write_bytes(curves)
            print(f"wrote {out} and {curves_out}")
        elif out.suffix in (".html", ".htm"):
            out.write_text(render_html(records, args.step))
            print(f"wrote {out}")
        else:
            raise ScalesError(f"--out must end in .html or .png, got {out}")
    except ScalesError as err:
        print(f"scales: {err}", file=sys.stderr)
        return 1
    return 0
