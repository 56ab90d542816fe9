"""Debug settings: the `[debug]` table of a config file and the debugging arguments of optimize()."""
from __future__ import annotations

from dataclasses import dataclass

PRINT_AFTER = ("change", "all", "none")


@dataclass(frozen=True)
class DebugOptions:
    print_after: str = "change"   # graph diff: passes that changed a graph | every pass | none (summary only)
    verify: bool = False          # numeric check of every rewrite on the first run's inputs (debug/verify.py)
    bisect: bool = False          # find the first rewrite that makes the model's output drift (debug/bisect.py)
    dump_dir: str = ""            # write graphs, region pictures, pipeline.txt and repro.py here (debug/dump.py)

    def __post_init__(self):
        if self.print_after not in PRINT_AFTER:
            raise ValueError(f"print-after must be one of {', '.join(PRINT_AFTER)}, not {self.print_after!r}")

    @property
    def keep_original(self) -> bool:
        """verify and bisect rerun each graph's input graph, so the trace keeps a copy of it."""
        return self.verify or self.bisect
