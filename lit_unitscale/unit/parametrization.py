"""``umup`` | ``sp``: which functional ops and which init a module uses."""

from __future__ import annotations

from types import ModuleType
from typing import Literal

Parametrization = Literal["umup", "sp"]
PARAMETRIZATIONS = ("umup", "sp")


def functional_for(parametrization: Parametrization) -> ModuleType:
    """The functional-op namespace for ``parametrization``.

    Args:
        parametrization: ``"umup"`` (unit-scaled ops) or ``"sp"`` (plain torch ops).
    """
    if parametrization == "umup":
        from lit_unitscale.unit import functional

        return functional
    if parametrization == "sp":
        from lit_unitscale.unit import standard

        return standard
    raise ValueError(f"parametrization must be one of {PARAMETRIZATIONS}, got {parametrization!r}")
