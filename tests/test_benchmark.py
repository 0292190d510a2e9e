"""The benchmark verb: a one-batch run on a small generated slide (so the script cannot rot) and its parts."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import blob_image, write_pyramid_tiff
from pipeline.bench import endtoend, inputs, readbench, targets
from pipeline.errors import TriageError


def test_quick_benchmark_runs_every_measurement(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "pipeline", "benchmark", "--quick", "--cache-dir", str(tmp_path),
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    (slide,) = report["slides"]
    assert slide["qc"]["n_tiles"] > 0 and slide["qc"]["tissue_area_mm2"] > 0
    assert slide["reader"]["ratio"] > 0 and slide["reader"]["decode_bound_tiles_per_s"] > 0
    assert slide["scoring"]["ratio"] > 0 and slide["scoring"]["compute_bound_tiles_per_s"] > 0
    assert slide["baseline"]["tiles_per_s"] > 0 and slide["speedup"] > 0
    e2e = slide["end_to_end"]
    assert set(e2e["stage_seconds_median"]) == set(endtoend.STAGES) and e2e["scoring"]["status"] == "ok"
    assert 50 << 20 < e2e["peak_rss_bytes"] < 4 << 30
    # no --model: the shipped model (models/ is part of the repository), never the untrained stand-in
    assert report["model_trained"] is True and report["model"].endswith("(the config's default model)")
    assert {t["target"].split(" >=")[0] for t in report["targets"]} >= {"reading / decode bound",
                                                                      "scoring / compute bound"}
    for column in ("read %", "score %", "speed-up", "e2e s (median)", "peak RSS MiB"):
        assert column in proc.stdout
    assert len(list(tmp_path.glob("bench-*.svs"))) == 1  # generated into the cache dir, reused next time


def test_sizes_are_parsed_or_refused():
    assert inputs.parse_sizes("20000x20000, 60000X40000") == [(20000, 20000), (60000, 40000)]
    for bad in ("", "60000", "60000x", "100x100", "axb"):
        with pytest.raises(TriageError, match="--sizes"):
            inputs.parse_sizes(bad)


def test_linear_fit_and_scaling():
    fit = targets.linear_fit([1.0, 2.0, 4.0], [3.0, 5.0, 9.0])
    assert fit["slope"] == pytest.approx(2.0) and fit["intercept"] == pytest.approx(1.0) and fit["r2"] == 1.0
    assert targets.linear_fit([1.0], [2.0]) is None
    slides = [{"qc": {"tissue_area_mm2": a}, "end_to_end": {"seconds_median": 5 + a, "peak_rss_bytes": r}}
              for a, r in ((10.0, 900), (40.0, 1000))]
    sc = targets.scaling(slides)
    assert sc["seconds_vs_tissue_mm2"]["seconds_per_mm2"] == pytest.approx(1.0)
    assert sc["peak_rss_max_over_min"] == pytest.approx(1000 / 900, abs=1e-3)


def test_stage_peak_rss_is_the_stage_own(tmp_path):
    """Stages are measured from a small launcher: the benchmark's own (torch-sized) memory is not counted."""
    import torch  # noqa: F401  (makes this process big, as the benchmark's is)

    grab = "import numpy as np; a = np.ones(300 << 20, np.uint8); print(a.sum())"
    seconds, rss = endtoend.run_stage([sys.executable, "-c", grab, "grab"], tmp_path / "grab.log")
    assert seconds > 0 and 300 << 20 < rss < 500 << 20
    _, small = endtoend.run_stage([sys.executable, "-c", "pass", "small"], tmp_path / "small.log")
    assert small < 100 << 20
    with pytest.raises(TriageError, match="failed"):
        endtoend.run_stage([sys.executable, "-c", "raise SystemExit(3)", "boom"], tmp_path / "boom.log")


def test_decode_bound_counts_each_jpeg_tile_once(tmp_path):
    from pipeline.slides.reader import open_slide

    path = write_pyramid_tiff(tmp_path / "s.svs", blob_image(2048, 1536, seed=2), mpp=0.5, levels=2, aperio=True)
    with open_slide(path) as slide:
        xs, ys = np.array([0, 100, 1024, 1500]), np.array([0, 100, 512, 1000])
        level, needed = readbench.segments_for_tiles(slide, xs, ys, 224, 0.5)  # 224 px tiles at level 0
        assert level == 0 and needed == sorted(set(needed))
        # 256 px JPEG tiles, 8 per row: (0,0) -> 0; (100,100) -> 0,1,8,9; (1024,512) -> 20; (1500,1000) -> 29,30,37,38
        assert needed == [0, 1, 8, 9, 20, 29, 30, 37, 38]
        bound = readbench.decode_bound(slide, xs, ys, 224, 0.5)
        ours = readbench.reader_throughput(slide, xs, ys, 224, 0.5, batch_size=2)
    assert bound["segments"] == len(needed) and bound["tiles_per_s"] > 0 and ours["tiles_per_s"] > 0


def test_ihc_target_judges_register_plus_quantify_on_the_60000_x_40000_slide_only():
    from pipeline.bench.table import _ihc_line

    def slide(size, seconds):
        ihc = {"marker": "Ki67", "repeats": 1, "seconds_median": seconds, "stage_peak_rss_bytes": {"a": 1 << 30},
               "stage_seconds_median": {"register-ihc": 4.0, "quantify-ihc": seconds - 4.0},
               "prerequisite_seconds": {"qc-slide": 1.0, "tile-slide": 0.5}, "registration_status": "ok",
               "region_tiles": 300, "tiles": 1000, "cells": 50000}
        return {"name": f"{size[0]}x{size[1]}", "qc": {"width_px": size[0], "height_px": size[1]}, "ihc": ihc}

    (met,) = targets.check_targets([slide((60000, 40000), 19.5)])
    assert met["met"] is True and met["measured"] == 19.5 and met["target"].startswith("IHC registration")
    (missed,) = targets.check_targets([slide((60000, 40000), 20.5)])
    assert missed["met"] is False
    assert targets.check_targets([slide((20000, 20000), 5.0)]) == []  # the target is set for one size
    assert targets.check_targets([{**slide((60000, 40000), 5.0), "ihc": {"note": "no tiles"}}]) == []
    (line,) = _ihc_line(slide((60000, 40000), 19.5))
    assert "register-ihc 4.0 s + quantify-ihc 15.5 s = 19.5 s" in line and "300 of 1000 tiles" in line
