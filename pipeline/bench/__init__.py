"""bench: measured speed (verbs benchmark and bench-view; make benchmark, make benchmark-viewer).

inputs -> stages (+ readbench, baseline), endtoend and ihc (register-ihc + quantify-ihc) -> targets, machine
-> table -> benchmark (the CLI);
viewer: the deep-zoom viewer's tile latency.
"""
