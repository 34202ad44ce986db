"""Markdown table of a pytest-benchmark JSON file (median time and % of the copy-bandwidth limit).

Usage::

    pytest bench --benchmark-only --benchmark-json=bench.json
    python bench/report.py bench.json [--largest]

``--largest`` drops the rows of the small sizes of the likelihood and md-predictive kernels.

One row per benchmark, grouped as in the suite; "% of limit" is ``fraction_raw`` of extra_info
(min_bytes / median time / copy bandwidth of the benchmark's backend, measured in the same run).
"""
from __future__ import annotations

import argparse
import json
import sys

ORDER = ["likelihood", "md-predictive", "estimators", "bayes", "kernels", "threads", "busy", "cold-start", "bandwidth"]
LABEL = {"numpy": "NumPy", "cpu": "torch CPU", "cuda": "torch CUDA"}


def fmt_time(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} µs"


def main(path: str, largest_only: bool = False) -> None:
    d = json.load(open(path))
    mi = d["machine_info"]
    bw = mi.get("copy_bandwidth_GBps", {})
    print(f"Run {d['datetime'][:16]} UTC; {mi.get('cpu', {}).get('brand_raw', mi.get('processor', ''))}; "
          f"torch {mi.get('torch')} ({mi.get('torch_threads')} threads), numpy {mi.get('numpy')}; "
          f"load average at the end {tuple(round(x, 1) for x in mi.get('loadavg_at_end', ()))}; "
          f"copy bandwidth {', '.join(f'{LABEL.get(k, k)} {v:.1f} GB/s' for k, v in bw.items())}.")
    print()
    print("| group | benchmark | median | % of limit |")
    print("|---|---|---:|---:|")
    rows = sorted(d["benchmarks"], key=lambda b: (ORDER.index(b["group"]) if b["group"] in ORDER else 99))
    for b in rows:
        e = b["extra_info"]
        if largest_only and e.get("largest") is False:
            continue
        name = b["name"].replace("test_", "", 1)
        t = fmt_time(b["stats"]["median"])
        if "scaled_median_s" in e:
            t += f" (x{e['scale']:.0f} = {fmt_time(e['scaled_median_s'])})"
        if "samples" in e:
            name += f" K={e['samples']:,}, max abs error {e['abs_error']:.1e}"
        frac = e.get("fraction_raw")
        pct = "–" if frac is None else (f"{100 * frac:.1f} %" if frac >= 0.001 else "<0.1 %")
        print(f"| {b['group']} | `{name}` | {t} | {pct} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Markdown table of a pytest-benchmark JSON file "
                                 "(from `pytest bench --benchmark-only --benchmark-json=bench.json`).")
    ap.add_argument("path", nargs="?", default="bench.json", help="the JSON file (default: bench.json)")
    ap.add_argument("--largest", action="store_true", help="only the largest sizes of each kernel")
    a = ap.parse_args()
    try:
        main(a.path, largest_only=a.largest)
    except FileNotFoundError:
        ap.error(f"no such file: {a.path} (run `pytest bench --benchmark-only --benchmark-json={a.path}` first)")
