"""Config and sample sheet validation: one clear line naming the row or key and what is allowed."""

import subprocess
import sys

import pytest
import yaml

from conftest import ROOT
from pipeline.config import load_config, load_samples
from pipeline.errors import ConfigError

MARKERS = ROOT / "configs" / "markers.yaml"
HEADER = "case_id\tslide_id\tpath\tstain\tmpp\n"


@pytest.fixture
def slide_file(tmp_path):
    p = tmp_path / "a.svs"
    p.write_bytes(b"x")
    return p


def _sheet(tmp_path, rows, header=HEADER):
    p = tmp_path / "samples.tsv"
    p.write_text(header + "".join("\t".join(r) + "\n" for r in rows))
    return p


def test_shipped_config_is_valid_and_defaults_fill_in(tmp_path):
    config = load_config(ROOT / "configs" / "config.yaml")
    assert config["tiling"]["target_mpp"] == 1.0 and config["tiling"]["tile_px"] == 224
    (tmp_path / "c.yaml").write_text("tiling: {tile_px: 256}\n")
    partial = load_config(tmp_path / "c.yaml")
    assert partial["tiling"] == {"tile_px": 256, "target_mpp": 1.0, "min_tissue_fraction": 0.5}
    assert partial["qc"]["thumb_max_px"] == 2048


@pytest.mark.parametrize("text,match", [
    ("tiling: {tile_size: 256}\n", r"tiling: Additional properties.*allowed keys: min_tissue_fraction"),
    ("tiling: {target_mpp: -1}\n", r"tiling.target_mpp: -1 is less than or equal"),
    ("qc: {min_tissue_mm2: lots}\n", r"qc.min_tissue_mm2: 'lots' is not of type 'number'"),
    ("bogus: 1\n", r"Additional properties"),
    ("- a list\n", r"must be a mapping"),
    ("tiling: [\n", r"not valid YAML"),
])
def test_bad_config_names_the_key(tmp_path, text, match):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_config(tmp_path / "c.yaml")
    assert "\n" not in str(info.value)


def test_good_sheet(tmp_path, slide_file):
    rows = load_samples(_sheet(tmp_path, [("A", "A_HE", str(slide_file), "HE", ""),
                                          ("A", "A_ER", str(slide_file), "ER", "0.5")]), MARKERS)
    assert [r["slide_id"] for r in rows] == ["A_HE", "A_ER"]
    assert rows[0]["mpp"] is None and rows[1]["mpp"] == 0.5


@pytest.mark.parametrize("row,match", [
    (("A", "bad id", "{f}", "HE", ""), r"row 2: slide_id: 'bad id' does not match"),
    (("A", "x;rm -rf", "{f}", "HE", ""), r"row 2: slide_id"),
    (("A", "../up", "{f}", "HE", ""), r"row 2: slide_id"),
    (("A", "$(id)", "{f}", "HE", ""), r"row 2: slide_id"),
    (("A", "A1", "{f}", "CK19000", ""), r"row 2: unknown stain 'CK19000'; use HE or a marker"),
    (("A", "A1", "/no/such.svs", "HE", ""), r"row 2: slide file '/no/such.svs' not found"),
    (("A", "A1", "{f}", "HE", "abc"), r"row 2: mpp 'abc' is not a number"),
    (("A", "A1", "{f}", "HE", "0"), r"row 2: mpp: 0.0 is less than or equal"),
])
def test_bad_rows_name_row_and_fix(tmp_path, slide_file, row, match):
    row = tuple(c.format(f=slide_file) for c in row)
    with pytest.raises(ConfigError, match=match):
        load_samples(_sheet(tmp_path, [row]), MARKERS)


def test_duplicate_slide_id_and_bad_header(tmp_path, slide_file):
    rows = [("A", "S1", str(slide_file), "HE", ""), ("B", "S1", str(slide_file), "HE", "")]
    with pytest.raises(ConfigError, match="row 3: slide_id 'S1' duplicates row 2"):
        load_samples(_sheet(tmp_path, rows), MARKERS)
    with pytest.raises(ConfigError, match="unknown: \\['colour'\\]"):
        load_samples(_sheet(tmp_path, [], header="case_id\tslide_id\tpath\tstain\tcolour\n"), MARKERS)


def test_validate_verb_one_line_error(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"tiling": {"tile_px": 1}}))
    proc = subprocess.run([sys.executable, "-m", "pipeline", "validate", "--config", str(tmp_path / "c.yaml")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "tiling.tile_px" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
