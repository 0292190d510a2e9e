"""Keep slide file names out of outputs: a scanner's file name can identify a patient (a TCGA barcode, an
accession number), so every failure reason written to a file says ``<slide file>`` instead of the path."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

REDACTED = "<slide file>"


def redact(text: str, slide_path: str | os.PathLike | None) -> str:
    """Replace the slide's path (as given, absolute, resolved) and file name in ``text`` by ``<slide file>``."""
    if not slide_path or not text:
        return text
    p = Path(slide_path)
    forms = {str(slide_path), str(p), os.path.abspath(p), p.name}
    with contextlib.suppress(OSError, RuntimeError):  # RuntimeError: a symlink loop
        forms.add(str(p.resolve()))
    for form in sorted((f for f in forms if f), key=len, reverse=True):  # longest first: paths before names
        text = text.replace(form, REDACTED)
    return text
