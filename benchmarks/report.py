"""Markdown summary of benchmark rows (from one run of benchmarks.bench_cpu, or read from its CSV)."""
import math

from benchmarks.suite import PEER_PROVIDERS, is_ours

# The project's targets for the DASP path and the stage-1 op (docs/benchmarks.md).
TARGET_VS_PEER = 1.8
TARGET_VS_ORIGINAL = 3.0
TARGET_COPY_FRACTION = 0.7


def num(v):
    """float(v), or nan for '', None and text (CSV cells are strings)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def _ms(v):
    v = num(v)
    if math.isnan(v):
        return "—"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def _ok(r):
    return r.get("status") == "ok" and not math.isnan(num(r.get("median_ms")))


def provider_order(rows):
    names = []
    for r in rows:
        if r["provider"] not in names:
            names.append(r["provider"])
    peers = [p for p in PEER_PROVIDERS if p in names]
    rest = sorted(p for p in names if p not in peers and p != "torch")
    return peers + [p for p in rest if not is_ours(p)] + [p for p in rest if is_ours(p)]


def _key(r):
    return (r["size"], int(num(r["threads"])), r["workload"], r["allocator"])


def _best(rows, pred):
    cands = [r for r in rows if _ok(r) and pred(r["provider"])]
    return min(cands, key=lambda r: num(r["median_ms"])) if cands else None


def _table(header, body):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def _groups(rows, keyfn):
    out = {}
    for r in rows:
        out.setdefault(keyfn(r), []).append(r)
    return out


def _env_lines(rows):
    r0 = rows[0]
    lines = [f"- run `{r0.get('run_id', '')}` at {r0.get('timestamp', '')}, commit "
             f"`{r0.get('git_commit', '')}`",
             f"- command: `{r0.get('command', '')}`",
             f"- {r0.get('device_name', '')} ({r0.get('cpu_count', '')} logical CPUs); torch "
             f"{r0.get('torch_version', '')}, triton {r0.get('triton_version', '')}, onnxruntime "
             f"{r0.get('onnxruntime_version', '')}, numpy {r0.get('numpy_version', '')}, "
             f"dasp_kernels {r0.get('dasp_kernels_version', '')} (backends: "
             f"{r0.get('dasp_backends', '')})"]
    for alloc, rs in _groups(rows, lambda r: r["allocator"]).items():
        lines.append(f"- allocator `{alloc}`: {rs[0].get('allocator_env', '')}; 1-minute load "
                     f"average at its start: {rs[0].get('loadavg_1m', '')}")
    return lines


def markdown(rows):
    if not rows:
        return "No benchmark rows.\n"
    out = ["# DASP benchmark", ""] + _env_lines(rows) + [""]
    out += ["Median ms (20%–80% quantiles) per call, fp32, eval mode, no_grad. Every provider's "
            "output is checked against eager before it is timed. `ours:*` are this library "
            "(`dasp_kernels.fuse(model)` or the op called directly; `+cl`: channels_last input); "
            "`ours:reference` is the same code path on the pure-PyTorch reference ops. `load`: the "
            "machine's 1-minute load average when the row was measured; above the thread count, "
            "other processes share the cores and OpenMP (torch) suffers far more than ONNX "
            "Runtime's work-stealing pool.", ""]

    stream = [r for r in rows if r["kind"] == "stream" and _ok(r)]
    ceilings = {}  # (allocator, threads) -> {"copy": GB/s, "fma": GFLOP/s}
    if stream:
        out += ["## Ceilings: memory bandwidth and FMA peak (the roofline)", "",
                "copy and triad: 2 and 3 buffers of the size shown, counted once each (read + "
                "write). FMA: the peak of vector FMAs in registers on every thread, with this "
                "library's CPU build (`dasp_kernels.cpu_isa()`). An op that does F FLOPs per "
                "byte it must move cannot pass min(copy GB/s, FMA GFLOP/s / F) GB/s.", ""]
        body = []
        for (alloc, threads), rs in _groups(stream, lambda r: (r["allocator"], r["threads"])).items():
            by = {r["workload"]: r for r in rs}
            c, t, f = by.get("stream/copy"), by.get("stream/triad"), by.get("stream/fma")
            ceilings[(alloc, int(num(threads)))] = {"copy": num(c["gbps"]) if c else None,
                                                    "fma": num(f["gflops"]) if f else None}
            body.append([alloc, threads, c["size"] if c else "—",
                         f"{num(c['gbps']):.1f}" if c else "—", f"{num(t['gbps']):.1f}" if t else "—",
                         f"{num(f['gflops']):.1f}" if f else "—"])
        out += [_table(["allocator", "threads", "buffer", "copy GB/s", "triad GB/s",
                        "FMA GFLOP/s"], body), ""]

    work = [r for r in rows if r["kind"] != "stream"]
    provs = provider_order(work)
    for (size, threads), rs in _groups(work, lambda r: (r["size"], int(num(r["threads"])))).items():
        out += [f"## Latency, {size}, {threads} thread{'s' if threads > 1 else ''}", ""]
        body = []
        for (_, _, wl, alloc), cell_rows in _groups(rs, _key).items():
            by = {r["provider"]: r for r in cell_rows}
            cells = []
            for p in provs:
                r = by.get(p)
                if r is None or r["status"] == "skipped":
                    cells.append("—")
                elif r["status"] != "ok":
                    cells.append(r["status"].upper())
                else:
                    cells.append(f"{_ms(r['median_ms'])} ({_ms(r['p20_ms'])}–{_ms(r['p80_ms'])})")
            ours = _best(cell_rows, is_ours)
            peer = _best(cell_rows, lambda p: p in PEER_PROVIDERS)
            ratio = (f"{num(peer['median_ms']) / num(ours['median_ms']):.2f}x vs {peer['provider']}"
                     if ours and peer else "—")
            load = num(cell_rows[0].get("load_at_case"))
            body.append([wl, alloc] + cells + [ratio, "" if math.isnan(load) else f"{load:.1f}"])
        out += [_table(["workload", "allocator"] + provs + ["best ours vs best peer", "load"], body),
                ""]

    out += _targets(work, ceilings)
    out += _details(work, provs)
    notes = {}
    for r in work:
        if r["status"] not in ("ok", ""):
            wl = notes.setdefault((r["provider"], r["status"], r.get("note", "")), [])
            if r["workload"] not in wl:
                wl.append(r["workload"])
    if notes:
        out += ["## Not timed", ""]
        out += [f"- `{p}` {s} ({', '.join(wl)}): {n}" for (p, s, n), wl in sorted(notes.items())]
        out.append("")
    return "\n".join(out) + "\n"


# Ratios at other sizes and thread counts are compared with this configuration's, per allocator.
BASE_SIZE, BASE_THREADS = "1x3x1024x1024", 2
TARGET_DRIFT = 0.15


def _target_numbers(rows, ceilings):
    """Per (size, threads, allocator): the fastest ours / peer / original rows and the ratios.
    ceilings: {(allocator, threads): {"copy": GB/s, "fma": GFLOP/s}} of the same run."""
    out = []
    for (size, threads, alloc), rs in _groups(
            rows, lambda r: (r["size"], int(num(r["threads"])), r["allocator"])).items():
        # the fused path as users get it (fuse) and as one op: whichever is faster counts
        dasp = [r for r in rs if r["workload"] in ("DASP", "dasp_spatial_path")]
        sp = [r for r in rs if r["workload"] == "SpatialPath"]
        dw = [r for r in rs if r["workload"] == "dwconv_bn_relu/s1"]
        if not (dasp or dw):
            continue
        t = {"size": size, "threads": threads, "alloc": alloc,
             "ours": _best(dasp, is_ours), "peer": _best(dasp, lambda p: p in PEER_PROVIDERS),
             "orig": _best(sp, lambda p: True), "dw": _best(dw, is_ours),
             "ceiling": ceilings.get((alloc, threads), {}).get("copy"),
             "fma": ceilings.get((alloc, threads), {}).get("fma"), "vs_peer": math.nan,
             "vs_orig": math.nan, "copy_frac": math.nan, "fma_frac": math.nan,
             "fma_needed": math.nan}
        if t["ours"] and t["peer"]:
            t["vs_peer"] = num(t["peer"]["median_ms"]) / num(t["ours"]["median_ms"])
        if t["ours"] and t["orig"]:
            t["vs_orig"] = num(t["orig"]["median_ms"]) / num(t["ours"]["median_ms"])
        if t["dw"] and t["ceiling"]:
            t["copy_frac"] = num(t["dw"]["gbps"]) / t["ceiling"]
        if t["dw"] and t["fma"]:
            # The op's GFLOP/s as a share of the FMA peak, and the share that the copy target
            # needs at the op's FLOPs per byte: above 100%, no kernel can meet it on this machine.
            t["fma_frac"] = num(t["dw"]["gflops"]) / t["fma"]
            flop_per_byte = num(t["dw"]["gflop"]) * 1e3 / num(t["dw"]["min_mb"])
            if t["ceiling"] and flop_per_byte > 0:
                t["fma_needed"] = TARGET_COPY_FRACTION * t["ceiling"] * flop_per_byte / t["fma"]
        out.append(t)
    return out


def _targets(rows, ceilings):
    """The targets, per (size, threads, allocator), and how far the ratios move away from
    the 1x3x1024x1024, 2-thread ones."""
    nums = _target_numbers(rows, ceilings)
    if not nums:
        return []

    def meets(v, target):
        return "meets" if v >= target else "below"

    body = []
    for t in nums:
        ours, peer, orig, dw = t["ours"], t["peer"], t["orig"], t["dw"]
        cells = [t["size"], t["threads"], t["alloc"]]
        cells.append(_ms(ours["median_ms"]) + f" ({ours['provider']}, {ours['workload']})"
                     if ours else "—")
        cells.append(f"{t['vs_peer']:.2f}x vs {peer['provider']} {_ms(peer['median_ms'])} "
                     f"({meets(t['vs_peer'], TARGET_VS_PEER)} {TARGET_VS_PEER}x)"
                     if ours and peer else "—")
        cells.append(f"{t['vs_orig']:.2f}x vs {orig['provider']} {_ms(orig['median_ms'])} "
                     f"({meets(t['vs_orig'], TARGET_VS_ORIGINAL)} {TARGET_VS_ORIGINAL}x)"
                     if ours and orig else "—")
        cells.append(f"{num(dw['gbps']):.1f} / {t['ceiling']:.1f} GB/s = {t['copy_frac']:.0%} "
                     f"({meets(t['copy_frac'], TARGET_COPY_FRACTION)} {TARGET_COPY_FRACTION:.0%})"
                     if not math.isnan(t["copy_frac"]) else "—")
        cells.append(f"{num(dw['gflops']):.1f} / {t['fma']:.1f} GFLOP/s = {t['fma_frac']:.0%}; "
                     f"{TARGET_COPY_FRACTION:.0%} of copy needs {t['fma_needed']:.0%}"
                     if not math.isnan(t["fma_needed"]) else "—")
        body.append(cells)
    out = ["## Targets", "",
           _table(["size", "threads", "allocator", "DASP path, fastest ours (ms)",
                   "vs fastest peer's DASP path", "vs fastest original spatial path",
                   "dwconv_bn_relu/s1 GB/s vs copy",
                   "dwconv_bn_relu/s1 GFLOP/s vs FMA peak"], body), ""]

    base = {t["alloc"]: t for t in nums
            if t["size"] == BASE_SIZE and t["threads"] == BASE_THREADS}
    body = []
    for t in nums:
        b = base.get(t["alloc"])
        if b is None or t is b:
            continue
        cells, moves = [t["size"], t["threads"], t["alloc"]], []
        for key in ("vs_peer", "vs_orig", "copy_frac"):
            if math.isnan(t[key]) or math.isnan(b[key]):
                cells.append("—")
                continue
            rel = t[key] / b[key]
            moves.append(abs(rel - 1) <= TARGET_DRIFT)
            cells.append(f"{rel:.2f}")
        drift = f"{TARGET_DRIFT:.0%}"
        cells.append("—" if not moves else
                     f"all within {drift}" if all(moves) else f"outside {drift}")
        body.append(cells)
    if body:
        out += [f"Each ratio divided by the same allocator's ratio at {BASE_SIZE}, "
                f"{BASE_THREADS} threads (1.00: unchanged; the target is "
                f"{1 - TARGET_DRIFT:.2f}-{1 + TARGET_DRIFT:.2f}):", "",
                _table(["size", "threads", "allocator", "vs peer", "vs original",
                        "dwconv GB/s / copy", "verdict"], body), ""]
    return out


def _details(rows, provs):
    body = []
    order = {p: i for i, p in enumerate(provs)}
    for key, rs in _groups(rows, _key).items():
        for r in sorted(rs, key=lambda r: order.get(r["provider"], 99)):
            if r["status"] == "skipped":
                continue
            sp = num(r.get("speedup_of_ours"))
            body.append([r["workload"], r["input_shape"], r["threads"], r["allocator"], r["provider"],
                         r["status"], _ms(r.get("median_ms")), _ms(r.get("p20_ms")),
                         _ms(r.get("p80_ms")), f"{num(r.get('gflops')):.1f}",
                         f"{num(r.get('gbps')):.2f}", f"{num(r.get('max_abs_diff')):.1e}",
                         f"{num(r.get('faults_per_call')):.0f}",
                         f"{sp:.2f}" if not math.isnan(sp) else ""])
    return ["## Details", "",
            "GFLOP/s: 2 x multiply-accumulates of the convolutions (FlopCounterMode on the "
            "reference) per second; GB/s: inputs + output + weights, each moved once, per second; "
            "faults: minor page faults per call; ours speed-up: this median / the fastest `ours` "
            "median.", "",
            _table(["workload", "input", "threads", "allocator", "provider", "status", "median ms",
                    "p20", "p80", "GFLOP/s", "GB/s", "max abs diff", "faults", "ours speed-up"],
                   body), ""]
