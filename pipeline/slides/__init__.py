"""slides: open a slide, check it, find tissue, lay the tile grid (rules qc_slide, tile_slide: rules/slides.smk).

slide (the Slide interface) <- reader (open_slide: OpenSlide or tiff_slide) + resolution (um/px, never guessed);
tissue (mask on a thumbnail) -> qc (verb qc-slide: qc.json, tissue.png) -> tiling (verb tile-slide: tiles.parquet).
"""
