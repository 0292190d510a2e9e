"""The benchmark's figures as the plain-text table ``python -m pipeline benchmark`` prints (docs/benchmark.md's).

Public: :func:`format_table`.
"""

from __future__ import annotations


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f}"


def _ihc_line(s: dict) -> list[str]:
    """The IHC stage of one slide, if it was measured: register + quantify, the region, the prerequisites."""
    i = s.get("ihc")
    if not i:
        return []
    if "seconds_median" not in i:
        return [f"{s['name']} IHC: {i.get('note', 'not measured')}"]
    st, pre = i["stage_seconds_median"], i["prerequisite_seconds"]
    return [f"{s['name']} IHC ({i['marker']}): register-ihc {st['register-ihc']:.1f} s + quantify-ihc "
            f"{st['quantify-ihc']:.1f} s = {i['seconds_median']:.1f} s (median of {i['repeats']}; registration "
            f"{i['registration_status']}, {i['region_tiles'] or 0} of {i['tiles']} tiles in the tumour region, "
            f"{i['cells']} cells scored; peak RSS {_mib(max(i['stage_peak_rss_bytes'].values()))} MiB); before it "
            f"qc-slide {pre['qc-slide']:.1f} s, tile-slide {pre['tile-slide']:.1f} s"]


def format_table(report: dict) -> str:
    """The figures as a plain-text table (the same as docs/benchmark.md's)."""
    m = report["machine"]
    others = report.get("others_cpu_percent")
    lines = [f"slide-triage benchmark  ({m['cores']} cores: {m['cpu']}; GPU: {m['gpu'] or 'none'}; other processes "
             f"used {'?' if others is None else others}% of the CPU during the run)",
             f"model: {report['model']}; {report['threads']} threads, batch {report['batch_size']}", ""]
    head = ("slide", "tissue mm2", "tiles", "qc+grid s", "read t/s", "decode t/s", "read %", "score t/s",
            "compute t/s", "score %", "baseline t/s", "speed-up", "e2e s (median)", "peak RSS MiB", "GPU t/s")
    rows = []
    for s in report["slides"]:
        r, sc, b, e = s.get("reader", {}), s.get("scoring", {}), s.get("baseline", {}), s.get("end_to_end", {})
        rows.append((s["name"], f"{s['qc']['tissue_area_mm2']:.1f}", str(s["qc"]["n_tiles"]),
                     f"{s['qc']['seconds']:.2f}", f"{r.get('tiles_per_s', 0):,.0f}",
                     f"{r.get('decode_bound_tiles_per_s', 0):,.0f}",
                     f"{100 * r['ratio']:.0f}" if "ratio" in r else "-", f"{sc.get('tiles_per_s', 0):,.0f}",
                     f"{sc.get('compute_bound_tiles_per_s', 0):,.0f}",
                     f"{100 * sc['ratio']:.0f}" if "ratio" in sc else "-", f"{b.get('tiles_per_s', 0):,.0f}",
                     f"{s['speedup']:.1f}x" if s.get("speedup") else "-",
                     f"{e['seconds_median']:.1f}" if e else "-", _mib(e["peak_rss_bytes"]) if e else "-",
                     f"{s['gpu']['tiles_per_s']:,.0f}" if s.get("gpu") else "-"))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)] if rows else [len(h) for h in head]
    lines.append("  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    for s in report["slides"]:
        e = s.get("end_to_end")
        if e:
            stages = ", ".join(f"{k} {v:.1f} s / {_mib(e['stage_peak_rss_bytes'][k])} MiB"
                               for k, v in e["stage_seconds_median"].items())
            lines.append(f"{s['name']}: {stages} (other processes: {s.get('others_cpu_percent', '?')}% CPU)")
    for s in report["slides"]:
        lines.extend(_ihc_line(s))
    sc = report["scaling"]
    if sc.get("seconds_vs_tissue_mm2"):
        f = sc["seconds_vs_tissue_mm2"]
        lines.append(f"end to end = {f['fixed_seconds']:.1f} s + {f['seconds_per_mm2']:.3f} s/mm2 of tissue "
                     f"(R^2 {f['r2']:.3f}); peak RSS max/min {sc['peak_rss_max_over_min']:.2f}")
    lines.append("")
    for t in report["targets"]:
        lines.append(f"{'MET ' if t['met'] else 'MISSED'} {t['target']}: measured {t['measured']}")
    return "\n".join(lines)
