"""Pattern-matching passes that rewrite captured graphs into calls to slipstream's canonical ops."""
from .base import Pass, PassOptions, PassStats, Rejection, Rule
from .manager import PassManager
from .pipeline import PassSpec, Pipeline, PipelineError
from .registry import PASSES, PRESETS

__all__ = ["PASSES", "PRESETS", "Pass", "PassManager", "PassOptions", "PassSpec", "PassStats", "Pipeline",
           "PipelineError", "Rejection", "Rule"]
