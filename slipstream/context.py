"""Run-time context shared by the frontend (which sets it) and the kernel-selection step (which reads it)."""
from __future__ import annotations

import contextvars
from typing import Callable

# The dotted path of the unit whose forward is running: one captured graph can serve many units (layers).
CURRENT_UNIT: contextvars.ContextVar[str] = contextvars.ContextVar("slipstream_unit", default="")

# Where run-time choices are recorded (pass, unit, site, implementation, reason): the running model's report. Written
# by attention's dispatch (fuse-attention) and slipstream::mrope_select (fold-mrope).
DECISIONS: contextvars.ContextVar[set | None] = contextvars.ContextVar("slipstream_decisions", default=None)


def record_decision(pass_name: str, unit: str, site: str, label: str | Callable[[], str], reason: str) -> None:
    """Record a run-time choice in the running model's report, if one is listening (an op called outside an
    optimized model records nothing). `label` may be a callable, evaluated only then; `unit` names the graph's
    capturing unit, used when no unit is running."""
    sink = DECISIONS.get()
    if sink is not None:
        sink.add((pass_name, CURRENT_UNIT.get() or unit, site, label() if callable(label) else label, reason))


# Bisection (debug/bisect.py): how many more matches a pass may apply; None = no limit. Pass.find consults it.
REWRITE_BUDGET: contextvars.ContextVar = contextvars.ContextVar("slipstream_rewrite_budget", default=None)

# Bisection: the probe (debug/bisect.py) choosing which rewritten variant of each graph runs; None = the real one.
BISECT_PROBE: contextvars.ContextVar = contextvars.ContextVar("slipstream_bisect_probe", default=None)
