# SPDX-License-Identifier: GPL-2.0-or-later
"""report.md, one CSV per table and PNG plots from the run's results.

A result is a dict: group, table, system (key), label, summary (median/min/max/n/spread of
seconds) or reason (why n/a), extra (workload-specific numbers), strata (bool).
Ratios are taken against native and against the best peer (fastest non-strata, non-native
system) measured in the same run.
"""
import csv
import json
import os

from common import fmt_ratio, fmt_s, human_bytes

COLORS = {"native": "#888888", "kernel": "#3b6fb6", "fuse": "#e0892b", "strata": "#2e9e4f"}


def family(r):
    if r["system"] == "native":
        return "native"
    if r.get("strata"):
        return "strata"
    if r["system"].startswith("k") or r["system"] in ("tar -x", "mksquashfs"):
        return "kernel"
    return "fuse"


def med(r):
    return r["summary"]["median"] if r.get("summary") else None


def best_peer(rows, kind=None):
    """Fastest non-strata, non-native result; of the same kind (dirs/image) when given."""
    peers = [r for r in rows if med(r) is not None and not r.get("strata") and
             r["system"] != "native" and (kind is None or r.get("kind") == kind)]
    return min(peers, key=med) if peers else None


def ratio(a, b):
    return a / b if a is not None and b else None


def cell(r):
    if r is None:
        return "—"
    if r.get("summary") is None:
        return "n/a"
    s = r["summary"]
    txt = "%s ±%.0f%%" % (fmt_s(s["median"]), 50 * s["spread"])
    if r.get("note"):
        txt += " ⚠"
    return txt


