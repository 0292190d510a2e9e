"""Command line: ``python -m pipeline VERB [options]``, one verb per workflow rule.

Only the module that implements the chosen verb is imported, so verbs that do not need torch
never pay for importing it; nor do they import pandas (:func:`cli`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from pipeline.errors import TriageError

# verb -> (module, one-line help). The module provides configure_parser(parser) and run(args).
VERBS: dict[str, tuple[str, str]] = {
    "validate": ("pipeline.config", "check config.yaml and the sample sheet against their schemas"),
    "make-slides": ("pipeline.synth.make_slides", "generate synthetic H&E/IHC slides (sample cohort, benchmarks)"),
    "qc-slide": ("pipeline.slides.qc", "open a slide, check quality, find tissue"),
    "tile-slide": ("pipeline.slides.tiling", "lay the tile grid at target_mpp over the tissue"),
    "score-tiles": ("pipeline.he.scoring", "score H&E tiles with the CNN"),
    "quantify-ihc": ("pipeline.ihc.quantify", "quantify DAB per tile and per slide for an IHC slide"),
    "register-ihc": ("pipeline.ihc.register", "register an IHC slide onto its H&E slide (serial sections)"),
    "compare-scans": ("pipeline.ihc.scan_pair",
                      "one IHC section scanned twice: register, read the marker on both over the same tiles"),
    "summarize-slide": ("pipeline.outputs.summary", "write the per-slide summary.json (slide call, QC, IHC)"),
    "draw-slide": ("pipeline.outputs.figures", "draw heatmap, tissue overlay and top-tile pictures"),
    "export-geojson": ("pipeline.outputs.geojson", "write QuPath GeoJSON of tiles and tissue outline"),
    "call-case": ("pipeline.case.call", "combine a case's H&E and IHC evidence into a case call"),
    "panel": ("pipeline.case.panel", "a case typed by hand (H&E call, marker results) through the panel rules"),
    "make-report": ("pipeline.outputs.report", "write the cohort worklist and HTML review page"),
    "train": ("pipeline.training.train", "train a small CNN end to end (the v1 baseline) and write weights + card"),
    "train-model": ("pipeline.training.train_model",
                    "fit the tile classifier on real images; select by leave-one-source-out"),
    "evaluate": ("pipeline.training.evaluate", "a model on labelled real patches: per-source AUC, accuracy, OOD share"),
    "benchmark": ("pipeline.bench.benchmark", "measure every stage against its physical bound"),
    "view": ("pipeline.viewer.server",
             "review a finished run in the browser: deep-zoom slides with the evidence overlaid"),
    "bench-view": ("pipeline.bench.viewer",
                   "the viewer's deep-zoom tile latency, p95 cold and warm, on a run's slides"),
}


def _usage() -> str:
    width = max(len(v) for v in VERBS)
    lines = ["usage: python -m pipeline VERB [options]", "", "verbs:"]
    lines += [f"  {verb:<{width}}  {help_}" for verb, (_, help_) in VERBS.items()]
    lines += ["", "python -m pipeline VERB --help shows a verb's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"error: unknown verb {verb!r}; choose one of: {', '.join(VERBS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(VERBS[verb][0])
    parser = argparse.ArgumentParser(prog=f"python -m pipeline {verb}", description=VERBS[verb][1])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    module.configure_parser(parser)
    args = parser.parse_args(rest)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        module.run(args)
    except TriageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


# Verbs that import torch (seconds of start-up; pandas' third of a second does not matter there, and torch's own
# optional imports are left alone).
TORCH_VERBS = frozenset({"score-tiles", "train", "train-model", "evaluate", "benchmark"})


class _NoPandas:
    """Import finder under which ``import pandas`` raises ImportError, as if pandas were not installed. No verb
    uses pandas, but pyarrow imports it on its first array conversion whenever it can (the SLURM executor plugin
    installs it): 0.34 s in every job's process. The module is found (``importlib.util.find_spec`` answers, with no
    origin) and its loading refused, so code that probes with ``find_spec`` and code that imports under ``try``
    both carry on."""

    def find_spec(self, name, path=None, target=None):
        import importlib.machinery

        if name == "pandas" or name.startswith("pandas."):
            return importlib.machinery.ModuleSpec(name, self)
        return None

    @staticmethod
    def create_module(spec):
        raise ImportError(f"{spec.name} is not imported by slide-triage's verbs", name=spec.name)

    @staticmethod
    def exec_module(module):  # never reached: create_module refuses
        raise ImportError(f"{module.__name__} is not imported by slide-triage's verbs", name=module.__name__)


def cli() -> int:
    """``python -m pipeline`` and the ``slide-triage`` script: :func:`main` in a process of its own, set up for
    short-lived large arrays (``main`` itself leaves the process alone: tests call it in-process):

    * pandas is not imported, except by the :data:`TORCH_VERBS` (:class:`_NoPandas`);
    * NumPy does not ask for transparent huge pages (``NUMPY_MADVISE_HUGEPAGE=0`` unless the environment sets it;
      NumPy reads it when first imported, and worker processes inherit it). Each array of 4 MB or more is otherwise
      faulted in 2 MB pages, compacted for on the spot where the kernel defragments for madvise (the default):
      on the benchmark machine register-ihc spent 1.2-1.6 s of its 3.5-4.3 s in the kernel that way, 0.4-0.6 s
      without (``docs/benchmark.md``)."""
    verb = sys.argv[1] if len(sys.argv) > 1 else ""
    if verb not in TORCH_VERBS and "pandas" not in sys.modules:
        sys.meta_path.insert(0, _NoPandas())
    os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")
    return main()


if __name__ == "__main__":
    sys.exit(cli())
