"""ExportError: a model or option an exporter cannot represent faithfully (nothing is written)."""
from __future__ import annotations


class ExportError(ValueError):
    """A model or option an exporter cannot represent faithfully; the message names the way out."""
