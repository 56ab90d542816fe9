"""Exports are staged in temp files/directories (tempfile creates them private: 0600 / 0700) and renamed into
place; before the rename they get the mode a plain `open()` / `mkdir()` would have given them under the user's
umask, so a GGUF file or checkpoint directory is readable by whoever the user's files normally are (e.g. an Ollama
or vLLM service running as another user)."""
from __future__ import annotations

import os
import threading

_lock = threading.Lock()


def _umask() -> int:
    with _lock:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def as_if_created(path: str | os.PathLike) -> None:
    """chmod `path` to 0666 (files) or 0777 (directories) minus the umask."""
    mode = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, mode & ~_umask())
