"""Pattern-matching passes that rewrite captured graphs into calls to slipstream's canonical ops."""
from .. import kernels  # noqa: F401  (registers the slipstream:: ops that rewrites emit)
from .base import Pass, PassOptions, PassStats, Rejection, Rule
from .manager import PassManager
from .pipeline import PassSpec, Pipeline, PipelineError
from .registry import PASSES, PRESETS

__all__ = ["PASSES", "PRESETS", "Pass", "PassManager", "PassOptions", "PassSpec", "PassStats", "Pipeline",
           "PipelineError", "Rejection", "Rule"]
