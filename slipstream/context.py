"""Run-time context shared by the frontend (which sets it) and the kernel-selection step (which reads it)."""
from __future__ import annotations

import contextvars

# The dotted path of the unit whose forward is running: one captured graph can serve many units (layers).
CURRENT_UNIT: contextvars.ContextVar[str] = contextvars.ContextVar("slipstream_unit", default="")

# Where the attention dispatcher records (unit, site, implementation, reason): the running model's report.
DECISIONS: contextvars.ContextVar[set | None] = contextvars.ContextVar("slipstream_decisions", default=None)
