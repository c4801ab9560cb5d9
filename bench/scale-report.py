#!/usr/bin/env python3
"""The scale suite's report: from scale.tsv, a Markdown table per series (each tool's
time and peak memory at each point, and the ratio qemu-img / cowimg: above 1 means
cowimg is faster or smaller), the growth of each figure between the first and last
point as an exponent (time ~ x^k: k near 0 is constant, near 1 linear), and, when
gnuplot is installed, a PNG per series of time and of memory against x (log-log).

Usage: bench/scale-report.py scale.tsv OUTDIR ROUNDS
"""

import csv
import math
import os
import shutil
import subprocess
import sys
from collections import defaultdict

UNITS = {
    "data": ("GiB of data", lambda x: f"{x} GiB"),
    "virtual": ("TiB virtual (sparse)", lambda x: f"{x} TiB"),
    "snapshots": ("internal snapshots", lambda x: f"{x}"),
    "chain": ("layers in the chain", lambda x: f"{x}"),
    "cluster": ("cluster size (bytes)", lambda x: {512: "512 B", 65536: "64 KiB", 2097152: "2 MiB"}.get(x, str(x))),
}
# Start-up alone (GNU time and the program) takes about a millisecond or two: below
# that a run is "0.002 s", so that constant figures do not read as growth.
FLOOR = 0.002


def growth(points):
    """The exponent k of y ~ x^k between the first and last point."""
    (x0, y0), (x1, y1) = points[0], points[-1]
    if x1 == x0:
        return float("nan")
    return math.log(max(y1, FLOOR) / max(y0, FLOOR)) / math.log(x1 / x0)


def shape(k):
    if math.isnan(k):
        return "–"
    if abs(k) < 0.2:
        return f"constant ({k:+.2f})"
    if 0.8 <= k <= 1.2:
        return f"linear ({k:+.2f})"
    return f"x^{k:.2f}"


def main():
    tsv, out, rounds = sys.argv[1], sys.argv[2], sys.argv[3]
    rows = list(csv.DictReader(open(tsv), delimiter="\t"))
    # series -> case -> tool -> [(x, seconds, kib)]
    data = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in rows:
        data[r["series"]][r["case"]][r["tool"]].append((int(r["x"]), float(r["seconds"]), int(r["kib"])))
    md = [f"Rounds per point: {rounds} (median time, largest peak RSS). "
          "Ratios are qemu-img ÷ cowimg (above 1: cowimg faster or smaller). "
          "Growth is the exponent k of time or memory ~ x^k from the first point to the last "
          "(times floored at 2 ms, about what starting a program costs).", ""]
    for series, cases in data.items():
        label, fmt = UNITS.get(series, (series, str))
        md += [f"### {series}: {label}", ""]
        md += ["| case | x | qemu-img s | cowimg s | time× | qemu-img MiB | cowimg MiB | mem× |",
               "|---|---:|---:|---:|---:|---:|---:|---:|"]
        grow = []
        for case, tools in cases.items():
            q = sorted(tools["qemu-img"])
            c = sorted(tools["cowimg"])
            for (x, qs, qk), (_, cs, ck) in zip(q, c):
                md.append(f"| {case} | {fmt(x)} | {qs:.3f} | {cs:.3f} | "
                          f"{max(qs, FLOOR) / max(cs, FLOOR):.2f} | {qk / 1024:.1f} | {ck / 1024:.1f} | {qk / ck:.2f} |")
            if len(q) > 1:
                grow.append((case,
                             shape(growth([(x, s) for x, s, _ in q])), shape(growth([(x, s) for x, s, _ in c])),
                             shape(growth([(x, k) for x, _, k in q])), shape(growth([(x, k) for x, _, k in c]))))
        md += ["", "| case | time: qemu-img | time: cowimg | memory: qemu-img | memory: cowimg |",
               "|---|---|---|---|---|"]
        md += [f"| {g[0]} | {g[1]} | {g[2]} | {g[3]} | {g[4]} |" for g in grow]
        md += ["", f"![{series}: time](scale/{series}-time.png) ![{series}: memory](scale/{series}-memory.png)", ""]
        plot(out, series, label, cases)
    open(os.path.join(out, "scale.md"), "w").write("\n".join(md) + "\n")
    print("\n".join(md))


def plot(out, series, label, cases):
    if not shutil.which("gnuplot"):
        return
    for what, col, ylabel in (("time", 1, "seconds"), ("memory", 2, "peak RSS, MiB")):
        files = []
        for i, (case, tools) in enumerate(cases.items()):
            for tool in ("qemu-img", "cowimg"):
                path = os.path.join(out, f".{series}-{i}-{tool}.dat")
                with open(path, "w") as f:
                    for x, s, k in sorted(tools[tool]):
                        f.write(f"{x} {max(s, FLOOR) if col == 1 else k / 1024}\n")
                files.append((path, f"{tool}: {case}", i, tool))
        script = [
            "set terminal pngcairo size 900,540 font ',10'",
            f"set output '{os.path.join(out, f'{series}-{what}.png')}'",
            f"set title '{series}: {what} against {label}'",
            f"set xlabel '{label}'", f"set ylabel '{ylabel}'",
            "set logscale xy", "set key outside right", "set grid",
        ]
        plots = [f"'{p}' using 1:2 with linespoints dt {1 if tool == 'cowimg' else 2} lc {i + 1} "
                 f"pt {7 if tool == 'cowimg' else 6} title '{t}'" for p, t, i, tool in files]
        script.append("plot " + ", ".join(plots))
        subprocess.run(["gnuplot"], input="\n".join(script), text=True, check=True)
        for p, *_ in files:
            os.remove(p)


if __name__ == "__main__":
    main()
