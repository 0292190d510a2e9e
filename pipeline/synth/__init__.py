"""synth: synthetic H&E/IHC whole-slide images with ground truth (CLI verb ``make-slides``).

Tissue: classes (class and expression tables) -> layout (class map per seed) -> draw (cells and fibres as optical
densities on a cells.Canvas, from noise; populations: which cells each class draws and which are positive) ->
colour (Beer-Lambert RGB) -> render (regions and patches). placement: an IHC section's rigid transform relative to
its H&E slide (the canvas maps its pixels back into the layout frame).
Files: bands (level-0 bands in workers) -> pyramid (tiles, reduced levels) -> tiff_writer (SVS / TIFF directories)
-> slide_writer (write_slide) + truth (truth JSON / PNG) + cell_truth (drawn cells, positive per intensity).
cohort: the sample cohort; contact_sheet; make_slides: the CLI; version: VERSION and the source hash that keys
caches of generated data.
"""
