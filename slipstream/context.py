"""Run-time context shared by the frontend (which sets it) and the kernel-selection step (which reads it)."""
from __future__ import annotations

import contextvars

# The dotted path of the unit whose forward is running: one captured graph can serve many units (layers).
CURRENT_UNIT: contextvars.ContextVar[str] = contextvars.ContextVar("slipstream_unit", default="")

# Where run-time choices are recorded (pass, unit, site, implementation, reason): the running model's report. Written
# by attention's dispatch (fuse-attention) and slipstream::mrope_select (fold-mrope).
DECISIONS: contextvars.ContextVar[set | None] = contextvars.ContextVar("slipstream_decisions", default=None)

# Bisection (debug/bisect.py): how many more matches a pass may apply; None = no limit. Pass.find consults it.
REWRITE_BUDGET: contextvars.ContextVar = contextvars.ContextVar("slipstream_rewrite_budget", default=None)

# Bisection: the probe (debug/bisect.py) choosing which rewritten variant of each graph runs; None = the real one.
BISECT_PROBE: contextvars.ContextVar = contextvars.ContextVar("slipstream_bisect_probe", default=None)
