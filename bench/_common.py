"""Shared helpers of the benchmark suite: backends, the copy-bandwidth limit, recording, the targets summary."""
from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable

import numpy as np
import torch

#: backends and the device each one runs on
BACKENDS = ("numpy", "torch-cpu", "torch-cuda")
DEVICE = {"torch-cpu": "cpu", "torch-cuda": "cuda"}

#: bytes/s of a large copy per device ("numpy", "cpu", "cuda"), filled on first use
BANDWIDTH: dict[str, float] = {}
#: median times and extra info of every benchmark of this run, for the targets summary
RESULTS: dict[tuple, dict[str, Any]] = {}
LOAD: dict[str, Any] = {}

COPY_BYTES = 256 * 2**20  # 8x the 32 MiB L3 of the reference machine
COPY_REPS = 9


def device_limit(backend: str) -> float:
    """The memory-bandwidth limit of the device ``backend`` runs on, bytes/s.

    CPU (``numpy``, ``torch-cpu``): the faster of the NumPy and the torch copy — both move the
    same bytes through the same memory, so the better one is what the machine can do. CUDA: the
    torch copy on the GPU.
    """
    if backend == "torch-cuda":
        return measure_copy_bandwidth("torch-cuda")
    return max(measure_copy_bandwidth("numpy"), measure_copy_bandwidth("torch-cpu"))


def measure_copy_bandwidth(backend: str) -> float:
    """Copy bandwidth of ``backend`` in bytes moved per second (read + write), median of 9 copies."""
    key = "numpy" if backend == "numpy" else DEVICE[backend]
    if key not in BANDWIDTH:
        n = COPY_BYTES // 8
        if key == "numpy":
            src, dst = np.ones(n), np.empty(n)
            fn = lambda: np.copyto(dst, src)  # noqa: E731
        else:
            src = torch.ones(n, dtype=torch.float64, device=key)
            dst = torch.empty_like(src)
            sync = torch.cuda.synchronize if key == "cuda" else (lambda: None)
            fn = lambda: (dst.copy_(src), sync())  # noqa: E731
        fn()
        ts = []
        for _ in range(COPY_REPS):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        BANDWIDTH[key] = 2 * n * 8 / statistics.median(ts)
        del src, dst
    return BANDWIDTH[key]


def synced(fn: Callable[[], Any], backend: str) -> Callable[[], Any]:
    """``fn`` followed by a device synchronisation for CUDA (kernels are asynchronous)."""
    if backend != "torch-cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


def run(benchmark, fn: Callable[[], Any], *, backend: str, rounds: int, warmup: int = 1) -> Any:
    """Time ``fn`` with a fixed number of rounds (one call each) after ``warmup`` calls."""
    return benchmark.pedantic(synced(fn, backend), rounds=rounds, warmup_rounds=warmup, iterations=1)


def record(benchmark, key: tuple, *, backend: str, min_bytes: float, **extra: Any) -> None:
    """Store min_bytes and the fraction of the device's copy bandwidth in ``benchmark.extra_info``.

    ``key`` = (group, kernel, backend, dtype, size) identifies the result in the summary.
    """
    benchmark.extra_info.update(min_bytes=int(min_bytes), backend=backend,
                                THP_MEM_ALLOC_ENABLE=os.environ.get("THP_MEM_ALLOC_ENABLE"),
                                OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS"),
                                torch_threads=torch.get_num_threads(), **extra)
    if benchmark.stats is None:  # benchmarks disabled (plain `pytest bench`): a smoke run
        return
    med = benchmark.stats.stats.median
    limit = device_limit(backend)
    raw = min_bytes / med / limit
    benchmark.extra_info.update(median_s=med, achieved_GBps=min_bytes / med / 1e9, limit_GBps=limit / 1e9,
                                fraction_of_limit=min(1.0, raw), fraction_raw=raw)
    RESULTS[key] = dict(benchmark.extra_info)


def nbytes(*arrays: Any) -> int:
    """Total bytes of NumPy arrays / torch tensors."""
    total = 0
    for a in arrays:
        total += a.numel() * a.element_size() if isinstance(a, torch.Tensor) else np.asarray(a).nbytes
    return total


