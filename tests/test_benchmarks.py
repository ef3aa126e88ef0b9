"""Smoke tests of the benchmark harness on tiny shapes: it runs, it measures what it should, it
catches a provider that computes the wrong thing, and it writes rows with their environment."""
import importlib.util
import math
import os
import random
import time
from pathlib import Path

import pytest
import torch

import dasp_kernels
from conftest import needs_cpu_ext
from benchmarks import bench_cpu, harness, quick, report, suite

RESULTS_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
FAST = {"warmup": 0, "min_reps": 1, "max_reps": 1, "min_time_s": 0.0}
TINY = (1, 3, 32, 32)


def _quiet(_line):
    pass


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny shapes gain nothing from threads, and on a shared 2-core machine a second OpenMP
    # thread waits at every barrier.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_measure_times_a_sleep_of_known_length():
    t = harness.measure(lambda: time.sleep(0.02), warmup=1, min_reps=5, max_reps=5, min_time_s=0)
    assert t.reps == 5 and len(t.samples_ms) == 5
    # sleep never returns early; it may overshoot on a loaded machine, but not by 3x
    assert 19.9 <= t.p20_ms <= t.median_ms <= t.p80_ms < 60


def test_thread_clock_counts_work_not_sleep():
    spin = lambda: sum(range(20000))  # noqa: E731
    t = harness.measure_interleaved({"sleep": lambda: time.sleep(0.02), "spin": spin},
                                    warmup=1, min_reps=3, max_reps=3, min_time_s=0,
                                    clock="thread")
    assert t["sleep"].median_ms < 2 and t["spin"].median_ms > 0


def test_thread_clock_needs_one_thread():
    torch.set_num_threads(2)
    with pytest.raises(ValueError, match="clock 'thread' expected torch.get_num_threads"):
        harness.measure(lambda: None, warmup=0, min_reps=1, max_reps=1, clock="thread")


def test_measure_runs_until_min_time():
    t = harness.measure(lambda: time.sleep(0.002), warmup=0, min_reps=2, max_reps=1000,
                        min_time_s=0.05)
    assert 2 <= t.reps <= 26  # >= 50 ms spent, at >= 2 ms a call


def test_interleaved_timing_keeps_callables_apart():
    ts = harness.measure_interleaved({"short": lambda: time.sleep(0.002),
                                      "long": lambda: time.sleep(0.02)},
                                     warmup=0, min_reps=4, max_reps=4, min_time_s=0)
    assert ts["short"].reps == ts["long"].reps == 4
    assert ts["short"].median_ms < ts["long"].median_ms
    assert ts["long"].median_ms >= 19.9


def _call_order(order, rounds=12, seed=0):
    seq = []
    fns = {k: (lambda k=k: seq.append(k)) for k in "abcd"}
    harness.measure_interleaved(fns, warmup=0, min_reps=rounds, max_reps=rounds, min_time_s=0,
                                gap_s=0, order=order, seed=seed)
    return seq


