"""case: one call per case from its slides' summaries (rule call_case, pipeline/rules/case.smk).

panel_rules (configs/panel_rules.yaml: load, validate, apply) -> call (verb call-case: case.json); panel (verb
panel: a case typed by hand through the same rules).
"""
