"""How the command line words an exception: (exit code, one line, hint). User errors exit 2, anything else 3."""
from __future__ import annotations


def describe(e: BaseException) -> tuple[int, str, str]:
    from .commands.common import UserError
    from .config import ConfigError
    from .passes.pipeline import PipelineError

    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    if isinstance(e, UserError):
        return 2, first, e.hint
    if isinstance(e, ConfigError):
        return 2, first, "`slipstream pipeline --print default` prints a valid config with every setting"
    if isinstance(e, PipelineError):
        lines = str(e).splitlines()
        where = f" ({lines[1].strip()!r})" if len(lines) > 1 else ""
        return 2, first + where, "`slipstream pipeline --list` shows every pass, its options and the presets"
    export_error = _export_error()
    if export_error is not None and isinstance(e, export_error):
        return 2, first, "see docs/gguf.md and docs/vllm.md for supported architectures and quantizations"
    if isinstance(e, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        return 2, first, "check the path"
    return 3, f"{type(e).__name__}: {first}", "this looks like a bug in slipstream or the model; rerun with " \
                                               "--debug for the traceback and report it"


def _export_error():
    try:
        from .backends.errors import ExportError
    except ImportError:
        return None
    return ExportError