def test_interleaved_timing_shuffles_each_round():
    seq = _call_order("shuffled")
    rounds = [seq[i:i + 4] for i in range(0, len(seq), 4)]
    assert len(rounds) == 12 and all(sorted(r) == list("abcd") for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1
    # What a call follows changes from round to round, for every callable.
    before = {k: set() for k in "abcd"}
    for a, b in zip(seq, seq[1:]):
        before[b].add(a)
    assert all(len(v) > 1 for v in before.values()), before
    assert _call_order("shuffled") == seq  # seeded: a rerun times the same sequence
    assert _call_order("shuffled", seed=1) != seq


def test_interleaved_timing_keeps_a_fixed_order_when_asked():
    assert _call_order("fixed") == list("abcd") * 12
    with pytest.raises(ValueError, match="expected order 'shuffled' or 'fixed', got 'random'"):
        harness.measure_interleaved({"a": lambda: None}, order="random")


def test_bench_cpu_passes_the_order_to_the_timing():
    assert bench_cpu.timing_kwargs(bench_cpu.parse_args([]))["order"] == "shuffled"
    args = bench_cpu.parse_args(["--order", "fixed", "--reps", "3"])
    assert bench_cpu.timing_kwargs(args) == {"warmup": 1, "min_reps": 3, "max_reps": 3,
                                             "min_time_s": 0.0, "order": "fixed"}
    with pytest.raises(SystemExit):
        bench_cpu.parse_args(["--order", "random"])


def test_quantile_matches_numpy():
    np = pytest.importorskip("numpy")
    rng = random.Random(0)
    for n in (1, 2, 7, 50):
        vals = [rng.random() for _ in range(n)]
        for q in (0.2, 0.5, 0.8):
            assert math.isclose(harness.quantile(vals, q), float(np.quantile(vals, q)))


def test_check_output_flags_wrong_values_shape_and_nan():
    ref = torch.randn(2, 8, 5, 5)
    assert harness.check_output(ref + 1e-6, ref)[0]
    assert harness.check_output(ref.contiguous(memory_format=torch.channels_last), ref)[0]
    ok, diff = harness.check_output(ref * 1.05, ref)
    assert not ok and diff > 0
    assert not harness.check_output(ref[:1], ref)[0]
    bad = ref.clone()
    bad[0, 0, 0, 0] = float("nan")
    assert not harness.check_output(bad, ref)[0]


def test_wrong_provider_is_flagged_and_not_timed():
    case = suite.make_case("dasp_stage/s2", (1, 3, 16, 24))

    def slightly_wrong(c):
        return suite.Provider("slightly_wrong", lambda: c.module(*c.inputs) * 1.01)

    def fast_garbage(c):
        out = torch.zeros_like(c.module(*c.inputs))
        return suite.Provider("fast_garbage", lambda: out)

    rows = suite.run_case(case, threads=1, backends=[], timing=FAST, log=_quiet,
                          providers=["eager", "slightly_wrong", "fast_garbage"],
                          extra={"slightly_wrong": slightly_wrong, "fast_garbage": fast_garbage})
    by = {r["provider"]: r for r in rows}
    assert by["eager"]["status"] == "ok" and by["eager"]["median_ms"] > 0
    for name in ("slightly_wrong", "fast_garbage"):
        assert by[name]["status"] == "wrong"
        assert "median_ms" not in by[name]
        assert by[name]["max_abs_diff"] > 0
        assert "differs from eager" in by[name]["note"]


def test_every_available_provider_runs_and_agrees_on_tiny_shapes():
    backends = ["reference", "cpu"]
    for workload in ("DASP",):  # two compiles (compile, ours:cpu+compile): each costs seconds
        case = suite.make_case(workload, TINY)
        rows = suite.run_case(case, threads=1, backends=backends, timing=FAST, log=_quiet)
        by = {r["provider"]: r for r in rows}
        for name, r in by.items():
            assert r["status"] in ("ok", "skipped"), (workload, name, r["status"], r["note"])
            if r["status"] == "skipped":
                assert r["note"], (workload, name)
        for name in ("eager", "eager+fold+cl", "compile", "ours:reference"):
            assert by[name]["status"] == "ok", (workload, name, by[name]["note"])
        if importlib.util.find_spec("onnxruntime"):
            assert by["onnxruntime"]["status"] == "ok", by["onnxruntime"]["note"]
        import dasp_kernels
        if dasp_kernels.backend_status()["cpu"] is None:
            for name in ("ours:cpu", "ours:cpu+cl", "ours:cpu+compile"):
                assert by[name]["status"] == "ok", (name, by[name]["note"])
            assert by["eager"]["speedup_of_ours"] > 0
        assert by["eager"]["gflop"] > 0 and by["eager"]["gbps"] > 0


def test_arena_provider_runs_the_compiled_model_inside_the_arena(monkeypatch):
    import dasp_kernels
    if dasp_kernels.backend_status()["cpu"] is not None:
        pytest.skip("the CPU extension did not load")
    names = lambda case: [n for n, _ in suite.provider_builders(case, 1, ["reference", "cpu"])]
    assert "ours:cpu+compile+arena" in names(suite.make_case("BiSeNetV1/dasp", TINY))
    assert "ours:cpu+compile+arena" not in names(suite.make_case("DASP", TINY))
    seen = []
    # Stands in for torch.compile of the fused model (seconds): what matters is where it runs.
    monkeypatch.setattr(suite, "_ours_compiled", lambda case, backend: suite.Provider(
        f"ours:{backend}+compile", lambda: seen.append(dasp_kernels.cpu_arena_stats().enabled),
        note="n"))
    p = suite._ours_compiled_arena(suite.make_case("BiSeNetV1/dasp", TINY), "cpu")
    p.fn()
    assert p.name == "ours:cpu+compile+arena" and "cpu_arena" in p.note
    assert seen == [True] and not dasp_kernels.cpu_arena_stats().enabled


def test_fold_conv_bn_matches_unfolded_bisenet():
    case = suite.make_case("BiSeNetV1/dasp", TINY)
    folded = suite.fold_conv_bn(case.module)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        assert harness.check_output(folded(*case.inputs), case.module(*case.inputs))[0]


def test_cli_writes_rows_with_environment_per_allocator(tmp_path, capsys):
    rc = bench_cpu.main(["--sizes", "1x3x32x32", "--threads", "1", "--reps", "2",
                         "--workloads", "dwconv_bn_relu/s1", "DASP", "stream", "--stream-mb", "1",
                         "--allocators", "default", "nofault",
                         "--providers", "eager", "onnxruntime", "ours:reference",
                         "--results-dir", str(tmp_path)])
    assert rc == 0
    rows = harness.read_csv(tmp_path / "cpu.csv")
    assert {r["allocator"] for r in rows} == {"default", "nofault"}
    assert len({r["run_id"] for r in rows}) == 1
    for r in rows:
        for field in ("timestamp", "cpu_model", "torch_version", "numpy_version", "triton_version",
                      "onnxruntime_version", "git_commit", "allocator_env", "command"):
            assert r[field], field
        assert r["threads"] == "1"
    nofault = [r for r in rows if r["allocator"] == "nofault"]
    assert all(r["allocator_env"].startswith("MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=")
               for r in nofault)
    stream = [r for r in rows if r["kind"] == "stream"]
    assert {r["workload"] for r in stream} == {"stream/copy", "stream/triad", "stream/fma"}
    assert all(float(r["gbps"]) > 0 for r in stream if r["workload"] != "stream/fma")
    fma = [r for r in stream if r["workload"] == "stream/fma"]
    if dasp_kernels.cpu_isa():  # the loop lives in the extension
        assert all(r["provider"] == "dasp_kernels" and r["size"] == "registers"
                   and float(r["gflops"]) > 1 for r in fma)
    timed = [r for r in rows if r["kind"] != "stream" and r["status"] == "ok"]
    assert {r["provider"] for r in timed} >= {"eager", "ours:reference"}
    assert all(float(r["p20_ms"]) <= float(r["median_ms"]) <= float(r["p80_ms"]) for r in timed)
    md = (tmp_path / "latest.md").read_text()
    assert "| DASP | nofault |" in md and "copy GB/s" in md and "FMA GFLOP/s" in md
    assert "| DASP | nofault |" in capsys.readouterr().out


def test_quick_headline_compares_the_fastest_of_each_side():
    def row(wl, prov, ms):
        return {"workload": wl, "provider": prov, "status": "ok", "median_ms": str(ms)}

    rows = [row("DASP", "eager", 40), row("DASP", "onnxruntime", 30), row("DASP", "ours:cpu", 12),
            row("dasp_spatial_path", "compile", 24), row("dasp_spatial_path", "ours:cpu+cl", 10),
            row("dasp_spatial_path", "ours:reference", 5),  # the reference is not "ours"
            row("SpatialPath", "eager", 80), row("SpatialPath", "onnxruntime", 50),
            row("BiSeNetV1/dasp", "onnxruntime", 600), row("BiSeNetV1/dasp", "compile", 650),
            row("BiSeNetV1/dasp", "ours:cpu+compile+arena", 550),
            dict(row("BiSeNetV1/dasp", "eager", 1), status="wrong")]
    table = quick.table(quick.headline(rows))
    lines = table.splitlines()
    assert len(lines) == 5
    assert lines[2] == ("| DASP spatial path vs the fastest peer | ours:cpu+cl (dasp_spatial_path) "
                        "| 10.0 | compile (dasp_spatial_path) | 24.0 | 2.40x |")
    assert lines[3].endswith("| onnxruntime (SpatialPath) | 50.0 | 5.00x |")
    assert lines[4] == ("| BiSeNetV1 (DASP path) vs the fastest peer | ours:cpu+compile+arena "
                        "(BiSeNetV1/dasp) | 550.0 | onnxruntime (BiSeNetV1/dasp) | 600.0 | 1.09x |")
    assert len(quick.table(quick.headline(rows[:8])).splitlines()) == 4  # no model rows: no line


@needs_cpu_ext
def test_quick_writes_only_to_its_folder(tmp_path, capsys):
    committed = {p: p.stat().st_mtime for p in RESULTS_DIR.rglob("*") if p.is_file()}
    out = tmp_path / "quick"
    assert quick.main(["--out", str(out), "--size", "1x3x64x64", "--threads", "1", "--no-models",
                       "--min-time", "0", "--providers", "eager", "ours:cpu"]) == 0
    printed = capsys.readouterr().out
    assert "| DASP spatial path vs the fastest peer | ours:cpu (" in printed
    assert "| DASP spatial path vs the original spatial path | ours:cpu (" in printed
    assert str(out) in printed or os.path.relpath(out) in printed
    names = {p.name for p in out.iterdir()}
    assert {"cpu.csv", "latest.md", "log.txt", "cpu_paths_1x3x64x64_t1.png"} <= names
    assert {p: p.stat().st_mtime for p in RESULTS_DIR.rglob("*") if p.is_file()} == committed


def test_bench_cpu_writes_to_an_untracked_folder_by_default():
    assert bench_cpu.parse_args(["--workloads", "DASP"]).results_dir == bench_cpu.RESULTS
    root = Path(bench_cpu.__file__).resolve().parent.parent
    assert Path(bench_cpu.RESULTS).resolve().relative_to(root).parts[0] == "runs"
    assert "/runs/" in (root / ".gitignore").read_text().split()


def test_append_csv_keeps_old_rows_when_columns_grow(tmp_path):
    path = str(tmp_path / "x.csv")
    harness.append_csv(path, [{"a": 1, "b": 2}])
    harness.append_csv(path, [{"a": 3, "b": 4}])
    harness.append_csv(path, [{"a": 5, "c": 6}])
    rows = harness.read_csv(path)
    assert [r["a"] for r in rows] == ["1", "3", "5"]
    assert rows[0]["c"] == "" and rows[2]["c"] == "6" and rows[2]["b"] == ""


def test_report_and_plot_from_rows(tmp_path):
    pytest.importorskip("matplotlib")
    from benchmarks import plot

    rows = []
    for alloc in ("default", "nommap"):
        for wl, prov, ms in (("DASP", "eager", 10.0), ("DASP", "onnxruntime", 4.0),
                             ("DASP", "ours:cpu", 1.0), ("SpatialPath", "onnxruntime", 8.0),
                             ("dwconv_bn_relu/s1", "ours:cpu", 2.0)):
            rows.append({"run_id": "r1", "device": "cpu", "allocator": alloc, "threads": 2,
                         "workload": wl, "kind": "op" if "/" in wl else "path",
                         "size": "1x3x64x64", "input_shape": "1x3x64x64", "provider": prov,
                         "status": "ok", "median_ms": ms, "p20_ms": ms * 0.9, "p80_ms": ms * 1.1,
                         "gbps": 5.0})
        rows.append({"run_id": "r1", "device": "cpu", "allocator": alloc, "threads": 2,
                     "workload": "stream/copy", "kind": "stream", "size": "1MB", "input_shape": "",
                     "provider": "torch", "status": "ok", "median_ms": 1.0, "p20_ms": 1.0,
                     "p80_ms": 1.0, "gbps": 10.0})
    md = report.markdown(rows)
    assert "4.00x vs onnxruntime" in md  # ours vs the fastest peer on the DASP path
    assert "8.00x vs onnxruntime" in md  # ours vs the fastest original spatial path
    assert "5.0 / 10.0 GB/s = 50% (below 70%)" in md
    path = tmp_path / "cpu.csv"
    harness.append_csv(str(path), rows)
    assert plot.main(["--csv", str(path)]) == 0
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["cpu_bandwidth_1x3x64x64_t2.png", "cpu_latency_1x3x64x64_t2.png",
                    "cpu_paths_1x3x64x64_t2.png"]


def test_report_compares_ratios_with_the_base_configuration():
    def rows_for(size, threads, ours_ms, ort_ms, sp_ms, dw_gbps, copy_gbps):
        base = {"run_id": "r", "device": "cpu", "allocator": "default", "threads": threads,
                "size": size, "input_shape": size, "status": "ok"}
        out = [dict(base, workload=wl, kind="path", provider=prov, median_ms=ms, p20_ms=ms,
                    p80_ms=ms, gbps=1.0)
               for wl, prov, ms in (("DASP", "ours:cpu", ours_ms), ("DASP", "onnxruntime", ort_ms),
                                    ("SpatialPath", "onnxruntime", sp_ms))]
        out.append(dict(base, workload="dwconv_bn_relu/s1", kind="op", provider="ours:cpu",
                        median_ms=1.0, p20_ms=1.0, p80_ms=1.0, gbps=dw_gbps))
        out.append(dict(base, workload="stream/copy", kind="stream", provider="torch",
                        median_ms=1.0, p20_ms=1.0, p80_ms=1.0, gbps=copy_gbps))
        return out

    rows = rows_for("1x3x1024x1024", 2, 10.0, 30.0, 50.0, 14.0, 20.0)  # 3x, 5x, 70%
    rows += rows_for("1x3x1024x2048", 2, 20.0, 66.0, 100.0, 14.0, 20.0)  # 3.3x (1.10), 5x, 70%
    rows += rows_for("4x3x512x1024", 1, 10.0, 24.0, 50.0, 7.0, 20.0)  # 2.4x (0.80), 5x, 35%
    md = report.markdown(rows)
    assert "| 1x3x1024x2048 | 2 | default | 1.10 | 1.00 | 1.00 | all within 15% |" in md
    assert "| 4x3x512x1024 | 1 | default | 0.80 | 1.00 | 0.50 | outside 15% |" in md
    assert "2.40x vs onnxruntime 24.0 (meets 1.8x)" in md
    assert "35% (below 70%)" in md


def test_report_sets_the_op_against_the_fma_peak():
    base = {"run_id": "r", "device": "cpu", "allocator": "default", "threads": 2, "status": "ok",
            "median_ms": 1.0, "p20_ms": 1.0, "p80_ms": 1.0}
    rows = [dict(base, workload="dwconv_bn_relu/s1", kind="op", size="1x3x1024x1024",
                 input_shape="1x3x1024x1024", provider="ours:cpu", gflop=0.0771, min_mb=15.73,
                 gflops=77.1, gbps=15.73),
            dict(base, workload="stream/copy", kind="stream", size="256MB", input_shape="",
                 provider="torch", gbps=40.0),
            dict(base, workload="stream/fma", kind="stream", size="registers", input_shape="",
                 provider="dasp_kernels", gflop=0.0768, gflops=230.0, gbps=0.0)]
    md = report.markdown(rows)
    assert "| default | 2 | 256MB | 40.0 | — | 230.0 |" in md
    # 4.90 FLOPs per byte: 70% of 40 GB/s is 137 GFLOP/s, 60% of the peak
    assert "77.1 / 230.0 GFLOP/s = 34%; 70% of copy needs 60%" in md
    rows = [r for r in rows if r["workload"] != "stream/fma"]
    assert "| 1x3x1024x1024 | 2 | default | — | — | — | 15.7 / 40.0 GB/s = 39% (below 70%) | — |" \
        in report.markdown(rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: GPU mode would run")
def test_gpu_mode_skips_clearly_without_a_gpu(tmp_path, capsys):
    assert bench_cpu.main(["--device", "cuda", "--results-dir", str(tmp_path)]) == 0
    assert "GPU mode skipped" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="Nx3xHxW"):
        suite.parse_size("1x4x32x32")
    with pytest.raises(ValueError, match="unknown workload"):
        suite.select_workloads(["nope"])
    assert suite.select_workloads(["dasp_stage", "paths"]) == [
        "dasp_stage/s1", "dasp_stage/s2", "dasp_stage/s3", "SpatialPath", "DASP"]
    with pytest.raises(SystemExit):
        bench_cpu.parse_args(["--sizes", "64x64"])


def test_onnxruntime_does_not_spin_wait_unless_asked(monkeypatch):
    # ORT's spinning workers would slow whatever the interleaved round times next.
    pytest.importorskip("onnxruntime")
    key = "session.intra_op.allow_spinning"
    monkeypatch.delenv("DASP_BENCH_ORT_SPIN", raising=False)
    so = suite.ort_session_options(2)
    assert so.intra_op_num_threads == 2 and so.get_session_config_entry(key) == "0"
    monkeypatch.setenv("DASP_BENCH_ORT_SPIN", "1")
    with pytest.raises(Exception, match="does not have configuration"):
        suite.ort_session_options(2).get_session_config_entry(key)  # ORT's default: spin


def test_ops_quick_runs_its_before_step_before_each_timed_call(monkeypatch, capsys):
    from benchmarks import bench_ops_quick as q
    calls = []
    best, med = q.time_ms(lambda: calls.append("fn"), 3, warmup=1,
                          before=lambda: calls.append("before"))
    assert calls == ["fn"] + ["before", "fn"] * 3
    assert 0 <= best <= med
    assert q.before_call("none") is None
    monkeypatch.setattr(q, "FLUSH_MB", 1)
    monkeypatch.setattr(q, "_flush_buf", None)
    monkeypatch.setattr(q, "IDLE_S", 0.02)
    flush_idle = q.before_call("flush+idle")
    t = time.perf_counter()
    flush_idle()
    flush_idle()
    assert time.perf_counter() - t >= 0.04  # slept twice
    assert q._flush_buf.numel() == 2**18 and bool((q._flush_buf == 2).all())  # written twice
    # The whole script, no op case selected: the copy ceiling of the run is still printed.
    monkeypatch.setattr("sys.argv", ["bench_ops_quick", "--only", "no such case", "--copy-mb",
                                     "1", "--repeat", "5", "--before", "flush"])
    q.main()
    out = capsys.readouterr().out
    assert "before each call: flush" in out and "copy 1 MiB" in out and "GB/s" in out
    monkeypatch.setattr("sys.argv", ["bench_ops_quick", "--only", "no such case", "--copy-mb",
                                     "1", "--repeat", "3", "--before", "idle", "--idle-ms", "7"])
    q.main()
    assert "before each call: idle (7 ms)" in capsys.readouterr().out and q.IDLE_S == 0.007


@pytest.mark.parametrize("flag,value", [("--repeat", "0"), ("--copy-mb", "-1"), ("--threads", "two"),
                                        ("--idle-ms", "0")])
def test_ops_quick_refuses_bad_counts(monkeypatch, capsys, flag, value):
    from benchmarks import bench_ops_quick as q
    monkeypatch.setattr("sys.argv", ["bench_ops_quick", flag, value])
    with pytest.raises(SystemExit):
        q.main()
    assert f"expected a whole number >= 1, got '{value}'" in capsys.readouterr().err


def test_realmodels_group_builds_every_model_once():
    pytest.importorskip("torchvision")
    pytest.importorskip("timm")
    names = suite.select_workloads(["realmodels"])
    assert len(names) == len(set(names)) == 11
    assert suite.select_workloads(["models", "realmodels"]).count("BiSeNetV1/dasp") == 1
    for w in ("tv/deeplabv3_mobilenet_v3_large", "timm/mobilenetv4_conv_small"):
        case = suite.make_case(w, (1, 3, 64, 64))
        with torch.no_grad():
            out = case.module(*case.inputs)
        assert case.kind == "model" and isinstance(out, torch.Tensor) and out.shape[0] == 1


def test_openvino_peers_are_checked_with_their_precision():
    pytest.importorskip("openvino")
    case = suite.make_case("tv/mobilenet_v2", (1, 3, 64, 64))
    rows = suite.run_case(case, threads=1, backends=[], timing=FAST, log=_quiet,
                          providers=["eager", "openvino", "openvino:default"])
    by = {r["provider"]: r for r in rows}
    assert by["openvino"]["status"] == "ok" and "precision f32" in by["openvino"]["note"]
    assert by["openvino:default"]["status"] == "ok", by["openvino:default"]["note"]
    assert "openvino" in suite.PEER_PROVIDERS and "openvino:default" not in suite.PEER_PROVIDERS
