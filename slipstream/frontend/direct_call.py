"""Calling a captured unit without torch.compile's per-call machinery.

For each compiled code object dynamo keeps a list of cache entries, each a guard manager and the transformed
code that feeds the rewritten graph its inputs and replays the frame's side effects (the KV cache's attribute
writes). A call through torch.compile's wrapper installs the frame-evaluation hook, evaluates the entries'
guards in C++ and runs the first entry that passes. Measured on a 2-core CPU (torch 2.13), the wrapper and the
hook cost about 100 us per call: more than a tiny decoder layer's whole decode step on the reference path.

`DirectEntries` makes the same choice itself: it evaluates each entry's own guard manager on the call's locals,
the most recently used entry first as dynamo does, and runs the first passing entry's transformed code as a plain
function. Same guards, same code, same result (minus dynamo's disable wrappers around the graph and helpers
that code calls: with no frame-evaluation callback installed they do nothing but cost time). Everything else goes
through torch.compile exactly as before:
- a call no entry accepts (dynamo then compiles a new entry, which later calls find);
- an entry that calls into the traced code itself after a graph break (those frames need the hook);
- calls while dynamo traces (a user's torch.compile around the model, export) or while a frame-evaluation
  callback is installed (a resumed frame of a compiled function), or under a non-default stance
  (`torch.compiler.set_stance("force_eager")` must still force eager);
- torch versions whose cache entries lack these internals (checked once, then always the wrapper), and
  `SLIPSTREAM_DIRECT_CALLS=0` in the environment (the escape hatch should a torch release change them).
"""
from __future__ import annotations

import dis
import os
import types
import warnings
from typing import Any, Callable

import torch

try:  # private dynamo internals: present from torch 2.6 (guard_manager on cache entries) to 2.13 at least
    from torch._C._dynamo.eval_frame import _debug_get_cache_entry_list as _cache_entries
    from torch._C._dynamo.eval_frame import get_eval_frame_callback as _frame_callback
    from torch._dynamo import eval_frame as _eval_frame
    _SUPPORTED = hasattr(_eval_frame, "_stance")
except ImportError:  # pragma: no cover - depends on the torch build
    _cache_entries, _frame_callback, _eval_frame, _SUPPORTED = None, None, None, False

# torch-internal helpers are wrapped by `torch._disable_dynamo`, which disables lazily; its wrappers share this code
_lazy_disable = getattr(torch._compile, "_disable_dynamo", None)
_LAZY_DISABLE_CODE = _lazy_disable(lambda: None).__code__ if _lazy_disable is not None else None

# The escape hatch (SLIPSTREAM_DIRECT_CALLS=0: every call through torch.compile), also set by benchmarks to compare.
ENABLED = os.environ.get("SLIPSTREAM_DIRECT_CALLS", "1").strip() != "0"


