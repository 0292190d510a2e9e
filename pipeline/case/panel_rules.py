"""The panel rules table (configs/panel_rules.yaml): load, validate, and apply it to one case.

The table holds the medical reasoning (which marker patterns are pitfalls, what gives a carcinoma or sarcoma
call, what would help), each rule with its source; this module is the small engine that applies it, in pure
functions:

- :func:`load_rules` reads and schema-validates the table (pipeline/schemas/panel_rules.schema.yaml) and
  :func:`check_rules` cross-checks it against the marker knowledge base.
- :func:`case_facts` states one case the way the rules read it: the H&E consensus, each marker's result
  (positive / negative / equivocal / failed), and the summed knowledge-base weights per lineage.
- :func:`evaluate` applies the rules in their stated order: every matching ``pitfall`` rule fires (any one
  means refer); when none fired, the first matching ``call`` rule gives the call. It returns the call, the
  category, the rules that fired with their reasons, and the stains that would help.
"""

from __future__ import annotations

import functools
import os
import string
from pathlib import Path

from pipeline.config import read_yaml_mapping, validate
from pipeline.errors import ConfigError

RULES_FILE = "panel_rules.yaml"
DEFAULT_RULES_PATH = Path(__file__).resolve().parents[2] / "configs" / RULES_FILE
RESERVED = frozenset({"he", "ihc", "ihc_carcinoma", "ihc_sarcoma", "he_only_calls", "any_of"})
CALL_CATEGORIES = {"favours metastatic carcinoma": {"carcinoma"}, "favours sarcoma": {"sarcoma"},
                   "no tumour": {"no_tumour"}, "refer": {"conflict", "melanocytic", "insufficient"}}
FIELDS = frozenset({"he", "positive", "carcinoma_positive", "sarcoma_positive", "carcinoma_weight",
                    "sarcoma_weight", "threshold"})
READ = frozenset({"positive", "negative"})  # a stain read this way is not suggested again


# ---- loading and checking ---------------------------------------------------------------------------
def rules_path_for(markers_path: str | os.PathLike) -> Path:
    """The rules table that goes with a marker knowledge base: panel_rules.yaml in the same folder."""
    return Path(markers_path).parent / RULES_FILE


@functools.lru_cache(maxsize=8)
def _read_table(path: str) -> dict:
    table = read_yaml_mapping(path, "the panel rules", "with `groups:` and `rules:`")
    return validate(table, "panel_rules", path)


def load_rules(path: str | os.PathLike, kb: dict) -> dict:
    """Read, schema-validate (defaults filled in) and cross-check the rules table; raise ConfigError.
    The returned table is shared between callers (cached by path): do not modify it."""
    table = _read_table(str(path))
    check_rules(table, kb, str(path))
    return table


def _pattern_keys(pattern: dict):
    for key, value in pattern.items():
        if key == "any_of":
            for sub in value:
                yield from _pattern_keys(sub)
        else:
            yield key


def check_rules(table: dict, kb: dict, what: str = "panel rules") -> None:
    """Cross-reference checks the schema cannot express; raise ConfigError naming the rule or group."""
    markers, groups = kb["markers"], table["groups"]
    for name, group in groups.items():
        unknown = [m for m in group["markers"] + group["negative_needs"] if m not in markers]
        if unknown:
            raise ConfigError(f"{what}: groups.{name}: unknown marker(s) {unknown}")
        if not set(group["negative_needs"]) <= set(group["markers"]):
            raise ConfigError(f"{what}: groups.{name}.negative_needs: must be members of the group")
    rules = sorted(table["rules"], key=lambda r: r["order"])
    for key in ("id", "order"):
        values = [r[key] for r in rules]
        if len(set(values)) != len(values):
            raise ConfigError(f"{what}: rules: duplicate {key} {sorted({v for v in values if values.count(v) > 1})}")
    stages = [r["stage"] for r in rules]
    if "call" not in stages or "pitfall" in stages[stages.index("call"):]:
        raise ConfigError(f"{what}: rules: every pitfall rule must come before the call rules (by order), "
                          "and there must be call rules")
    if rules[-1]["when"]:
        raise ConfigError(f"{what}: rules: the last rule ({rules[-1]['id']}) must match every case (`when: {{}}`)")
    names = FIELDS | set(groups) | set(markers)
    for rule in rules:
        where = f"{what}: rules.{rule['id']}"
        _check_rule(rule, where, kb, groups, names)


