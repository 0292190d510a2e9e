"""Provenance for per-slide outputs: which file, which model, which parameters, which code.

Everything here is byte-stable for the same inputs (no times, no host names, no absolute paths), so a summary
written twice from the same inputs is the same file. Run facts that do change (start/end time, host, argv)
belong in ``results/run_metadata.json`` (:func:`run_metadata`, written by the report rule).

Slide file identity -- the *fast hash* (``FAST_HASH_METHOD``): SHA-256 over

    b"slide-triage fast hash v1\\0" | file size (8 bytes, little-endian) | first 1 MiB | last 1 MiB
    | OpenSlide's ``openslide.quickhash-1`` property when OpenSlide opens the file (else nothing)

Measured on the development machine: 2 ms per file (any size) and 4 ms to open a slide with OpenSlide for the
quickhash, against 1.1 s per GiB for a full SHA-256 with the file in the page cache and 1.5 s per GiB from disk
(2-6 s for a typical 2-4 GiB whole-slide image, far more on network storage). Size + head + tail catch a
different, truncated or re-exported file; OpenSlide's quickhash adds its own digest of the smallest level and the
properties. The quickhash is mixed in, never written out: only allowlisted slide properties leave the slide.
``--full-hash`` adds a full SHA-256 where wanted.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import subprocess
from pathlib import Path

HEAD_TAIL_BYTES = 1 << 20
FAST_HASH_METHOD = "sha256(tag | size | first 1 MiB | last 1 MiB | openslide quickhash-1 if any)"
_FAST_HASH_TAG = b"slide-triage fast hash v1\0"
# Distributions whose versions shape the results (read from package metadata: nothing is imported).
PACKAGES = ("slide-triage", "numpy", "scipy", "scikit-image", "pillow", "pyarrow", "tifffile", "imagecodecs",
            "openslide-python", "openslide-bin", "torch", "torchvision", "jsonschema", "pyyaml")
# Config keys that name files or directories: they differ between machines and runs but not the science, so
# they are left out of the config hash (the marker knowledge base is hashed by content instead).
PATH_KEYS = ("samples", "markers", "model", "results")
GIT_COMMIT_ENV = "SLIDE_TRIAGE_GIT_COMMIT"


def _openslide_quickhash(path: Path) -> str | None:
    try:
        import openslide

        with openslide.OpenSlide(str(path)) as osr:
            return osr.properties.get("openslide.quickhash-1")
    except Exception:  # not an OpenSlide format, damaged file...: the hash goes on without it
        return None


def fast_file_hash(path: str | os.PathLike) -> dict:
    """The fast identity hash of a slide file (see the module docstring); ``{}``-free, JSON-ready."""
    p = Path(path)
    h = hashlib.sha256(_FAST_HASH_TAG)
    with open(p, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        h.update(size.to_bytes(8, "little"))
        h.update(fh.read(HEAD_TAIL_BYTES))
        if size > HEAD_TAIL_BYTES:
            fh.seek(max(HEAD_TAIL_BYTES, size - HEAD_TAIL_BYTES))
            h.update(fh.read(HEAD_TAIL_BYTES))
    quick = _openslide_quickhash(p)
    if quick:
        h.update(quick.encode())
    return {"method": FAST_HASH_METHOD, "fast_sha256": h.hexdigest(), "size_bytes": size,
            "includes_openslide_quickhash": bool(quick)}


def science_config_hash(config: dict) -> str:
    """SHA-256 of the canonical JSON of the config without its path keys (:data:`PATH_KEYS`)."""
    science = {k: v for k, v in config.items() if k not in PATH_KEYS}
    return hashlib.sha256(json.dumps(science, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@functools.cache
def package_versions() -> dict[str, str | None]:
    """Installed versions of :data:`PACKAGES` (None where not installed), from metadata only."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str:
    """The pipeline's git commit: ``$SLIDE_TRIAGE_GIT_COMMIT`` if set (installs without .git, CI), else
    ``git rev-parse HEAD`` in the package's own checkout, else ``"unknown"``."""
    env = os.environ.get(GIT_COMMIT_ENV)
    if env:
        return env.strip()
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = proc.stdout.strip()
    return commit if proc.returncode == 0 and len(commit) == 40 else "unknown"


def pipeline_provenance() -> dict:
    """Code facts shared by every output: package version, git commit, dependency versions."""
    from pipeline import __version__

    return {"pipeline_version": __version__, "git_commit": git_commit(), "packages": package_versions()}


def run_metadata(argv: list[str], started: str, finished: str) -> dict:
    """Facts about this run that change from run to run (kept out of the byte-stable outputs)."""
    import platform
    import socket
    import sys

    return {
        "started": started, "finished": finished, "host": socket.gethostname(), "argv": list(argv),
        "python": sys.version.split()[0], "platform": platform.platform(),
        "snakemake_version": package_versions_extra("snakemake"), "cwd": os.getcwd(),
        **pipeline_provenance(),
    }


def package_versions_extra(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
