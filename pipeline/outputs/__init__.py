"""outputs: results for people and for QuPath (rules summarize_slide, draw_slide, export_geojson, make_report,
pipeline/rules/outputs.smk).

summary (verb summarize-slide: summary.json) + provenance; drawing -> pictures -> figures (verb draw-slide);
tile_outline -> geojson (verb export-geojson); worklist + report_html -> report (verb make-report: worklist.tsv,
report.html);
results_check (whole-folder checks for tests).
"""
