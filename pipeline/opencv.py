"""OpenCV, imported on first use and kept to one thread per process: :func:`cv2`.

The workflow runs in parallel by processes (Snakemake jobs, quantify-ihc's and score-tiles' worker processes), each
sized to its cores; OpenCV's own thread pool on top would oversubscribe them, and a pool started before a fork is
not there in the child.
"""

from __future__ import annotations

import functools


@functools.cache
def cv2():
    """The ``cv2`` module, set to one thread."""
    import cv2 as module

    module.setNumThreads(1)
    return module