class DirectEntries:
    """Callable like `compiled` (torch.compile of `function(*args, **kwargs)`, possibly wrapped, e.g. in a config
    patch); counts how calls were served."""

    def __init__(self, compiled: Callable, function: types.FunctionType):
        code = function.__code__
        if code.co_varnames[:2] != ("args", "kwargs") or code.co_argcount or code.co_kwonlyargcount:
            raise ValueError("DirectEntries wraps a function of (*args, **kwargs) only")
        self._compiled, self._code, self._function = compiled, code, function
        cells = function.__closure__ or ()
        self._closure = dict(zip(code.co_freevars, (c.cell_contents for c in cells)))
        # keyed by id(): hashing a code object hashes its bytecode and constants (~100 us for a layer's).
        # The code object is kept in the value, so the id stays its own.
        self._runners: dict[int, tuple[types.CodeType, Callable | None]] = {}
        self._last: types.CodeType | None = None  # the entry the previous direct call ran: checked first
        self.direct_calls = 0
        self.compiled_calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if (ENABLED and _SUPPORTED and _eval_frame._stance.stance == "default" and _frame_callback() is None
                and not torch.compiler.is_compiling()):
            runner = self._find(args, kwargs)
            if runner is not None:
                self.direct_calls += 1
                return runner(*args, **kwargs)
        self.compiled_calls += 1
        return self._compiled(*args, **kwargs)

    def _find(self, args: tuple, kwargs: dict) -> Callable | None:
        """The transformed code of the first entry whose guards pass, or None (then torch.compile decides)."""
        frame_locals = {"args": args, "kwargs": kwargs, **self._closure}
        try:
            entries = [(entry.code, entry.guard_manager.check) for entry in _cache_entries(self._code)]
        except (AttributeError, TypeError) as error:  # internals of another torch: never guess, stop trying
            _unsupported(error)
            return None
        # Any entry whose guards pass is valid for the call; dynamo takes the most recently used one, and so do we
        # (generation alternates a few variants; a failing check still costs up to ~20 us).
        entries.sort(key=lambda e: e[0] is not self._last)
        for code, check in entries:
            try:
                passed = check(frame_locals)
            except Exception:  # a guard that raises on these arguments: torch.compile's own path decides
                return None
            if passed:
                self._last = code
                return self._runner(code)  # None: it needs the hook, so dynamo runs it
        return None

    def _runner(self, code: types.CodeType) -> Callable | None:
        known = self._runners.get(id(code))
        if known is None:
            f = self._function
            known = self._runners[id(code)] = (code, types.FunctionType(
                code, _unwrapped_globals(code, f.__globals__), f.__name__, f.__defaults__, f.__closure__)
                if _self_contained(code) else None)
        return known[1]


def _self_contained(code: types.CodeType) -> bool:
    """Whether transformed code runs one captured graph and replays its side effects without calling the traced
    function's own code. After a graph break it calls that code (the wrapped `call`, or a resume function), whose
    frames the hook would capture in turn: run without the hook they would run unfused."""
    names = code.co_names
    if not any(n.startswith("__compiled_fn") for n in names) or any(n.startswith("__resume_at") for n in names):
        return False
    return not any(i.opname in ("LOAD_DEREF", "LOAD_CLOSURE") for i in dis.get_instructions(code))


def _unwrapped(value: Any) -> Any:
    """`value` without dynamo's disable wrappers. Such a wrapper sets the frame-evaluation callback to None
    around the call (so dynamo never traces into it) and restores it; direct calls run only when no callback is
    installed, where the wrapper does nothing but cost ~5 us."""
    while getattr(value, "__wrapped__", None) is not None and (
            getattr(value, "_torchdynamo_disable", False)
            or getattr(value, "__code__", None) is _LAZY_DISABLE_CODE):
        value = value.__wrapped__
    return value


def _unwrapped_globals(code: types.CodeType, module_globals: dict) -> dict:
    """The globals transformed code reads (dynamo's `__compiled_fn_*` and `__import_*` names), with disable
    wrappers removed, also from the attributes it reads off an imported module (`torch._dynamo.utils` helpers)."""
    names = set(code.co_names)
    out = {"__builtins__": module_globals["__builtins__"]}
    for name in names & module_globals.keys():
        value = module_globals[name]
        if isinstance(value, types.ModuleType):
            attrs = {a: getattr(value, a) for a in names if hasattr(value, a)}
            plain = {a: _unwrapped(v) for a, v in attrs.items()}
            if any(plain[a] is not attrs[a] for a in attrs):
                value = types.SimpleNamespace(**plain)
        out[name] = _unwrapped(value)
    return out


def _unsupported(error: Exception) -> None:
    global _SUPPORTED
    _SUPPORTED = False
    warnings.warn(f"slipstream: this torch ({torch.__version__}) does not expose dynamo's cache entries as expected "
                  f"({type(error).__name__}: {error}); captured units now run through torch.compile's wrapper on "
                  "every call (correct, ~100 us slower per call)", RuntimeWarning, stacklevel=3)


def supported() -> bool:
    """Whether this torch exposes what direct calls need (else every call goes through torch.compile)."""
    return _SUPPORTED