def _check_rule(rule: dict, where: str, kb: dict, groups: dict, names: set) -> None:
    unknown = [k for k in _pattern_keys(rule["when"]) if k not in RESERVED and k not in groups
               and k not in kb["markers"]]
    if unknown:
        raise ConfigError(f"{where}.when: unknown group or marker {unknown}; groups: {', '.join(sorted(groups))}")
    if rule["category"] not in CALL_CATEGORIES[rule["call"]]:
        raise ConfigError(f"{where}: category {rule['category']!r} does not go with call {rule['call']!r}")
    missing = [s for s in rule["sources"] if s not in kb["sources"]]
    if missing:
        raise ConfigError(f"{where}.sources: unknown source key(s) {missing}; add them to the knowledge base")
    fields = {f for _, f, _, _ in string.Formatter().parse(rule["says"]) if f is not None}
    if fields - names:
        raise ConfigError(f"{where}.says: unknown placeholder(s) {sorted(fields - names)}")
    if rule["call"] == "refer" and not any(s not in kb["markers"] for h in rule["would_help"] for s in h["stains"]):
        raise ConfigError(f"{where}.would_help: a refer needs at least one stain or test outside the marker "
                          "knowledge base, so that it always has something to suggest")


def default_rules(kb: dict) -> dict:
    """The repository's rules table (configs/panel_rules.yaml), checked against ``kb``."""
    return load_rules(DEFAULT_RULES_PATH, kb)


# ---- the case as the rules read it ------------------------------------------------------------------
def lineage_weights(results: dict[str, dict], kb: dict) -> dict[str, float]:
    """Summed knowledge-base weights of the positive markers, per lineage they support."""
    weights = {"carcinoma": 0.0, "sarcoma": 0.0}
    for marker, r in results.items():
        supports = kb["markers"][marker]["supports"]
        if r["call"] == "positive" and supports in weights:
            weights[supports] += kb["markers"][marker]["weight"]
    return weights


def case_facts(he: dict, results: dict[str, dict], kb: dict, params: dict) -> dict:
    """One case for the rules. ``he``: the H&E consensus (state, reason); ``results``: marker -> {call:
    positive | negative | equivocal | failed, reason}; ``params``: the ``case`` config section."""
    weights = lineage_weights(results, kb)
    return {"he": he, "results": results, "kb": kb, "weights": weights,
            "threshold": params["lineage_evidence_min"], "he_only_calls": bool(params["he_only_calls"])}


def _members(name: str, groups: dict) -> tuple[list[str], list[str]]:
    group = groups.get(name)
    return (group["markers"], group["negative_needs"]) if group else ([name], [])


def group_status(members: list[str], negative_needs: list[str], results: dict[str, dict]) -> str:
    """positive (any member), equivocal (any), negative (every `negative_needs` member, or any member when
    none is named), failed (a member's slide failed), or not_done."""
    calls = [results[m]["call"] for m in members if m in results]
    if "positive" in calls or "equivocal" in calls:
        return "positive" if "positive" in calls else "equivocal"
    if negative_needs:
        negative = all(results.get(m, {}).get("call") == "negative" for m in negative_needs)
    else:
        negative = "negative" in calls
    if negative:
        return "negative"
    return "failed" if "failed" in calls else "not_done"


def describe(name: str, facts: dict, groups: dict) -> str:
    """A group's or marker's status with the markers behind it, e.g. 'failed (CK_AE1AE3: QC failed)'."""
    members, needs = _members(name, groups)
    results = facts["results"]
    status = group_status(members, needs, results)
    if status == "failed":
        return "failed (" + "; ".join(f"{m}: {results[m]['reason']}".rstrip(": ") for m in members
                                      if results.get(m, {}).get("call") == "failed") + ")"
    if status == "not_done":
        read = [f"{m} {results[m]['call']}" for m in members if m in results]
        missing = [m for m in (needs or members) if m not in results]
        return "not done" + (f" ({', '.join(missing)} not done; {'; '.join(read)})" if read else "")
    shown = [m for m in members if results.get(m, {}).get("call") == status]
    return f"{status} ({', '.join(shown)})" if len(members) > 1 else status


