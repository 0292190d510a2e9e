"""slide-triage: decision support for carcinoma-vs-sarcoma triage of H&E and IHC whole-slide images.

Not a diagnosis. Every output says so, shows its evidence and says "refer" rather than guess.
This module stays import-light: no torch, no OpenSlide, so that ``python -m pipeline`` starts fast.
"""

__version__ = "0.1.0"

DISCLAIMER = (
    "Decision support only, not a diagnosis: a pathologist must review the slides and the evidence."
)
