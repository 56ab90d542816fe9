"""Import Qwen3-TTS's model code (package `qwen-tts`) without its audio stack.

Why this module exists: `import qwen_tts` runs a package `__init__` chain that imports librosa, soundfile, sox,
torchaudio and einops (89 packages with their dependencies, and torchaudio does not load beside every torch
build). The model code needs none of them: `core/models/modeling_qwen3_tts.py` imports only
`librosa.filters.mel` (used by the voice-clone speaker encoder's mel front end) and `Qwen3TTSTokenizer` (used
only by its hub `from_pretrained`), and the 12 Hz codec's `modeling_qwen3_tts_tokenizer_v2.py` imports only
transformers. So we register the parent packages as bare modules (their `__path__` set, their `__init__` not
run) and provide those two names where the real ones are missing: a `mel` that raises a clear error when called
(only voice cloning from audio needs it) and a tokenizer placeholder that says how to get the real one.

Install the package without its declared dependencies: `pip install --no-deps qwen-tts==0.1.1`
(it needs transformers 4.57.x, which slipstream pins).
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import sys
import types

PACKAGE = "qwen_tts"
MODELING = "qwen_tts.core.models.modeling_qwen3_tts"
CONFIGURATION = "qwen_tts.core.models.configuration_qwen3_tts"
CODEC_MODELING = "qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2"
CODEC_CONFIGURATION = "qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2"
INSTALL_HINT = "pip install --no-deps qwen-tts==0.1.1"


def _bare_package(name: str, path: list[str]) -> None:
    if name not in sys.modules:
        module = types.ModuleType(name)
        module.__path__ = path
        module.__package__ = name
        # a spec like a real package's: importlib.util.find_spec(name) raises on a module whose __spec__ is None
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        module.__spec__.submodule_search_locations = path
        sys.modules[name] = module


def _needs_audio(*_args, **_kwargs):
    raise RuntimeError("librosa is not installed: the mel front end of the voice-clone speaker encoder needs it "
                       "(pip install librosa); the talker, code predictor and codec decoder do not")


class _TokenizerPlaceholder:
    """Stands in for qwen_tts.Qwen3TTSTokenizer (the audio codec wrapper, which needs librosa/soundfile)."""

    @classmethod
    def from_pretrained(cls, *_args, **_kwargs):
        raise RuntimeError("Qwen3TTSTokenizer needs the audio stack; build the 12 Hz codec decoder with "
                           "slipstream.frontend.qwen3_tts.build_codec(config) and load its weights with "
                           "load_state_dict instead, or install qwen-tts with its dependencies")


@contextlib.contextmanager
def _librosa_mel():
    """A stand-in `librosa.filters.mel` while the modeling module imports, removed afterwards (it binds the name at
    import), so nobody else ever sees a fake librosa."""
    if importlib.util.find_spec("librosa") is not None:
        yield  # the real one is importable: let the modeling module use it
        return
    import transformers.modeling_utils  # noqa: F401  (transformers probes for librosa once: let it see none)
    librosa, filters = types.ModuleType("librosa"), types.ModuleType("librosa.filters")
    filters.mel, librosa.filters = _needs_audio, filters
    sys.modules.update({"librosa": librosa, "librosa.filters": filters})
    try:
        yield
    finally:
        for name in ("librosa", "librosa.filters"):
            sys.modules.pop(name, None)


def _register_parents() -> None:
    if PACKAGE in sys.modules:
        return  # registered before (or the real package is imported)
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"Qwen3-TTS support needs the qwen-tts package: {INSTALL_HINT}")
    root = list(spec.submodule_search_locations)[0]
    for name, sub in ((PACKAGE, ""), (f"{PACKAGE}.core", "/core"), (f"{PACKAGE}.core.models", "/core/models"),
                      (f"{PACKAGE}.core.tokenizer_12hz", "/core/tokenizer_12hz"),
                      (f"{PACKAGE}.inference", "/inference")):
        _bare_package(name, [root + sub])
    tokenizer = f"{PACKAGE}.inference.qwen3_tts_tokenizer"
    if tokenizer not in sys.modules:
        placeholder = types.ModuleType(tokenizer)
        placeholder.Qwen3TTSTokenizer = _TokenizerPlaceholder
        sys.modules[tokenizer] = placeholder


def import_module(name: str) -> types.ModuleType:
    """Import one of qwen-tts's model modules (e.g. MODELING) with the audio stack left out."""
    if name in sys.modules:
        return sys.modules[name]
    _register_parents()
    with _librosa_mel():
        return importlib.import_module(name)


def modeling() -> types.ModuleType:
    return import_module(MODELING)


def configuration() -> types.ModuleType:
    return import_module(CONFIGURATION)


def codec_modeling() -> types.ModuleType:
    return import_module(CODEC_MODELING)


def codec_configuration() -> types.ModuleType:
    return import_module(CODEC_CONFIGURATION)
