"""``python -m pipeline panel``: a case typed by hand, through the same panel rules as ``call-case``.

A pathologist can check the reasoning without a slide: give the H&E call and the marker results, e.g.
``--he carcinoma --marker CK_AE1AE3=positive --marker CD31=positive``; the verb runs
:func:`pipeline.case.call.call_case` and prints the call, the rules that fired with their reasons, the stains that
would help and the decision-support disclaimer (the whole case.json with ``--json``). Marker names are
matched to the knowledge base ignoring case, ``-`` and ``_`` (``Melan-A`` is ``MelanA``); an unknown name is
refused with the list of known ones.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pipeline.case import call as case
from pipeline.case import panel_rules
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
HE_CALLS = {"carcinoma": "carcinoma", "sarcoma": "sarcoma", "no_tumour": "no_tumour", "uncertain": "refer",
            "none": None}
RESULTS = ("positive", "negative", "equivocal", "failed")


def _key(name: str) -> str:
    return re.sub(r"[\s_\-./]", "", name).lower()


def resolve_marker(name: str, kb: dict) -> str:
    """The knowledge base's name for ``name`` (case, '-', '_', '.', '/' ignored); ConfigError listing the
    known names when there is none."""
    known = {_key(m): m for m in kb["markers"]}
    try:
        return known[_key(name)]
    except KeyError:
        raise ConfigError(f"unknown marker {name!r}; known markers: {', '.join(sorted(kb['markers']))}") from None


def typed_results(specs: list[str], kb: dict) -> list[dict]:
    """IHC results (the shape call_case takes) from NAME=RESULT strings."""
    results = []
    for spec in specs:
        name, sep, result = spec.partition("=")
        result = result.strip().lower()
        if not sep or result not in RESULTS:
            raise ConfigError(f"--marker {spec!r}: expected NAME=RESULT with RESULT one of {', '.join(RESULTS)}")
        marker = resolve_marker(name.strip(), kb)
        failed = result == "failed"
        results.append({"slide_id": f"typed-{marker}", "marker": marker, "status": "failed" if failed else "ok",
                        "call": None if failed else result, "metric": None, "value": None, "cutoff": None,
                        "qualifier": None, "reason": "typed as failed" if failed else "typed by hand",
                        "qc_status": "ok", "qc_reasons": []})
    return results


def typed_he(he: str) -> list[dict]:
    """The H&E slide call (the shape call_case takes) for ``--he``; none for ``none``."""
    call = HE_CALLS[he]
    if call is None:
        return []
    return [{"slide_id": "typed-HE", "call": call, "confidence": None if call == "refer" else 1.0,
             "reason": "typed by hand", "tumour_burden": None, "qc_status": "ok", "qc_reasons": []}]


def format_text(result: dict) -> str:
    """The call, the rules that fired (with their reasons, pitfalls and sources), what would help, the disclaimer."""
    p = result["priority"]
    lines = [f"call: {result['call']} (category {result['category']}; worklist priority {p['rank']})",
             f"basis: {result['basis']}", "rules fired, in order:"]
    for r in result["rules_fired"]:
        lines += [f"  {r['order']:>3} {r['id']} ({r['stage']} -> {r['call']}): {r['text']}",
                  f"      guards: {r['pitfall']}", f"      sources: {', '.join(r['sources'])}"]
    if result["suggested_primary"]:
        lines.append(f"suggested primary: {result['suggested_primary']}")
    lines.append("would help:" if result["would_help"] else "would help: nothing further")
    lines += [f"  - {w}" for w in result["would_help"]]
    lines.append(result["disclaimer"])
    return "\n".join(lines)


def configure_parser(parser) -> None:
    parser.add_argument("--he", choices=list(HE_CALLS), default="none",
                        help="the H&E call (uncertain: a 'refer' slide call; none: no usable H&E). Default: none")
    parser.add_argument("--marker", action="append", default=[], metavar="NAME=RESULT",
                        help=f"a marker result ({', '.join(RESULTS)}); repeat for each marker")
    parser.add_argument("--config", default=None,
                        help="config whose `case` section, `markers` and `panel_rules` to use (default: the "
                             "schema defaults and this repository's configs/markers.yaml)")
    parser.add_argument("--markers", default=None, help="marker knowledge base (overrides the config's)")
    parser.add_argument("--rules", default=None,
                        help="panel rules table (default: the config's, or panel_rules.yaml next to the markers)")
    parser.add_argument("--json", action="store_true", help="print the whole case call as JSON")


def run(args) -> None:
    from pipeline.config import load_config
    from pipeline.ihc.markers import load_markers

    config = load_config(args.config) if args.config else {}
    markers_path = args.markers or config.get("markers") or ROOT / "configs" / "markers.yaml"
    kb = load_markers(markers_path)
    rules = panel_rules.load_rules(args.rules or config.get("panel_rules")
                                   or panel_rules.rules_path_for(markers_path), kb)
    result = case.call_case(typed_he(args.he), typed_results(args.marker, kb), kb, case.case_params(config),
                            case_id="typed", rules=rules)
    print(json.dumps(result, indent=1) if args.json else format_text(result))
