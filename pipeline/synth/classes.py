"""Tissue classes of the synthetic slides and which cells express which marker (data tables, no code paths).

* :data:`CLASSES` (ids in the truth maps), :data:`CLASS_ID`, :data:`COARSE` (fine id -> the model's class);
* :data:`COMPARTMENT`: where each marker we draw is expressed; :data:`EXPRESSION`: per tissue class, the
  fraction of positive cells and the intensity; :data:`DAB_OD`: DAB optical density of an intensity level;
* :func:`expression`: (positive fraction, intensity) of a marker in a tissue (0, 0 when not expressed).
"""

from __future__ import annotations

CLASSES = ("glass", "adenocarcinoma", "squamous_carcinoma", "spindle_sarcoma", "pleomorphic_sarcoma",
           "skeletal_muscle", "adipose", "fibrous_stroma", "lymphoid", "myxoid_stroma")
CLASS_ID = {name: i for i, name in enumerate(CLASSES)}
# fine class id -> the model's coarse class (glass has none)
COARSE = {1: "carcinoma", 2: "carcinoma", 3: "sarcoma", 4: "sarcoma", 5: "non_tumour", 6: "non_tumour",
          7: "non_tumour", 8: "non_tumour", 9: "non_tumour"}

# Where each marker we draw is expressed (agrees with configs/markers.yaml; tested).
COMPARTMENT = {
    "CK_AE1AE3": "cytoplasmic", "CK7": "cytoplasmic", "CK20": "cytoplasmic", "EMA": "membranous",
    "HER2": "membranous", "ER": "nuclear", "PR": "nuclear", "GATA3": "nuclear", "p40": "nuclear", "p63": "nuclear",
    "TTF1": "nuclear", "Ki67": "nuclear", "p16": "nuclear_cytoplasmic", "GCDFP15": "cytoplasmic",
    "desmin": "cytoplasmic", "SMA": "cytoplasmic", "CD34": "membranous", "S100": "nuclear_cytoplasmic",
    "vimentin": "cytoplasmic",
}
# Expression per tissue class: marker -> (fraction of cells positive, intensity 1-3). Absent = negative.
# Tumour rows follow the textbook profiles (breast duct carcinoma CK+/CK7+/ER+/PR+/GATA3+; cervical squamous
# carcinoma CK+/p40+/p63+/p16 block-positive; leiomyosarcoma desmin+/SMA+/CK-; pleomorphic sarcoma vimentin
# only); non-tumour rows give the internal controls (muscle desmin, vessel walls SMA, fat S100, stroma CD34).
EXPRESSION: dict[str, dict[str, tuple[float, int]]] = {
    "adenocarcinoma": {"CK_AE1AE3": (0.97, 3), "CK7": (0.9, 3), "EMA": (0.8, 2), "ER": (0.85, 3),
                       "PR": (0.6, 2), "GATA3": (0.9, 2), "GCDFP15": (0.4, 2), "Ki67": (0.25, 3),
                       "HER2": (0.1, 1), "p16": (0.1, 1), "vimentin": (0.05, 1)},
    "squamous_carcinoma": {"CK_AE1AE3": (0.97, 3), "CK7": (0.2, 1), "EMA": (0.7, 2), "p40": (0.92, 3),
                           "p63": (0.92, 3), "p16": (0.95, 3), "Ki67": (0.5, 3)},
    "spindle_sarcoma": {"desmin": (0.85, 3), "SMA": (0.9, 3), "vimentin": (0.95, 3), "Ki67": (0.3, 3)},
    "pleomorphic_sarcoma": {"vimentin": (0.95, 3), "SMA": (0.15, 1), "Ki67": (0.4, 3)},
    "skeletal_muscle": {"desmin": (1.0, 3), "vimentin": (0.2, 1)},
    "adipose": {"S100": (0.7, 2), "vimentin": (0.8, 2)},
    "fibrous_stroma": {"CD34": (0.6, 2), "vimentin": (0.9, 2), "Ki67": (0.01, 2)},
    "lymphoid": {"Ki67": (0.1, 3), "vimentin": (0.9, 2)},
    "myxoid_stroma": {"CD34": (0.3, 2), "vimentin": (0.9, 2)},
    "vessel_wall": {"SMA": (1.0, 3), "desmin": (0.5, 2), "vimentin": (0.9, 2)},
    "endothelium": {"CD34": (1.0, 3), "vimentin": (0.9, 2)},
}
DAB_OD = {0: 0.0, 1: 0.3, 2: 0.55, 3: 0.9}  # DAB optical density of an intensity level (1+ / 2+ / 3+)


def expression(tissue: str, marker: str) -> tuple[float, int]:
    """(fraction of cells positive, intensity 1-3) of ``marker`` in ``tissue``; (0.0, 0) when not expressed."""
    return EXPRESSION.get(tissue, {}).get(marker, (0.0, 0))
