"""he: score H&E tiles with the CNN and call the slide (rule score_tiles, pipeline/rules/he.smk; the slide call is
made by summarize-slide).

models (registry, model card, weights checked) + efficientnet_lite (backbone) -> tile_readers -> scoring (verb
score-tiles: scores.parquet) -> slide_call (pure: the slide call from tile probabilities; CLASSES).
"""
