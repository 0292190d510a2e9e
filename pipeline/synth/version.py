"""What identifies the synthetic-slide generator: :data:`VERSION` and :func:`sources_hash` of its code.

Caches of generated data (the sample cohort's ``.stamp``, rendered training patches) key on both, so a change
to any module of :mod:`pipeline.synth` regenerates them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

VERSION = 1


def sources_hash() -> str:
    """16 hex digits of the SHA-256 of the names and contents of every .py file of pipeline/synth (sorted)."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]
