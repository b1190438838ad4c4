"""The W&B workspace for scales, defined as code: ``python -m lit_unitscale dashboard``.

    python -m lit_unitscale dashboard push --entity E --project P [--name Scales]
    python -m lit_unitscale dashboard spec --entity E --project P      # print it (offline)
    python -m lit_unitscale dashboard spec --entity E --project P --run-dir runs/ptb-tiny

One section per tensor kind (activations, activation gradients, weights, weight gradients,
updates) with the RMS of every layer on a log scale, the FP8 underflow/overflow fractions, the
histogram of log2 |x| of each layer over steps (the E4M3, E5M2 and fp16 normal ranges named
on its axis and tabulated in a note), and a "scale profile" section showing the ``scales/profile``
table the ScaleMonitor logs at each monitor step (layers x log2 RMS with the FP8 range in its
columns). Saving needs a reachable W&B server and an API key; building and printing the
spec does not (``--run-dir`` names the layers as a run recorded them).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from jsonargparse import ArgumentParser

from lit_unitscale.callbacks.scale_wandb import HIST_STAT, PROFILE_KEY
from lit_unitscale.errors import ToolError
from lit_unitscale.tools.arguments import documented, parse_arguments, tool_parser
from lit_unitscale.tools.scales import FP16_MAX, FP16_MIN_NORMAL, ScalesError, load_records
from lit_unitscale.unit.fp8 import E4M3, E5M2

TENSOR_TITLES = {
    "act": "activations",
    "act_grad": "activation gradients",
    "weight": "weights",
    "weight_grad": "weight gradients",
    "update": "updates",
}
PROFILE_SECTION = "scale profile"
PROFILE_NOTE = (
    "Each row of `scales/profile` is one layer and tensor at one monitor step: `log2_rms`, "
    "its direction (forward, backward, update) and the FP8 normal range "
    "(`e4m3_min_log2`..`e4m3_max_log2`, `e5m2_...`, `in_<fmt>_range`). Unit scaling keeps "
    "`log2_rms` near 0, well inside both ranges."
)


def _range(lo: float, hi: float) -> str:
    return f"{math.log2(lo):.0f}..{math.log2(hi):.1f}"


# The histograms' value axis, marking the normal ranges where a panel cannot draw lines.
HIST_AXIS = (
    f"log2 |x| (normal: E4M3 {_range(E4M3.min_normal, E4M3.max_value)}, "
    f"E5M2 {_range(E5M2.min_normal, E5M2.max_value)}, fp16 {_range(FP16_MIN_NORMAL, FP16_MAX)})"
)


def ranges_note() -> str:
    """Markdown marking the formats' normal ranges on the histograms' log2 |x| axis."""
    rows = [
        (name, lo, hi)
        for name, lo, hi in (
            ("E4M3", E4M3.min_normal, E4M3.max_value),
            ("E5M2", E5M2.min_normal, E5M2.max_value),
            ("fp16", FP16_MIN_NORMAL, FP16_MAX),
        )
    ]
    table = "\n".join(
        f"| {name} | {math.log2(lo):.0f} | {math.log2(hi):.2f} | {hi:g} |" for name, lo, hi in rows
    )
    return (
        "Histograms: share of a tensor's elements per power of two, `log2 |x|` on the value "
        "axis, one bin per exponent. A tensor fits a format where its mass lies inside the "
        "format's normal range:\n\n| format | min normal (log2) | max (log2) | max |\n"
        f"|---|---|---|---|\n{table}\n\nBelow the minimum it underflows (subnormals, then "
        "zero); above the maximum E4M3 saturates and E5M2/fp16 overflow to inf."
    )


class DashboardError(ToolError):
    """A problem the user can fix; printed as one line."""


def _series(tensor: str, stat: str, layers: Sequence[str] | None) -> dict[str, Any]:
    # Known layers give explicit keys; otherwise a regex picks up every layer of any depth.
    if layers:
        return {"y": [f"scales/{layer}/{tensor}/{stat}" for layer in layers]}
    return {"metric_regex": f"^scales/[^/]+/{tensor}/{stat}$"}


def _histograms(tensor: str, title: str, layers: Sequence[str] | None) -> list[Any]:
    # W&B draws a histogram-valued key in a line plot as its distribution over steps; one panel
    # per layer keeps the layers apart (a regex panel when the layers are not known).
    import wandb_workspaces.reports.v2 as wr

    per_layer = [(layer, _series(tensor, HIST_STAT, [layer])) for layer in layers or []]
    return [
        wr.LinePlot(
            title=f"{title}: log2 |x| histogram, {layer or 'every layer'}",
            x="Step",
            title_y=HIST_AXIS,
            **series,
        )
        for layer, series in per_layer or [(None, _series(tensor, HIST_STAT, None))]
    ]


def build_workspace(
    entity: str,
    project: str,
    name: str = "Scales",
    layers: Sequence[str] | None = None,
    formats: Sequence[str] = ("e4m3", "e5m2"),
):
    """The workspace object (``wandb_workspaces.workspaces.Workspace``); nothing is sent.

    Args:
        entity: W&B entity (user or team).
        project: W&B project.
        name: the saved view's name.
        layers: layer names for explicit series (default: a regex matching every layer).
        formats: FP8 formats whose underflow/overflow panels are added.
    """
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    sections = []
    for tensor, title in TENSOR_TITLES.items():
        panels = [
            wr.LinePlot(
                title=f"{title}: RMS per layer",
                log_y=True,
                x="Step",
                **_series(tensor, "rms", layers),
            )
        ]
        for fmt in formats:
            for kind in ("underflow", "overflow"):
                panels.append(
                    wr.LinePlot(
                        title=f"{title}: {kind} {fmt.upper()} (fraction)",
                        x="Step",
                        **_series(tensor, f"{kind}_{fmt}", layers),
                    )
                )
        panels += _histograms(tensor, title, layers)
        sections.append(ws.Section(name=f"scales: {title}", panels=panels, is_open=True))
    sections.append(
        ws.Section(
            name=PROFILE_SECTION,
            panels=[
                wr.WeavePanelSummaryTable(table_name=PROFILE_KEY),
                wr.MarkdownPanel(markdown=PROFILE_NOTE),
                wr.MarkdownPanel(markdown=ranges_note()),
            ],
            is_open=True,
        )
    )
    return ws.Workspace(entity=entity, project=project, name=name, sections=sections)


def push(workspace) -> str:
    """Save ``workspace`` to the W&B server; returns its URL.

    Args:
        workspace: from :func:`build_workspace`.
    """
    import wandb

    try:
        wandb.Api(timeout=10)  # raises without an API key
        workspace.save()
    except wandb.errors.UsageError as err:
        raise DashboardError(f"{err} (or set WANDB_API_KEY)") from None
    except Exception as err:  # network, auth and server errors all end here
        raise DashboardError(
            f"could not save the workspace to the W&B server ({type(err).__name__}: {err})"
        ) from None
    return workspace.url


def build_parser() -> ArgumentParser:
    """The ``dashboard`` tool's parser; the help is :func:`build_workspace`'s."""
    docs = documented(build_workspace)
    parser = tool_parser(
        "dashboard", "The W&B scales workspace: push it to a server or print its spec."
    )
    parser.add_argument(
        "action", type=Literal["push", "spec"], help="push: save it; spec: print its JSON"
    )
    parser.add_argument("--entity", type=str, required=True, help=docs["entity"])
    parser.add_argument("--project", type=str, required=True, help=docs["project"])
    parser.add_argument("--name", type=str, default="Scales", help=docs["name"])
    parser.add_argument("--layers", type=str, nargs="+", default=None, help=docs["layers"])
    parser.add_argument(
        "--run-dir",
        type=Path | None,
        default=None,
        help="take the layer names from this run's scales.jsonl (instead of --layers)",
    )
    parser.add_argument(
        "--formats", type=str, nargs="+", default=["e4m3", "e5m2"], help=docs["formats"]
    )
    return parser


def run_layers(run_dir: Path) -> list[str]:
    """Layer names of a run, in the order its scales.jsonl first lists them.

    Args:
        run_dir: a run directory or its scales.jsonl.
    """
    try:
        records = load_records(run_dir)
    except ScalesError as err:
        raise DashboardError(str(err)) from None
    return list(dict.fromkeys(layer for r in records for layer in r["layers"]))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m lit_unitscale dashboard``.

    Args:
        argv: arguments after the subcommand name.
    """
    args = parse_arguments(build_parser(), argv, DashboardError, "dashboard")
    try:
        if args.run_dir is not None and args.layers:
            raise DashboardError("give --layers or --run-dir, not both")
        layers = run_layers(args.run_dir) if args.run_dir is not None else args.layers
    except DashboardError as err:
        print(f"dashboard: {err}", file=sys.stderr)
        return 1
    workspace = build_workspace(args.entity, args.project, args.name, layers, args.formats)
    if args.action == "spec":
        # The serialised view is what `push` sends; the converter is the package's own.
        print(workspace._to_model().model_dump_json(indent=1))
        return 0
    try:
        print(f"saved {push(workspace)}")
    except DashboardError as err:
        print(f"dashboard: {err}", file=sys.stderr)
        return 1
    return 0