# ----------------------------------------------------------------------------- summary
def _fmt_t(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def target_summary() -> list[str]:
    if not RESULTS:
        return []
    out = []
    if LOAD:
        out.append(f"load average (1, 5, 15 min) at start {tuple(round(x, 2) for x in LOAD.get('start', ()))}, "
                   f"at end {tuple(round(x, 2) for x in LOAD.get('end', ()))}; "
                   f"copy bandwidth {', '.join(f'{k} {v / 1e9:.1f} GB/s' for k, v in BANDWIDTH.items())} "
                   "(cpu = torch on the CPU)")
    # md-predictive: fraction of the copy bandwidth and speed-up over the naive loop
    for key, r in RESULTS.items():
        group, kernel, backend, dtype, size = key
        if group == "md-predictive" and kernel == "md_predictive_all_prefixes" and backend != "numpy" and r.get("largest"):
            target = 0.25 if backend == "torch-cpu" else 0.40
            ok = "met" if r["fraction_raw"] >= target else "MISSED"
            out.append(f"md-predictive md_predictive_all_prefixes {backend} {dtype} {size}: {_fmt_t(r['median_s'])}, "
                       f"{100 * r['fraction_raw']:.1f} % of copy bandwidth (target >= {100 * target:.0f} %: {ok})")
            naive = RESULTS.get(("md-predictive", "naive_loop", "numpy", "float64", size))
            if naive:
                sp = naive["scaled_median_s"] / r["median_s"]
                out.append(f"    naive loop (scaled to the full batch) {_fmt_t(naive['scaled_median_s'])}: "
                           f"speed-up {sp:.0f}x (target >= 50x: {'met' if sp >= 50 else 'MISSED'})")
    # torch CPU against NumPy at the largest size of each kernel
    largest: dict[tuple, str] = {}
    for (group, kernel, backend, dtype, size), r in RESULTS.items():
        if backend == "numpy" and r.get("largest"):
            largest[(group, kernel)] = size
    for (group, kernel), size in sorted(largest.items()):
        t_np = RESULTS[(group, kernel, "numpy", "float64", size)]["median_s"]
        for dtype in ("float64", "float32"):
            r = RESULTS.get((group, kernel, "torch-cpu", dtype, size))
            if r:
                ratio = r["median_s"] / t_np
                ok = "met" if ratio <= 1.0 else "MISSED"
                out.append(f"{group} {kernel} {size}: torch-cpu {dtype} {_fmt_t(r['median_s'])} vs numpy "
                           f"{_fmt_t(t_np)} (torch/numpy {ratio:.2f}; no slower than NumPy: {ok})")
    # exact posterior
    for size, limit in (("m3-n512", 1.0), ("m5-n64", 2.0)):
        r = RESULTS.get(("bayes", "posterior_mean", "numpy", "float64", size))
        if r:
            ok = "met" if r["median_s"] < limit else "MISSED"
            out.append(f"bayes posterior_mean {size}: {_fmt_t(r['median_s'])} (target < {limit:.0f} s: {ok})")
    for key, r in RESULTS.items():
        if key[1] == "posterior_mean_mc":
            ex = RESULTS.get(("bayes", "posterior_mean", "numpy", "float64", key[4].split("-K")[0]))
            exs = f"; exact {_fmt_t(ex['median_s'])}" if ex else ""
            out.append(f"bayes posterior_mean_mc {key[4]}: {_fmt_t(r['median_s'])} for max |error| "
                       f"{r['abs_error']:.1e} (stderr {r['stderr']:.1e}, target 1e-4){exs}")
    out += _kernel_targets()
    out += _thread_targets()
    out += _cold_targets()
    return out


def _cold_targets() -> list[str]:
    """Group ``cold-start``: a fresh process's first small fit against a warm fit, in CPU time."""
    out = []
    for (group, _, _, _, size), r in RESULTS.items():
        if group == "cold-start":
            e, goal = r["excess_cpu_s"], r["target_excess_s"]
            out.append(f"cold start {size} (n={r['n']}): first fit {_fmt_t(r['cold_cpu_s'])} CPU with the import, "
                       f"warm {_fmt_t(r['warm_cpu_s'])}: {e:+.3f} s, {r['cold_cpu_s'] / r['warm_cpu_s']:.1f}x "
                       f"(target <= +{goal} s: {'met' if e <= goal else 'MISSED'})")
    return out


def _thread_targets() -> list[str]:
    """Groups ``busy`` and ``threads``: two threads against one, as met/MISSED lines."""
    out = []
    for kernel in ("fit", "bayes_batch", "bayes_rows", "allprefix"):
        one, two = (RESULTS.get(("busy", kernel, "numpy", "float64", f"threads{t}")) for t in (1, 2))
        if one and two:
            r = two["median_s"] / one["median_s"]
            out.append(f"busy machine {kernel}: two threads {_fmt_t(two['median_s'])}, one thread "
                       f"{_fmt_t(one['median_s'])} next to a busy process: {r:.2f} of the one-thread time "
                       f"(target <= 1: {'met' if r <= 1 else 'MISSED'})")
    one, two = (RESULTS.get(("threads", "bayes_batch", "numpy", "float64", f"threads{t}")) for t in (1, 2))
    if one and two:
        sp = one["median_s"] / two["median_s"]
        out.append(f"threads exact posterior, batch of 8 (m=4, n=48): two threads {sp:.2f}x one thread "
                   f"(target >= 1.7x: {'met' if sp >= 1.7 else 'MISSED'})")
    return out


def _kernel_targets() -> list[str]:
    """The compiled kernels' targets (group ``kernels``, one thread), as met/MISSED lines."""
    out = []
    get = lambda kernel, backend, dtype, size: RESULTS.get(("kernels", kernel, backend, dtype, size))  # noqa: E731
    size = "B4096-T256"
    tg = get("allprefix_generic", "torch-cpu", "float32", size)
    ng = get("allprefix_generic", "numpy", "float64", size)
    for dtype in ("float32", "float64"):
        k = get("allprefix_kernel", "numpy", dtype, size)
        if not k:
            continue
        fresh, pre = get("write_ceiling", "numpy", dtype, size), get("write_ceiling_prealloc", "numpy", dtype, size)
        if fresh:
            frac = fresh["median_s"] / k["median_s"]
            pfrac = pre["median_s"] / k["median_s"] if pre else float("nan")
            out.append(f"kernels all-prefix {dtype}: {_fmt_t(k['median_s'])} = {100 * frac:.0f} % of the write ceiling "
                       f"(fresh {_fmt_t(fresh['median_s'])}; {100 * pfrac:.0f} % of the preallocated one; "
                       f"{100 * k['fraction_raw']:.1f} % of copy bandwidth) (target >= 40 %: "
                       f"{'met' if frac >= 0.4 else 'MISSED'})")
        if tg:
            r = tg["median_s"] / k["median_s"]
            out.append(f"kernels all-prefix {dtype} vs the generic torch float32 route {_fmt_t(tg['median_s'])}: "
                       f"{r:.1f}x (target >= 3x: {'met' if r >= 3 else 'MISSED'})")
        if ng and dtype == "float64":
            r = ng["median_s"] / k["median_s"]
            out.append(f"kernels all-prefix float64 vs the generic NumPy route {_fmt_t(ng['median_s'])}: "
                       f"{r:.1f}x (target >= 5x: {'met' if r >= 5 else 'MISSED'})")
    for sz in ("m3-n512", "m5-n64", "m5-n256"):
        k, g = get("bayes_kernel", "numpy", "float64", sz), get("bayes_generic", "numpy", "float64", sz)
        if k and g:
            r = g["ns_per_state_step"] / k["ns_per_state_step"]
            out.append(f"kernels exact posterior {sz}: {k['ns_per_state_step']:.1f} ns per state-step against "
                       f"{g['ns_per_state_step']:.1f} (generic): {r:.1f}x (target >= 5x: {'met' if r >= 5 else 'MISSED'}; "
                       "the target's baseline is the previous release: bench/compare_core_versions.py)")
        elif k:
            out.append(f"kernels exact posterior {sz}: {_fmt_t(k['median_s'])}, {k['ns_per_state_step']:.1f} ns per "
                       "state-step (completes within 8 GiB: met)")
    fk, fg = get("fit_kernel", "numpy", "float64", "S10-m4-n100000"), get("fit_generic", "numpy", "float64", "S10-m4-n100000")
    if fk and fg:
        r = fg["median_s"] / fk["median_s"]
        same = abs(fk["loglik"] - fg["loglik"]) <= 1e-9 * abs(fg["loglik"])
        out.append(f"kernels fit S=10 m=4 n=1e5, 10 restarts: {_fmt_t(fk['median_s'])} against {_fmt_t(fg['median_s'])} "
                   f"(generic EM map): {r:.1f}x, log-likelihood equal to 1e-9: {'yes' if same else 'NO'}")
    rss = get("bayes_peak_rss", "numpy", "float64", "m5-n128")
    if rss:
        gib = rss["peak_bytes"] / 2**30
        out.append(f"kernels exact posterior m5-n128 peak memory {gib:.2f} GiB (target < 0.5 GiB: "
                   f"{'met' if gib < 0.5 else 'MISSED'})")
    return out