def _level(weight: float, threshold: float) -> str:
    return "enough" if weight >= threshold else "some" if weight > 0 else "none"


def matches(pattern: dict, facts: dict, groups: dict) -> bool:
    """Whether every entry of ``pattern`` holds for the case (see configs/panel_rules.yaml)."""
    for key, allowed in pattern.items():
        if key == "any_of":
            ok = any(matches(sub, facts, groups) for sub in allowed)
        elif key == "he":
            ok = facts["he"]["state"] in allowed
        elif key == "ihc":
            usable = any(r["call"] != "failed" for r in facts["results"].values())
            ok = ("some" if usable else "none") in allowed
        elif key in ("ihc_carcinoma", "ihc_sarcoma"):
            ok = _level(facts["weights"][key[4:]], facts["threshold"]) in allowed
        elif key == "he_only_calls":
            ok = facts["he_only_calls"] == allowed
        else:
            ok = group_status(*_members(key, groups), facts["results"]) in allowed
        if not ok:
            return False
    return True


class _Fields(dict):
    """The values a rule's `says` may name; groups and markers are described on demand."""

    def __init__(self, facts: dict, groups: dict):
        kb, results = facts["kb"], facts["results"]
        positive = sorted(m for m, r in results.items() if r["call"] == "positive")
        by = {lin: [m for m in positive if kb["markers"][m]["supports"] == lin] for lin in ("carcinoma", "sarcoma")}
        super().__init__(he=facts["he"]["reason"], positive=", ".join(positive) or "none",
                         carcinoma_positive=", ".join(by["carcinoma"]) or "none",
                         sarcoma_positive=", ".join(by["sarcoma"]) or "none",
                         carcinoma_weight=f"{facts['weights']['carcinoma']:g}",
                         sarcoma_weight=f"{facts['weights']['sarcoma']:g}", threshold=f"{facts['threshold']:g}")
        self._facts, self._groups = facts, groups

    def __missing__(self, key: str) -> str:
        return describe(key, self._facts, self._groups)


# ---- applying the table -----------------------------------------------------------------------------
def _fired(rule: dict, facts: dict, groups: dict) -> dict:
    results = facts["results"]
    keys = set(_pattern_keys(rule["when"]))
    named = [m for k in keys - RESERVED for m in _members(k, groups)[0]]
    named += [m for m, r in results.items() if r["call"] == "positive"
              and f"ihc_{facts['kb']['markers'][m]['supports']}" in keys]
    return {"id": rule["id"], "order": rule["order"], "stage": rule["stage"], "call": rule["call"],
            "category": rule["category"], "text": rule["says"].format_map(_Fields(facts, groups)),
            "pitfall": rule["pitfall"], "sources": list(rule["sources"]),
            "markers": sorted({m for m in named if m in results}), "uses_he": "he" in keys}


def suggestions(rules: list[dict], results: dict[str, dict]) -> list[str]:
    """'stain, stain: why' lines from the rules' would_help, leaving out stains already read positive or
    negative (equivocal and failed ones are worth repeating) and stains an earlier line named."""
    read = {m for m, r in results.items() if r["call"] in READ}
    positive = {m for m, r in results.items() if r["call"] == "positive"}
    lines, named = [], set()
    for rule in rules:
        for item in rule["would_help"]:
            if item.get("only_if_none_positive") and positive & set(item["stains"]):
                continue
            todo = [s for s in item["stains"] if s not in read and s not in named]
            if todo:
                named.update(todo)
                lines.append(f"{', '.join(todo)}: {item['why']}")
    return lines


def evaluate(table: dict, facts: dict) -> dict:
    """Apply the rules in order: every matching pitfall rule fires; if none did, the first matching call rule.
    Returns call, category (of the first rule that fired), rules_fired and would_help."""
    groups = table["groups"]
    rules = sorted(table["rules"], key=lambda r: r["order"])
    fired = [r for r in rules if r["stage"] == "pitfall" and matches(r["when"], facts, groups)]
    if not fired:
        fired = [next(r for r in rules if r["stage"] == "call" and matches(r["when"], facts, groups))]
    return {"call": fired[0]["call"], "category": fired[0]["category"],
            "rules_fired": [_fired(r, facts, groups) for r in fired],
            "would_help": suggestions(fired, facts["results"])}
