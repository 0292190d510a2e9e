"""The workflow refuses hostile sample sheets with one clear message and quotes every path it runs."""

import subprocess
import sys

import pytest

from conftest import ROOT

HEADER = "case_id\tslide_id\tpath\tstain\tmpp\n"


def _dry_run(tmp_path, sheet_text):
    sheet = tmp_path / "samples.tsv"
    sheet.write_text(HEADER + sheet_text, encoding="utf-8")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(ROOT / "configs" / "config.yaml"), "--cores", "1", "--dry-run", "--quiet",
           "--config", f"samples={sheet}", f"markers={ROOT / 'configs' / 'markers.yaml'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    proc.output = proc.stdout + proc.stderr  # Snakemake reports parse-time errors on either stream
    return proc


@pytest.mark.parametrize("slide_id", ["a b", "a'b", 'a"b', "a;touch pwned", "$(touch pwned)", "../up", "`id`"])
def test_unsafe_slide_ids_are_refused_never_run(tmp_path, slide_id):
    slide = tmp_path / "s.svs"
    slide.write_bytes(b"x")
    proc = _dry_run(tmp_path, f"C1\t{slide_id}\t{slide}\tHE\t\n")
    assert proc.returncode != 0
    assert "row 2: slide_id" in proc.output and "does not match" in proc.output
    assert not (tmp_path / "pwned").exists() and not (ROOT / "pwned").exists()


@pytest.mark.parametrize("row,message", [
    ("C1\tS1\t{slide}\tHE\t\nC1\tS1\t{slide}\tER\t\n", "row 3: slide_id 'S1' duplicates row 2"),
    ("C1\tS1\t{slide}\tCK5000\t\n", "unknown stain 'CK5000'"),
    ("C1\tS1\t{slide}\tHE\t-3\n", "row 2: mpp"),
    ("C1\tS1\t/no/such/file.svs\tHE\t\n", "not found"),
])
def test_bad_rows_are_refused_with_the_row(tmp_path, row, message):
    slide = tmp_path / "s.svs"
    slide.write_bytes(b"x")
    proc = _dry_run(tmp_path, row.format(slide=slide))
    assert proc.returncode != 0 and message in proc.output


def test_unknown_config_key_is_refused(tmp_path):
    slide = tmp_path / "s.svs"
    slide.write_bytes(b"x")
    sheet = tmp_path / "samples.tsv"
    sheet.write_text(HEADER + f"C1\tS1\t{slide}\tHE\t\n")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(ROOT / "configs" / "config.yaml"), "--cores", "1", "--dry-run", "--quiet",
           "--config", f"samples={sheet}", "tile_size=3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "tile_size" in proc.stdout + proc.stderr


def test_paths_with_spaces_quotes_and_unicode_are_quoted(tmp_path):
    odd_dir = tmp_path / "dir with spaces; $(touch pwned) 'q'"
    odd_dir.mkdir()
    slide = odd_dir / "ünïcødé slide.svs"
    slide.write_bytes(b"x")
    proc = _dry_run(tmp_path, f"C1\tS1\t{slide}\tHE\t\n")
    assert proc.returncode == 0, proc.output
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("require_ood,flag", [(None, False), (True, False), (False, True)])
def test_score_tiles_gets_allow_no_ood_only_when_the_config_opts_out(tmp_path, require_ood, flag):
    """slide_call.require_ood (default true) reaches score-tiles: only false lets a model without OOD statistics
    score."""
    slide = tmp_path / "s.svs"
    slide.write_bytes(b"x")
    sheet = tmp_path / "samples.tsv"
    sheet.write_text(HEADER + f"C1\tS1\t{slide}\tHE\t\n", encoding="utf-8")
    configs = [str(ROOT / "configs" / "config.yaml")]
    if require_ood is not None:
        (tmp_path / "ood.yaml").write_text(f"slide_call:\n  require_ood: {str(require_ood).lower()}\n")
        configs.append(str(tmp_path / "ood.yaml"))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", *configs, "--cores", "1", "--dry-run", "--printshellcmds",
           "--config", f"samples={sheet}", f"markers={ROOT / 'configs' / 'markers.yaml'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    score = [line for line in (proc.stdout + proc.stderr).splitlines() if " score-tiles " in line]
    assert len(score) == 1 and ("--allow-no-ood" in score[0]) is flag


def test_require_ood_must_be_a_boolean(tmp_path):
    from pipeline.config import load_config
    from pipeline.errors import ConfigError

    text = (ROOT / "configs" / "config.yaml").read_text().replace("require_ood: true", 'require_ood: "no"')
    assert 'require_ood: "no"' in text
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(ConfigError, match="require_ood"):
        load_config(tmp_path / "config.yaml")
