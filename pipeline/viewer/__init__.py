"""viewer: review a finished run in the browser (verb view; make view). Not a workflow rule: it reads results/.

data (the run's slides by id, overlays) + deepzoom (tiles over the project's reader) + pages (HTML) -> server
(HTTP on 127.0.0.1); static/ holds the page's script and style (OpenSeadragon comes from make osd).
"""
