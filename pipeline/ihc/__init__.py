"""ihc: quantify DAB on IHC slides per marker (rule quantify_ihc, pipeline/rules/ihc.smk).

markers (knowledge base) + params; stain (deconvolution) -> nuclei -> cells (per-cell scoring by compartment) +
measure (one tile) -> reading (the marker's call) -> quantify (verb quantify-ihc: ihc.json, ihc.parquet via
tiles_table); stain_check (is the slide what the sheet says); contact_sheet (pictures for checking by eye);
registration (IHC onto H&E, serial sections) -> register (verb register-ihc: registration.json);
scan_pair (one section scanned twice: registered, read on both over the same tiles; verb compare-scans).
"""
