"""The science parameters of DAB quantification (config section ``ihc``): :class:`IhcParams`."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class IhcParams:
    """Science parameters of DAB quantification (config section ``ihc``; defaults documented there)."""

    quantify_mpp: float = 0.5
    stain_vectors: str = "reference"
    background: str = "estimated"
    tissue_od_min: float = 0.015
    tissue_sigma_um: float = 2.0
    tissue_max_hole_um2: float = 100.0
    dab_od_thresholds: tuple[float, float, float] = (0.2, 0.4, 0.6)
    nucleus_sigma_um: float = 1.0
    nucleus_od_min: float | str = "auto"
    nucleus_od_range: tuple[float, float] = (0.05, 0.3)
    nucleus_min_area_um2: float = 10.0
    nucleus_max_area_um2: float = 400.0
    nucleus_min_distance_um: float = 3.0
    nucleus_dab_fraction_min: float = 0.35
    nucleus_dab_od_min: float = 0.05
    min_nuclei: int = 200
    min_tissue_mm2: float = 0.05
    equivocal_band: float = 0.5
    diffuse_tiles_pct: float = 30.0
    thumb_mpp: float = 8.0
    vector_sample_tiles: int = 24
    stain_check_he_dab_max: float = 0.05
    stain_check_ihc_dab_min: float = 0.01
    stain_check_ihc_eosin_min: float = 0.3
    tumour_cells: bool = True  # count only tumour-like cells in the tumour region (pipeline/ihc/tumour_cells.py)
    tumour_cell_min_area_um2: float = 55.0
    tumour_cell_min_width_um: float = 5.5

    @classmethod
    def from_config(cls, section: dict | None) -> IhcParams:
        section = dict(section or {})
        check = section.pop("stain_check", {}) or {}
        cells = section.pop("tumour_cells", {})
        section.pop("tumour_region", None)
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in section.items() if k in known}
        for k, v in check.items():
            if f"stain_check_{k}" in known:
                kwargs[f"stain_check_{k}"] = v
        if cells is None:
            kwargs["tumour_cells"] = False
        else:
            kwargs.update({f"tumour_cell_{k}": float(v) for k, v in cells.items()})
        for key in ("dab_od_thresholds", "nucleus_od_range"):
            if key in kwargs:
                kwargs[key] = tuple(float(t) for t in kwargs[key])
        params = cls(**kwargs)
        params.check()
        return params

    @property
    def tumour_cell_filter(self) -> tuple[float, float] | None:
        """(min nucleus area um2, min width um) of a tumour-like cell, or None to count every cell."""
        return (self.tumour_cell_min_area_um2, self.tumour_cell_min_width_um) if self.tumour_cells else None

    def check(self) -> None:
        t = self.dab_od_thresholds
        if len(t) != 3 or not (0 < t[0] < t[1] < t[2]):
            raise ValueError(f"dab_od_thresholds must be 3 increasing positive ODs, got {t}")
        if not self.quantify_mpp > 0:
            raise ValueError(f"quantify_mpp must be > 0, got {self.quantify_mpp}")
        if self.stain_vectors not in {"reference", "estimated"}:
            raise ValueError(f"stain_vectors must be 'reference' or 'estimated', got {self.stain_vectors!r}")
        if not (self.nucleus_od_min == "auto" or isinstance(self.nucleus_od_min, (int, float))):
            raise ValueError(f"nucleus_od_min must be 'auto' or an OD, got {self.nucleus_od_min!r}")
        if self.background not in {"estimated", "white"}:
            raise ValueError(f"background must be 'estimated' or 'white', got {self.background!r}")
