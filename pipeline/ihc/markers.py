"""The marker knowledge base (configs/markers.yaml): load, validate against its schema, cross-check.

The schema (pipeline/schemas/markers.schema.yaml) checks each entry's shape; :func:`check_markers` checks what
a schema cannot: that cited sources exist, that site patterns name known markers, and that nuclear-count
metrics are only used for markers read in the nucleus.
"""

from __future__ import annotations

import os

from pipeline.config import read_yaml_mapping, validate
from pipeline.errors import ConfigError

NUCLEAR_COMPARTMENTS = frozenset({"nuclear", "nuclear_cytoplasmic"})


def load_markers(path: str | os.PathLike) -> dict:
    """Read, schema-validate (defaults filled in) and cross-check the knowledge base; raise ConfigError."""
    kb = read_yaml_mapping(path, "the marker knowledge base", "with a `markers:` key")
    validate(kb, "markers", str(path))
    check_markers(kb, str(path))
    return kb


def check_markers(kb: dict, what: str = "markers") -> None:
    """Cross-reference checks the schema cannot express; raise ConfigError naming the entry."""
    sources = kb["sources"]
    names = kb["markers"]
    for name, entry in names.items():
        missing = [s for s in entry["sources"] if s not in sources]
        if missing:
            raise ConfigError(f"{what}: markers.{name}.sources: unknown source key(s) {missing}; add them to `sources`")
        metric = entry["reading"]["metric"]
        if metric == "nuclei_positive_pct" and entry["compartment"] not in NUCLEAR_COMPARTMENTS:
            raise ConfigError(f"{what}: markers.{name}: metric nuclei_positive_pct needs a nuclear compartment, "
                              f"not {entry['compartment']!r}")
        per_cell = entry["reading"].get("per_tumour_cell")
        if per_cell and per_cell["source"] not in sources:
            raise ConfigError(f"{what}: markers.{name}.reading.per_tumour_cell.source: unknown source key "
                              f"{per_cell['source']!r}; add it to `sources`")
        low = entry["reading"].get("low_positive_below")
        if low is not None and low <= entry["reading"]["positive_at"]:
            raise ConfigError(f"{what}: markers.{name}.reading: low_positive_below must exceed positive_at")
    for i, pattern in enumerate(kb["site_patterns"]):
        for key in ("all_of", "any_of", "against"):
            unknown = [m for m in pattern.get(key, []) if m not in names]
            if unknown:
                raise ConfigError(f"{what}: site_patterns[{i}] ({pattern['site']}).{key}: unknown marker(s) {unknown}")
        missing = [s for s in pattern["sources"] if s not in sources]
        if missing:
            raise ConfigError(
                f"{what}: site_patterns[{i}] ({pattern['site']}).sources: unknown source key(s) {missing}")


def marker_entry(kb: dict, name: str) -> dict:
    """The entry for ``name``; ConfigError listing the known names when it is missing."""
    try:
        return kb["markers"][name]
    except KeyError:
        raise ConfigError(f"unknown marker {name!r}; known markers: {', '.join(sorted(kb['markers']))}") from None


def is_nuclear(entry: dict) -> bool:
    return entry["compartment"] in NUCLEAR_COMPARTMENTS


