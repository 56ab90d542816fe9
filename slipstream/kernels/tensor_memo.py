"""A small memo for facts read off a tensor's values (which kind of mask it is, whether mRoPE's position axes are
equal). A forward hands the same mask / cos-sin table object to every layer, so remembering the answer for that
object (while its version counter is unchanged: no in-place write since) turns one check per layer, each a device
sync on GPU, into one per forward."""
from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, Hashable

import torch


class TensorMemo:
    def __init__(self, size: int = 4):
        self._entries: list[tuple[weakref.ref, int, Hashable, Any]] = []
        self._size = size
        self._lock = threading.Lock()

    def get(self, t: torch.Tensor, key: Hashable, compute: Callable[[], Any]) -> Any:
        """`compute()`'s answer for (`t`, `key`), computed once per tensor object and version."""
        with self._lock:
            for ref, version, k, value in self._entries:
                if ref() is t and version == t._version and k == key:
                    return value
        value = compute()
        with self._lock:
            self._entries.insert(0, (weakref.ref(t), t._version, key, value))
            del self._entries[self._size:]
        return value