def md_table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def write_csv(outdir, name, rows):
    if not rows:
        return
    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(os.path.join(outdir, name), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def flat(r, rows):
    """One CSV row for a result, with ratios against native and the best peer."""
    nat = next((x for x in rows if x["system"] == "native"), None)
    bp = best_peer(rows, r.get("kind"))
    s = r.get("summary") or {}
    d = {"table": r["table"], "system": r["system"], "median_s": s.get("median"),
         "min_s": s.get("min"), "max_s": s.get("max"), "runs": s.get("n"),
         "ratio_native": ratio(med(r), med(nat) if nat else None),
         "best_peer": bp["system"] if bp else None,
         "ratio_best_peer": ratio(med(r), med(bp) if bp else None),
         "na_reason": r.get("reason"), "note": r.get("note")}
    d.update(r.get("extra") or {})
    return d


def notes(results):
    """n/a reasons and warnings, one line per distinct (system, reason)."""
    seen, out = set(), []
    for r in results:
        for what in ("reason", "note"):
            if r.get(what):
                k = (r["system"], r[what])
                if k not in seen:
                    seen.add(k)
                    out.append("- `%s` (%s): %s" % (r["system"], r["table"], r[what]))
    return "\n".join(out) + "\n" if out else ""


def by_table(results, group):
    tables = {}
    for r in results:
        if r["group"] == group:
            tables.setdefault(r["table"], []).append(r)
    return tables


# ---------------------------------------------------------------------------------------------
# plots

def _plt():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except Exception:
        return None


def plot_bars(path, tables, titles, xlabel="seconds (median, whisker = min…max)",
              logx=False):
    """Small multiples: one horizontal bar chart per table, systems as bars."""
    plt = _plt()
    if plt is None or not tables:
        return False
    n = len(tables)
    cols = 3 if n > 4 else n
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 0.36 * 9 * rows + 1.2),
                             squeeze=False)
    for ax, (key, res) in zip([a for row in axes for a in row], tables.items()):
        top = max([med(r) or 0 for r in res] + [0])
        unit, k = ("ms", 1e3) if top < 1 else ("s", 1.0)
        labels = [r["system"] for r in res][::-1]
        vals = [(med(r) or 0) * k for r in res][::-1]
        lo = [max(0, (med(r) or 0) - r["summary"]["min"]) * k if r.get("summary") else 0
              for r in res][::-1]
        hi = [max(0, r["summary"]["max"] - med(r)) * k if r.get("summary") else 0
              for r in res][::-1]
        colors = [COLORS[family(r)] for r in res][::-1]
        ax.barh(labels, vals, xerr=[lo, hi], color=colors, capsize=2)
        for i, r in enumerate(res[::-1]):
            if r.get("summary") is None:
                ax.text(0, i, " n/a", va="center", fontsize=8, color="#aa0000")
        if logx:
            ax.set_xscale("log")
        ax.set_title(titles.get(key, key), fontsize=9)
        ax.tick_params(labelsize=8)
        ax.set_xlabel(xlabel.replace("seconds", unit), fontsize=7)
    for ax in [a for row in axes for a in row][n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------
# sections

def fs_section(ctx, results, outdir, group, heading, intro):
    tables = by_table(results, group)
    if not tables:
        return ""
    systems = []
    for res in tables.values():
        systems += [r["system"] for r in res if r["system"] not in systems]
    titles = ctx.titles
    out = ["## %s\n\n%s\n" % (heading, intro)]
    out.append("### Median time (± half the min…max spread, in % of the median)\n")
    rows = []
    for key, res in tables.items():
        bys = {r["system"]: r for r in res}
        rows.append([titles.get(key, key)] + [cell(bys.get(s)) for s in systems])
    out.append(md_table(["workload"] + ["`%s`" % s for s in systems], rows))
    out.append("\n### Ratio against native (1.00× = as fast as the plain directory)\n")
    rows = []
    for key, res in tables.items():
        bys = {r["system"]: r for r in res}
        nat = med(bys.get("native")) if bys.get("native") else None
        rows.append([key] + [fmt_ratio(ratio(med(bys[s]), nat)) if s in bys else "—"
                             for s in systems])
    out.append(md_table(["workload"] + ["`%s`" % s for s in systems], rows))
    strata = [(s, r.get("kind")) for s in systems
              for r in next(iter(tables.values())) if r.get("strata") and r["system"] == s]
    out.append("\n### strata against the best peer of the same kind in this run "
               "(layers as dirs: `kovl`, `fovl`; one image: `ksq`, `ksq+kovl`, `sqfuse_ll`, "
               "`sqfuse+fovl`; < 1.00× = strata faster)\n")
    rows, header = [], ["workload"]
    for s, kind in strata:
        header += ["best %s peer" % kind, "`%s`" % s]
    for key, res in tables.items():
        bys = {r["system"]: r for r in res}
        row = [key]
        for s, kind in strata:
            bp = best_peer(res, kind)
            row += ["`%s` %s" % (bp["system"], fmt_s(med(bp))) if bp else "n/a",
                    fmt_ratio(ratio(med(bys[s]), med(bp) if bp else None))
                    if s in bys else "—"]
        rows.append(row)
    out.append(md_table(header, rows))
    csvrows = [flat(r, res) for res in tables.values() for r in res]
    write_csv(outdir, "%s.csv" % group, csvrows)
    if plot_bars(os.path.join(outdir, "%s.png" % group), tables, titles):
        out.append("\n![%s](%s.png)\n" % (group, group))
    n = notes([r for res in tables.values() for r in res])
    if n:
        out.append("\nn/a and warnings:\n\n" + n)
    return "\n".join(out)


def squash_section(ctx, results, outdir):
    rows = [r for r in results if r["group"] == "squash"]
    if not rows:
        return ""
    out = ["## Squash: image build time and size\n",
           "Input: %s. 2 threads/processors each; each tool's default level for the "
           "compressor. `mkimage` rows compare against `mksquashfs` with the same compressor."
           "\n" % ctx.squash_input]
    table, csvrows = [], []
    for comp in ctx.squash_comps:
        res = [r for r in rows if r["table"] == comp]
        ref = next((r for r in res if r["system"] == "mksquashfs"), None)
        for r in res:
            size = (r.get("extra") or {}).get("bytes")
            rsize = (ref.get("extra") or {}).get("bytes") if ref else None
            table.append([comp, "`%s`" % r["system"], cell(r),
                          human_bytes(size) if size else "n/a",
                          fmt_ratio(ratio(med(r), med(ref) if ref else None)),
                          fmt_ratio(ratio(size, rsize))])
            d = flat(r, res)
            d["ratio_time_mksquashfs"] = ratio(med(r), med(ref) if ref else None)
            d["ratio_size_mksquashfs"] = ratio(size, rsize)
            csvrows.append(d)
    out.append(md_table(["compressor", "tool", "time", "image size", "time ×mksquashfs",
                         "size ×mksquashfs"], table))
    write_csv(outdir, "squash.csv", csvrows)
    plt = _plt()
    if plt is not None:
        tools = []
        for r in rows:
            if r["system"] not in tools:
                tools.append(r["system"])
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
        w = 0.8 / max(1, len(tools))
        for i, t in enumerate(tools):
            xs, ts, ss = [], [], []
            for j, comp in enumerate(ctx.squash_comps):
                r = next((x for x in rows if x["table"] == comp and x["system"] == t), None)
                xs.append(j + i * w)
                ts.append(med(r) or 0 if r else 0)
                ss.append(((r.get("extra") or {}).get("bytes") or 0) / 2**20 if r else 0)
            col = COLORS["strata"] if t == "mkimage" else None
            a1.bar(xs, ts, w, label=t, color=col)
            a2.bar(xs, ss, w, label=t, color=col)
        for a, lab in ((a1, "seconds (median)"), (a2, "image MiB")):
            a.set_xticks([j + 0.4 - w / 2 for j in range(len(ctx.squash_comps))])
            a.set_xticklabels(ctx.squash_comps)
            a.set_ylabel(lab)
            a.legend(fontsize=8)
        a1.set_title("squash time")
        a2.set_title("image size")
        fig.tight_layout()
        fig.savefig(os.path.join(outdir, "squash.png"), dpi=90)
        plt.close(fig)
        out.append("\n![squash](squash.png)\n")
    n = notes(rows)
    if n:
        out.append("\nn/a and warnings:\n\n" + n)
    return "\n".join(out)


def import_section(ctx, results, outdir):
    rows = [r for r in results if r["group"] == "import"]
    if not rows:
        return ""
    ref = next((r for r in rows if r["system"] == "tar -x"), None)
    out = ["## Layer import: one OCI layer blob into a usable directory\n",
           "Layer: %s. Each run starts from an empty target.\n" % ctx.import_input]
    table = []
    for r in rows:
        mbs = ratio(ctx.import_bytes / 2**20, med(r)) if med(r) else None
        table.append(["`%s`" % r["system"], cell(r),
                      "%.0f MiB/s" % mbs if mbs else "n/a",
                      fmt_ratio(ratio(med(r), med(ref) if ref else None))])
    out.append(md_table(["tool", "time", "throughput (uncompressed)", "× tar -x"], table))
    write_csv(outdir, "import.csv", [flat(r, rows) for r in rows])
    if plot_bars(os.path.join(outdir, "import.png"), {"import": rows},
                 {"import": "import one layer"}):
        out.append("\n![import](import.png)\n")
    n = notes(rows)
    if n:
        out.append("\nn/a and warnings:\n\n" + n)
    return "\n".join(out)


def netfs_section(ctx, results, outdir):
    rows = [r for r in results if r["group"] == "netfs"]
    if not rows:
        return ""
    out = ["## Container start on network / parallel-FS stand-ins\n", ctx.netfs_intro + "\n"]
    table = []
    for backend in ctx.netfs_backends:
        res = [r for r in rows if r["table"] == backend]
        for r in res:
            e = r.get("extra") or {}
            table.append([backend, "`%s`" % r["system"], r.get("kind", ""), cell(r),
                          "%d" % e["meta_ops"] if "meta_ops" in e else "n/a",
                          "%d" % e["data_ops"] if "data_ops" in e else "n/a",
                          human_bytes(e["data_bytes"]) if "data_bytes" in e else "n/a"])
    out.append(md_table(["storage", "system", "layers as", "container start",
                         "metadata ops", "data ops", "data read"], table))
    lat = [r for r in rows if r["table"] == "latfs" and "meta_ops" in (r.get("extra") or {})]
    dirs = [r["extra"]["meta_ops"] for r in lat if r.get("kind") == "dirs"]
    imgs = [r["extra"]["meta_ops"] for r in lat if r.get("kind") == "image"]
    if dirs and imgs and min(imgs) > 0:
        out.append("\n**Headline:** on the metadata-latency stand-in a container start with "
                   "layers as directories costs %d–%d metadata operations on the storage; "
                   "with one squashed image %d–%d — %.0f× fewer (best image system against "
                   "best directory system).\n" % (min(dirs), max(dirs), min(imgs), max(imgs),
                                                   min(dirs) / min(imgs)))
    write_csv(outdir, "netfs.csv", [dict(flat(r, [x for x in rows
                                                  if x["table"] == r["table"]]),
                                         backend=r["table"], layers_as=r.get("kind"))
                                    for r in rows])
    plt = _plt()
    if plt is not None and lat:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
        labels = [r["system"] for r in lat][::-1]
        cols = [COLORS["strata"] if r.get("strata") else COLORS["native"]
                if r["system"] == "native" else
                ("#3b6fb6" if r.get("kind") == "image" else "#e0892b") for r in lat][::-1]
        ops = [max(1, r["extra"]["meta_ops"]) for r in lat][::-1]
        a1.barh(labels, ops, color=cols)
        a1.set_xscale("log")
        a1.set_xlim(1, max(ops) * 8)
        for i, v in enumerate(ops):
            a1.text(v * 1.1, i, str(v), va="center", fontsize=7)
        from matplotlib.patches import Patch
        a1.legend(handles=[Patch(color="#e0892b", label="layers as dirs"),
                           Patch(color="#3b6fb6", label="one image"),
                           Patch(color=COLORS["strata"], label="strata"),
                           Patch(color=COLORS["native"], label="flat dir")],
                  fontsize=7, loc="lower right")
        a1.set_title("storage metadata ops per container start (log)", fontsize=9)
        a2.barh(labels, [med(r) or 0 for r in lat][::-1], color=cols)
        a2.set_title("container start time, s (%d µs per metadata op)" % ctx.lat_us,
                     fontsize=9)
        for a in (a1, a2):
            a.tick_params(labelsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(outdir, "netfs.png"), dpi=90)
        plt.close(fig)
        out.append("\n![netfs](netfs.png)\n")
    n = notes(rows)
    if n:
        out.append("\nn/a and warnings:\n\n" + n)
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# targets from the issues

TARGETS = [
    # (text, group, table, system, reference system, limit)
    ("warm tree walk ≤ 1.3× kernel overlay", "fs", "walk_warm", "stratafs", "kovl", 1.3),
    ("cold tree walk ≤ 1.5× kernel overlay", "fs", "walk_cold", "stratafs", "kovl", 1.5),
    ("import ~100 stdlib modules ≤ 1.05× kernel overlay", "fs", "py_import_warm",
     "stratafs", "kovl", 1.05),
    ("big-file warm read ≤ 1.1× native", "fs", "seq_read_warm", "stratafs", "native", 1.1),
    ("big-file copy-up ≤ 1.0× fuse-overlayfs", "fs", "copyup", "stratafs", "fovl", 1.0),
    ("build-like workload ≤ 1.1× kernel overlay", "fs", "build", "stratafs", "kovl", 1.1),
    ("write over a copied-up file ≤ 1.11× native (≥ 0.9× throughput)", "fs", "copyup_write",
     "stratafs", "native", 1.0 / 0.9),
    # issue 7: the kernel passthrough, on a lower file of the writable mount
    ("passthrough: big-file read warm ≤ 1.05× native", "fs", "seq_read_warm", "stratafs",
     "native", 1.05),
    ("passthrough: big-file read cold ≤ 1.05× native", "fs", "seq_read_cold", "stratafs",
     "native", 1.05),
    ("passthrough: random 4 KiB reads ≥ 0.9× native IOPS", "fs", "rand_read", "stratafs",
     "native", 1.0 / 0.9),
    # the image alone, read-only, against the read-only image mounts
    ("image: warm walk ≤ 1.5× kernel squashfs", "fs", "walk_warm", "stratafs-img-ro", "ksq",
     1.5),
    ("image: cold walk ≤ 2× kernel squashfs", "fs", "walk_cold", "stratafs-img-ro", "ksq",
     2.0),
    ("image: read every file ≤ 1.3× kernel squashfs", "fs", "read_all", "stratafs-img-ro",
     "ksq", 1.3),
    ("image: warm walk faster than squashfuse_ll", "fs", "walk_warm", "stratafs-img-ro",
     "sqfuse_ll", 1.0),
    ("image: cold walk faster than squashfuse_ll", "fs", "walk_cold", "stratafs-img-ro",
     "sqfuse_ll", 1.0),
    ("image: read every file faster than squashfuse_ll", "fs", "read_all", "stratafs-img-ro",
     "sqfuse_ll", 1.0),
    # the image under a writable upper, against the kernel's squashfs + overlay
    ("image + upper: warm walk ≤ 1.5× kernel squashfs+overlay", "fs", "walk_warm",
     "stratafs-img", "ksq+kovl", 1.5),
    ("image + upper: cold walk ≤ 2× kernel squashfs+overlay", "fs", "walk_cold",
     "stratafs-img", "ksq+kovl", 2.0),
    ("image + upper: read every file ≤ 1.3× kernel squashfs+overlay", "fs", "read_all",
     "stratafs-img", "ksq+kovl", 1.3),
]


def targets_section(ctx, results):
    def find(group, table, system):
        return next((r for r in results if r["group"] == group and r["table"] == table and
                     r["system"] == system), None)

    rows = []
    for text, g, t, s, ref, limit in TARGETS:
        a, b = find(g, t, s), find(g, t, ref)
        rt = ratio(med(a) if a else None, med(b) if b else None)
        verdict = "n/a" if rt is None else ("met" if rt <= limit else "**missed**")
        rows.append([text, "`%s` / `%s`" % (s, ref), fmt_ratio(rt), verdict])
    for comp in ctx.squash_comps:
        a, b = find("squash", comp, "mkimage"), find("squash", comp, "mksquashfs")
        rt = ratio(med(a) if a else None, med(b) if b else None)
        rows.append(["mkimage squash %s time ≤ 0.8× mksquashfs" % comp,
                     "`mkimage` / `mksquashfs`", fmt_ratio(rt),
                     "n/a" if rt is None else ("met" if rt <= 0.8 else "**missed**")])
        sa = (a.get("extra") or {}).get("bytes") if a else None
        sb = (b.get("extra") or {}).get("bytes") if b else None
        rs = ratio(sa, sb)
        rows.append(["mkimage squash %s size ≤ 1.01× mksquashfs" % comp,
                     "`mkimage` / `mksquashfs`", fmt_ratio(rs),
                     "n/a" if rs is None else ("met" if rs <= 1.01 else "**missed**")])
    if not any(r[2] != "n/a" for r in rows):
        return "## Targets\n\nNo target could be evaluated in this run (strata systems n/a).\n"
    return "## Targets from the issues (same run)\n\n" + \
        md_table(["target", "ratio of", "measured", "verdict"], rows)


def write(ctx, outdir):
    parts = ["# strata bench — %s\n" % ctx.stamp,
             "Mode: **%s**. Runs per warm workload: %d (after 1 warm-up); per cold/fresh "
             "workload: %d, interleaved (run i of every system before run i+1 of any). "
             "Medians; ± is half the min…max spread in %% of the median. "
             "Total wall time of the suite: %s.\n" % (
                 "quick (CI smoke, small data)" if ctx.quick else "full", ctx.runs,
                 ctx.runs_cold, fmt_s(ctx.elapsed)),
             "## Machine\n\n" + md_table(["", ""], ctx.machine),
             "Systems: " + "; ".join("`%s` = %s" % (s.key, s.label) for s in ctx.systems) +
             ".\n"]
    parts.append(targets_section(ctx, ctx.results))
    parts.append(fs_section(ctx, ctx.results, outdir, "fs", "File-system workloads, local disk",
                            ctx.fs_intro))
    parts.append(squash_section(ctx, ctx.results, outdir))
    parts.append(import_section(ctx, ctx.results, outdir))
    parts.append(netfs_section(ctx, ctx.results, outdir))
    if ctx.skipped:
        parts.append("## Not run\n\n" + "\n".join("- %s" % s for s in ctx.skipped) + "\n")
    with open(os.path.join(outdir, "report.md"), "w") as f:
        f.write("\n".join(p for p in parts if p))
    save(ctx, outdir)


SAVED = ("stamp", "quick", "runs", "runs_cold", "elapsed", "machine", "titles", "fs_intro",
         "netfs_intro", "squash_comps", "netfs_backends", "squash_input", "import_input",
         "import_bytes", "lat_us", "skipped", "results")


def save(ctx, outdir):
    """results.json: every sample, so a report can be re-rendered (bench/run --report DIR)."""
    d = {k: getattr(ctx, k) for k in SAVED if hasattr(ctx, k)}
    d["systems"] = [[s.key, s.label] for s in ctx.systems]
    with open(os.path.join(outdir, "results.json"), "w") as f:
        json.dump(d, f, indent=1)


def load(ctx, outdir):
    class Sys:
        def __init__(self, key, label):
            self.key, self.label = key, label

    with open(os.path.join(outdir, "results.json")) as f:
        d = json.load(f)
    for k, v in d.items():
        setattr(ctx, k, v)
    ctx.systems = [Sys(k, lab) for k, lab in d["systems"]]


def summary(ctx, results):
    """What bench/run prints at the end: the targets and, per fs workload, the medians."""
    out = [targets_section(ctx, results)]
    tables = by_table(results, "fs")
    if tables:
        systems = []
        for res in tables.values():
            systems += [r["system"] for r in res if r["system"] not in systems]
        rows = []
        for key, res in tables.items():
            bys = {r["system"]: r for r in res}
            nat = med(bys["native"]) if "native" in bys else None
            rows.append([key] + ["%s (%s)" % (fmt_s(med(bys[s])),
                                              fmt_ratio(ratio(med(bys[s]), nat)))
                                 if s in bys and med(bys[s]) is not None else "n/a"
                                 for s in systems])
        out.append("## fs: median (× native)\n\n" +
                   md_table(["workload"] + systems, rows))
    return "\n".join(out)
