"""bench.report: speedups come from one group's medians, against the preferred baseline."""

import json
import re

import pytest
from PIL import Image

from bench.report import main


def bench_row(group, provider, median):
    return {
        "group": group,
        "name": f"test[{provider}]",
        "extra_info": {"provider": provider, "device": "cpu", "torch": "x", "triton": "y"},
        # the other statistics far off the median, so that a ratio of any of them shows
        "stats": {"median": median, "mean": 3 * median, "min": median / 2, "max": 5 * median},
    }


def write_run(path, rows):
    """A pytest-benchmark JSON file holding ``rows``; returns its path."""
    path.write_text(json.dumps({"machine_info": {}, "benchmarks": rows}))
    return path


def test_report_ratios_against_compiled_reference(tmp_path):
    rows = [
        bench_row("g1", "triton", 0.001),
        bench_row("g1", "reference", 0.010),
        bench_row("g1", "reference+compile", 0.004),
        bench_row("g2", "triton", 0.002),
        bench_row("g2", "reference", 0.003),
    ]
    main([str(write_run(tmp_path / "r.json", rows)), "--out", str(tmp_path / "out")])
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| g1 | triton | 1.000 | 4.00x vs reference+compile |" in table
    assert "| g2 | triton | 2.000 | 1.50x vs reference |" in table
    g1 = [line.split(" | ")[1] for line in table.splitlines() if line.startswith("| g1 |")]
    assert g1 == ["triton", "reference+compile", "reference"]  # fastest first
    assert (tmp_path / "out" / "speedups.png").stat().st_size > 0


def test_dynamo_host_time_without_module_guards_is_set_against_the_default(tmp_path):
    group = "Dynamo's host time a call, jcra_r50"
    rows = [bench_row(group, "input_guards", 0.00005), bench_row(group, "module_guards", 0.0002)]
    main([str(write_run(tmp_path / "r.json", rows)), "--out", str(tmp_path / "out")])
    table = (tmp_path / "out" / "table.md").read_text()
    assert f"| {group} | input_guards | 0.050 | 4.00x vs module_guards |" in table


def crowd_rows(jcra_ms, network_ms, post_ms, network_hw=(64, 64), batch=1):
    """End-to-end and bottom-up rows as the suites name them (providers from the test ids), JCRA at
    64x64 and the baselines' networks at ``network_hw``, both timing whole batches of ``batch``;
    post-processing rows (per image, no batch) for the ``post_ms`` given."""
    group = f"end to end batch {batch} 64x64"
    rows = [
        {**bench_row(group, "jcra", jcra_ms / 1e3), "name": f"test_end_to_end[jcra-{batch}]"},
        {**bench_row(group, "jcra-reference", 1.0), "name": f"x[jcra-reference-{batch}]"},
    ]
    rows[0]["extra_info"]["image"] = [64, 64]
    for method, net in network_ms.items():
        row = {
            **bench_row(f"bottom-up network, batch {batch}", "", net / 1e3),
            "name": f"net[{method}-{batch}]",
        }
        row["extra_info"]["image_hw"] = list(network_hw)
        rows.append(row)
        for people, post in post_ms.get(method, {}).items():
            group = f"bottom-up postprocess, {people} people"
            rows.append({**bench_row(group, "", post / 1e3), "name": f"post[{method}-{people}]"})
    for row in rows[2:]:
        del row["extra_info"]["provider"]
    return rows


def test_batch_eight_takes_each_images_share_of_the_batch(tmp_path):
    """At batch 8 JCRA and the bottom-up networks cost an eighth of their batch's time each image, the
    post-processing (per image) its own."""
    post = {"associative_embedding": {1: 1.0, 20: 8.0}, "dekr": {1: 2.0, 20: 3.0}}
    rows = crowd_rows(10.0, {"associative_embedding": 12.0, "dekr": 14.0}, post)
    rows += crowd_rows(40.0, {"associative_embedding": 48.0, "dekr": 56.0}, {}, batch=8)
    main([str(write_run(tmp_path / "crowd.json", rows)), "--out", str(tmp_path / "out")])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["e2e_speedup_vs_bottom_up"] == {"1": 1.3, "20": 1.7}
    # 1 person: AE 48/8 + 1 = 7 beats DEKR 56/8 + 2 = 9, against JCRA's 40/8 = 5; 20: DEKR 7 + 3 = 10
    assert summary["e2e_speedup_vs_bottom_up_batch8"] == {"1": 1.4, "20": 2.0}
    table = (tmp_path / "out" / "table.md").read_text()
    assert "latency at batch 8" in table and "| 20 | 5.00 | 14.00 | 10.00 | 2.00x |" in table


def test_the_crowd_table_names_jcras_spread(tmp_path):
    """Below each crowd table, JCRA's interquartile range an image and as a share of its median: a
    speedup that close to 1.00x is no clear difference."""
    rows = crowd_rows(
        10.0,
        {"associative_embedding": 12.0, "dekr": 14.0},
        {"associative_embedding": {1: 1.0}, "dekr": {1: 2.0}},
    )
    rows += crowd_rows(40.0, {"associative_embedding": 48.0, "dekr": 56.0}, {}, batch=8)
    jcra = {row["name"]: row for row in rows if row["name"].startswith("test_end_to_end[jcra-")}
    jcra["test_end_to_end[jcra-1]"]["stats"]["iqr"] = 0.0005  # batch 1: 0.5 ms of 10
    jcra["test_end_to_end[jcra-8]"]["stats"]["iqr"] = 0.0016  # batch 8: 1.6 ms of 40, 0.2 ms an image
    main([str(write_run(tmp_path / "crowd.json", rows)), "--out", str(tmp_path / "out")])
    table = (tmp_path / "out" / "table.md").read_text()
    assert "spread over 0.50 ms an image (interquartile range, 5% of its median)" in table
    assert "spread over 0.20 ms an image (interquartile range, 4% of its median)" in table


FLIP_NETWORKS = {
    "associative_embedding": 12.0,
    "dekr": 14.0,
    "associative_embedding+flip": 20.0,
    "dekr+flip": 24.0,
}


def flip_report(tmp_path, dekr_flip_post: dict) -> tuple[dict, str]:
    """summary.json and table.md of a batch-1 crowd run with the baselines single-pass and
    flip-tested (DEKR's flip-tested post-processing as given)."""
    post = {
        "associative_embedding": {1: 1.0, 20: 8.0},
        "dekr": {1: 2.0, 20: 3.0},
        "associative_embedding+flip": {1: 2.0, 20: 12.0},
        "dekr+flip": dekr_flip_post,
    }
    rows = crowd_rows(10.0, FLIP_NETWORKS, post)
    main([str(write_run(tmp_path / "crowd.json", rows)), "--out", str(tmp_path / "out")])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    return summary, (tmp_path / "out" / "table.md").read_text()


def test_flip_tested_baselines_get_their_own_columns_and_ratios(tmp_path):
    """With the baselines also timed flip-tested, the table compares JCRA against the faster of those
    too, and the summary holds those ratios beside the single-pass ones, which stay as they were."""
    summary, table = flip_report(tmp_path, {1: 2.0, 20: 4.0})
    assert summary["e2e_speedup_vs_bottom_up"] == {"1": 1.3, "20": 1.7}
    # 1 person: AE+flip 20 + 2 = 22 beats DEKR+flip 26; 20 people: DEKR+flip 24 + 4 = 28 beats 32
    assert summary["e2e_speedup_vs_bottom_up_flip_tested"] == {"1": 2.2, "20": 2.8}
    assert summary["e2e_speedup_vs_bottom_up_flip_tested_batch8"] is None
    assert (
        "| people | JCRA | associative embedding | DEKR | associative embedding + flip | DEKR + flip "
        "| JCRA speedup vs faster bottom-up | JCRA speedup vs faster flip-tested |"
    ) in table
    assert "| 20 | 10.00 | 20.00 | 17.00 | 32.00 | 28.00 | 1.70x | 2.80x |" in table


def test_flip_tested_ratios_need_both_baselines_at_every_crowd_size(tmp_path):
    """A flip-tested post-processing missing at one crowd size: no flip-tested columns, no ratios."""
    summary, table = flip_report(tmp_path, {1: 2.0})
    assert summary["e2e_speedup_vs_bottom_up"] == {"1": 1.3, "20": 1.7}
    assert summary["e2e_speedup_vs_bottom_up_flip_tested"] is None
    crowd = table.split("Per-image latency")[1]
    assert "flip" not in crowd and "| 20 | 10.00 | 20.00 | 17.00 | 1.70x |" in crowd


def test_matcher_summary_is_scipy_over_triton_at_g_20(tmp_path):
    """From the linear-assignment suite's G = 20 group (its G = 200 group sorts first and is another)."""
    rows = [bench_row("linear_assignment N=56 Q=300 G=20", p, m) for p, m in
            (("scipy", 0.0024), ("triton", 0.00012), ("torch_linear_assignment", 0.00043))]  # fmt: skip
    rows += [
        bench_row("linear_assignment N=16 Q=300 G=200", p, m) for p, m in (("scipy", 0.01), ("triton", 0.001))
    ]
    main([str(write_run(tmp_path / "assignment.json", rows)), "--out", str(tmp_path / "out")])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["matcher_speedup_vs_scipy"] == pytest.approx(20.0)


def test_stage_times_keep_their_units(tmp_path, monkeypatch):
    """Host stamps 20 ms apart (a CPU's clock, faked) are 20 ms, stored as 0.020 s, tabled as 20 ms."""
    import bench.profiling as profiling

    clock = iter([1.000, 1.020])
    monkeypatch.setattr(profiling, "CUDA", False)
    monkeypatch.setattr(profiling.time, "perf_counter", lambda: next(clock))
    start, end = profiling.Stamp(), profiling.Stamp()
    assert start.ms_until(end) == pytest.approx(20.0)
    results = profiling.benchmark_json({"encoder": start.ms_until(end)}, "jcra, batch 1", batch=1)
    assert results["benchmarks"][0]["stats"]["median"] == pytest.approx(0.020)
    main([str(write_run(tmp_path / "stages.json", results["benchmarks"])), "--out", str(tmp_path / "out")])
    assert "| JCRA stages, jcra, batch 1 | encoder | 20.000 |" in (tmp_path / "out" / "table.md").read_text()


def test_summary_and_crowd_table_from_several_files(tmp_path):
    """Several JSON files make one run; the crowd ratio takes the faster bottom-up baseline per N."""
    kernels = [
        bench_row("ms_deform_attn encoder-b2 forward+backward bf16", "triton", 0.002),
        bench_row("ms_deform_attn encoder-b2 forward+backward bf16", "reference+compile", 0.010),
        bench_row("pose_matching_cost B=8 Q=300 G=20 K=17", "triton", 0.001),
        bench_row("pose_matching_cost B=8 Q=300 G=20 K=17", "reference", 0.006),
    ]
    crowd = crowd_rows(
        jcra_ms=10.0,
        network_ms={"associative_embedding": 12.0, "dekr": 14.0},
        post_ms={"associative_embedding": {1: 1.0, 20: 8.0}, "dekr": {1: 2.0, 20: 3.0}},
    )
    paths = [
        write_run(tmp_path / f"{name}.json", rows) for name, rows in (("kernels", kernels), ("crowd", crowd))
    ]
    main([str(p) for p in paths] + ["--out", str(tmp_path / "out")])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["msda_fwd_bwd_speedup_vs_compiled_reference"] == 5.0
    assert summary["matching_cost_speedup_vs_broadcast"] == 6.0
    assert summary["train_step_speedup"] is None and summary["matcher_speedup_vs_scipy"] is None
    # 1 person: AE 12 + 1 = 13 is faster; 20 people: DEKR 14 + 3 = 17 beats AE 12 + 8 = 20
    assert summary["e2e_speedup_vs_bottom_up"] == {"1": 1.3, "20": 1.7}
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| 20 | 10.00 | 20.00 | 17.00 | 1.70x |" in table
    with Image.open(tmp_path / "out" / "crowd.png") as plot:  # batch 1 and its split; no empty batch 8
        assert plot.width == 10 * 110


@pytest.mark.parametrize("transformer_ran", [True, False])
def test_summary_train_step_prefers_what_training_compiles_and_names_the_provider(tmp_path, transformer_ran):
    """train.compile=true compiles the transformer: its ratio is the headline; the whole forward's
    stands in when that row is missing."""
    group = "train step jcra_r50 batch 2 800x1333"
    rows = [bench_row(group, "reference", 0.200), bench_row(group, "fused+compile", 0.100)]
    if transformer_ran:
        rows.append(bench_row(group, "fused+compile-transformer", 0.125))
    main([str(write_run(tmp_path / "train_step.json", rows)), "--out", str(tmp_path / "out")])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    expected = ("fused+compile-transformer", 1.6) if transformer_ran else ("fused+compile", 2.0)
    assert (summary["train_step_provider"], summary["train_step_speedup"]) == expected


def test_empty_results_file_is_an_error(tmp_path):
    empty = tmp_path / "empty.json"
    empty.touch()
    with pytest.raises(SystemExit):
        main([str(empty), "--out", str(tmp_path / "out")])


@pytest.mark.parametrize(
    ("benchmarks", "message"),
    [
        (None, r"bad\.json: 'benchmarks' must be a list"),
        ([{"group": "g", "name": "t", "stats": {}}], r"bad\.json: benchmarks\[0\] \(t\) has no median"),
        (
            [{"group": "g", "name": "t", "stats": {"median": 0.0}}],
            r"benchmarks\[0\] \(t\) has no median time > 0",
        ),
        ([bench_row("g", "a", 1.0), {"stats": {"median": 1.0}}], r"benchmarks\[1\] is not a benchmark row"),
    ],
    ids=["null", "no-median", "zero-median", "no-name"],
)
def test_a_malformed_results_file_is_named(tmp_path, capsys, benchmarks, message):
    """Each was a KeyError, TypeError or ZeroDivisionError that named no file."""
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"machine_info": {}, "benchmarks": benchmarks}))
    with pytest.raises(SystemExit):
        main([str(bad), "--out", str(tmp_path / "out")])
    assert re.search(message, capsys.readouterr().err)


def test_a_row_without_a_group_is_grouped_by_its_name(tmp_path):
    row = bench_row(None, "a", 0.002)
    del row["group"]
    main([str(write_run(tmp_path / "r.json", [row])), "--out", str(tmp_path / "out")])
    assert "| test[a] | a | 2.000 |" in (tmp_path / "out" / "table.md").read_text()


def test_a_killed_section_is_reported_from_its_partial_file(tmp_path, capsys):
    """A section killed at its limit leaves an empty X.json beside X.partial.json: the report skips the
    first and reads the second."""
    (tmp_path / "oks.json").touch()
    partial = write_run(
        tmp_path / "oks.partial.json", [bench_row("g", "triton", 0.001), bench_row("g", "reference", 0.003)]
    )
    main([str(tmp_path / "oks.json"), str(partial), "--out", str(tmp_path / "out")])
    assert "skipped" in capsys.readouterr().out
    assert "| g | triton | 1.000 | 3.00x vs reference |" in (tmp_path / "out" / "table.md").read_text()


def test_ratios_never_mix_files(tmp_path):
    """Two files (two processes) holding the same groups: each speedup comes from one file's rows, the
    table names the file, and the crowd comparison takes JCRA and the baselines from one file."""
    kernels = [
        ("a", [("triton", 0.001), ("reference", 0.004)]),
        ("b", [("triton", 0.002), ("reference", 0.003)]),
    ]
    paths = [
        write_run(tmp_path / f"{name}.json", [bench_row("g", p, m) for p, m in rows])
        for name, rows in kernels
    ]
    slow = crowd_rows(
        20.0,
        {"associative_embedding": 24.0, "dekr": 28.0},
        {"associative_embedding": {1: 2.0}, "dekr": {1: 4.0}},
    )
    fast = crowd_rows(
        10.0,
        {"associative_embedding": 12.0, "dekr": 14.0},
        {"associative_embedding": {1: 1.0}, "dekr": {1: 2.0}},
    )
    slow = [r for r in slow if not r["group"].startswith("end to end")]  # a crowd section killed before JCRA
    paths += [write_run(tmp_path / "crowd.partial.json", slow), write_run(tmp_path / "crowd_b1.json", fast)]
    main([str(p) for p in paths] + ["--out", str(tmp_path / "out")])
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| g [a] | triton | 1.000 | 4.00x vs reference |" in table
    assert "| g [b] | triton | 2.000 | 1.50x vs reference |" in table
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["e2e_speedup_vs_bottom_up"] == {"1": 1.3}  # (12 + 1) / 10 from crowd_b1 alone


def test_crowd_needs_the_same_image_size(tmp_path):
    """JCRA and the baselines' networks timed at different sizes (the CPU suites' defaults) make no
    crowd comparison."""
    rows = crowd_rows(
        10.0,
        {"associative_embedding": 12.0, "dekr": 14.0},
        {"associative_embedding": {1: 1.0}, "dekr": {1: 2.0}},
        network_hw=(96, 96),
    )
    main([str(write_run(tmp_path / "crowd.json", rows)), "--out", str(tmp_path / "out")])
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["e2e_speedup_vs_bottom_up"] is None
    # nor do networks timed at two sizes in one file, even where one of them is JCRA's
    post = {"associative_embedding": {1: 1.0}, "dekr": {1: 2.0}}
    rows = crowd_rows(10.0, {"associative_embedding": 12.0, "dekr": 14.0}, post)
    next(r for r in rows if r["name"] == "net[dekr-1]")["extra_info"]["image_hw"] = [96, 96]
    main([str(write_run(tmp_path / "mixed.json", rows)), "--out", str(tmp_path / "mixed")])
    assert json.loads((tmp_path / "mixed" / "summary.json").read_text())["e2e_speedup_vs_bottom_up"] is None


def test_the_crowd_table_comes_from_the_file_covering_most_sizes(tmp_path):
    nets = {"associative_embedding": 12.0, "dekr": 14.0}
    short = crowd_rows(10.0, nets, {"associative_embedding": {1: 1.0}, "dekr": {1: 2.0}})
    full = crowd_rows(20.0, nets, {"associative_embedding": {1: 1.0, 20: 8.0}, "dekr": {1: 2.0, 20: 3.0}})
    paths = [write_run(tmp_path / "short.json", short), write_run(tmp_path / "full.json", full)]
    main([str(p) for p in paths] + ["--out", str(tmp_path / "out")])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["e2e_speedup_vs_bottom_up"] == {"1": 0.65, "20": 0.85}  # 13 / 20 and 17 / 20


def test_other_json_files_are_skipped(tmp_path, capsys):
    """Rerunning the report over a run folder's *.json skips its own summary.json."""
    results = write_run(tmp_path / "r.json", [bench_row("g", "triton", 0.001)])
    (tmp_path / "summary.json").write_text(json.dumps({"gpu": None}))
    main([str(results), str(tmp_path / "summary.json"), "--out", str(tmp_path)])
    assert "skipped" in capsys.readouterr().out
    assert "| g | triton | 1.000 |" in (tmp_path / "table.md").read_text()


def test_the_whole_forward_is_profiled_without_stage_times(capsys):
    """bench.profile_end_to_end --whole: the inference the crowd suite times, profiled as one (no
    hooks, no stage rows); --json, which writes stage rows, is refused beside it."""
    from bench.profile_end_to_end import main as profile_main

    profile_main(["--provider", "jcra-reference", "--whole", "--steps", "1", "--rows", "3"])
    out = capsys.readouterr().out
    assert "the forward compiled whole" in out and "Self CPU time total" in out
    assert "median ms of" not in out  # the stage times' header
    with pytest.raises(SystemExit):
        profile_main(["--whole", "--json", "stages.json"])
    assert "--json takes stage times" in capsys.readouterr().err


def test_stage_times_of_a_model_become_a_table_and_a_plot(tmp_path):
    """bench.profile_end_to_end: hooks time each stage of a real (tiny) forward; the stages, the glue
    and the post-processing add up to the whole, and the report draws stages.png from the JSON."""
    import torch

    from bench.profile_end_to_end import stage_times
    from bench.profiling import benchmark_json
    from jcra import build_model

    model = build_model("jcra_tiny", use_fused_kernels=False).eval()  # not the interpreter: fast
    images = torch.randn(1, 3, 64, 96)

    @torch.no_grad()
    def infer():
        return model(images)["logits"].tolist()

    times = stage_times(model, infer, steps=1)
    assert set(times) == {"backbone", "neck", "encoder", "decoder", "other", "post-processing", "end to end"}
    assert all(ms > 0 for name, ms in times.items() if name not in ("other", "post-processing"))
    parts = sum(ms for name, ms in times.items() if name != "end to end")
    assert parts == pytest.approx(times["end to end"], rel=1e-9)  # one step: the parts partition it
    results = tmp_path / "stages.json"
    results.write_text(json.dumps(benchmark_json(times, "jcra, batch 1", batch=1)))
    main([str(results), "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "stages.png").stat().st_size > 0
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| JCRA stages, jcra, batch 1 | encoder |" in table
    assert "| JCRA stages, jcra, batch 1 | post-processing |" in table  # a stage name with a "-" in it
    assert all(row["extra_info"]["batch"] == 1 for row in json.loads(results.read_text())["benchmarks"])


def test_train_step_phases_add_up_to_the_step_and_are_drawn(tmp_path):
    """bench.profile_train_step: stamps at each phase's end of the benchmark's real (tiny, CPU)
    training step; both matcher calls count as matching; the phases add up to the step; the report
    draws them."""
    from bench.profile_train_step import PHASES, phase_times
    from bench.profiling import benchmark_json

    times, step = phase_times("reference", steps=1)
    assert list(times) == [*PHASES, "end to end"]
    assert all(ms > 0 for ms in times.values())
    parts = sum(ms for name, ms in times.items() if name != "end to end")
    assert parts == pytest.approx(times["end to end"], rel=1e-9)  # one step: the parts partition it
    step()  # the step stays usable (the profiler runs it again); unrecorded
    results = tmp_path / "phases.json"
    results.write_text(json.dumps(benchmark_json(times, "train step reference, batch 2")))
    main([str(results), "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "stages.png").stat().st_size > 0
    assert (
        "| JCRA stages, train step reference, batch 2 | matching |"
        in (tmp_path / "out" / "table.md").read_text()
    )


def test_matcher_profile_prints_wall_time_and_top_ops(capsys):
    """bench.profile_matcher on the benchmark's CPU-sized matcher: a wall median per provider and G,
    then the profiler's table, whose busiest op is the cost."""
    from bench.profile_matcher import main as profile_matcher

    profile_matcher(["--gs", "1", "5", "--calls", "1", "--rows", "3"])
    out = capsys.readouterr().out
    walls = [line for line in out.splitlines() if line.startswith("matcher (")]
    runs = [(line.split("(")[1].split(")")[0], line.split(" G=")[1].split()[0]) for line in walls]
    assert runs == [("padded", "1"), ("padded", "5"), ("batched", "1"), ("batched", "5")]
    assert all(float(line.split(": ")[1].split()[0]) > 0 for line in walls)
    assert "pose_matching_cost" in out


def test_versions_come_from_the_rows_that_have_them(tmp_path):
    """The bottom-up suite records no triton version: a run whose first rows are its own still names
    the GPU's triton in summary.json and the table's header."""
    gpu = {"device": "NVIDIA H100 80GB HBM3", "torch": "2.11.0"}
    first = bench_row("bottom-up network, batch 1", "dekr", 0.003)
    first["extra_info"] = {**gpu, "provider": "dekr"}
    second = bench_row("g1", "triton", 0.001)
    second["extra_info"].update(gpu, triton="3.6.0")
    main(
        [
            str(write_run(tmp_path / "a.json", [first])),
            str(write_run(tmp_path / "b.json", [second])),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["gpu"], summary["torch"], summary["triton"]) == (gpu["device"], "2.11.0", "3.6.0")
    assert (
        (tmp_path / "out" / "table.md")
        .read_text()
        .startswith("device: NVIDIA H100 80GB HBM3, torch 2.11.0, triton 3.6.0")
    )


def test_a_crowd_size_timed_for_one_method_is_left_out_and_sizes_come_in_order(tmp_path):
    """A suite cut off after DEKR's 50-people post-processing: the table keeps the sizes both methods
    have, in order of people whatever the order of the rows."""
    post = {"associative_embedding": {20: 8.0, 1: 1.0}, "dekr": {20: 3.0, 1: 2.0, 50: 4.0}}
    rows = crowd_rows(10.0, {"associative_embedding": 12.0, "dekr": 14.0}, post)
    main([str(write_run(tmp_path / "crowd.json", rows)), "--out", str(tmp_path / "out")])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert list(summary["e2e_speedup_vs_bottom_up"]) == ["1", "20"]


def test_rows_without_a_group_the_gpus_name_and_peak_memory(tmp_path):
    """pytest-benchmark's default group is null: the test's name stands in. The GPU is named from
    the GPU file even when a file whose rows name no device comes first. Peak memory in bytes is shown
    in MiB: whole above 100, else to three digits."""
    cpu = [bench_row("g", "reference", 0.002)]
    del cpu[0]["extra_info"]["device"]
    solo = {**bench_row(None, "triton", 0.001), "name": "test_solo[triton]"}
    gpu = [solo, bench_row("tiny", "triton", 0.001)]
    gpu[0]["extra_info"].update(device="NVIDIA H100 80GB HBM3", peak_mem_bytes=4913 * 2**20)
    # a kernel's few KiB keep their digits
    gpu[1]["extra_info"].update(device="NVIDIA H100 80GB HBM3", peak_mem_bytes=0.0093 * 2**20)
    paths = [write_run(tmp_path / "cpu.json", cpu), write_run(tmp_path / "gpu.json", gpu)]
    main([str(p) for p in paths] + ["--out", str(tmp_path / "out")])
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| test_solo[triton] | triton | 1.000 |  |  | 4913 |" in table
    assert "| tiny | triton | 1.000 |  |  | 0.0093 |" in table
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["gpu"] == "NVIDIA H100 80GB HBM3"


def test_a_missing_results_file_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(tmp_path / "nope.json"), "--out", str(tmp_path / "out")])
    assert re.search(r"results file missing: .*nope\.json", capsys.readouterr().err)


def test_print_profile_profiles_every_step_and_lists_the_rows_asked(capsys):
    import torch

    from bench.profiling import print_profile

    calls = []

    def run():
        calls.append(1)
        return torch.ones(3).sum()

    print_profile(run, steps=3, rows=2, wall_ms=1.0)
    host_table = capsys.readouterr().out.split(" Name ")[-1]  # the last table: host time (CPU and CUDA)
    ops = [line for line in host_table.splitlines() if line.strip().startswith("aten::")]
    assert len(calls) == 3 and len(ops) == 2


def test_a_cpu_run_names_no_gpu(tmp_path, monkeypatch):
    """A CPU names itself "cpu" in benchmark rows, whatever platform.processor() says ("x86_64" on
    Fedora, which summary.json once took for a GPU's name): its gpu is null and table.md names the
    device cpu."""
    import bench.profiling as profiling

    monkeypatch.setattr(profiling, "CUDA", False)
    monkeypatch.setattr("platform.processor", lambda: "x86_64")
    rows = profiling.benchmark_json({"encoder": 2.0}, "jcra, batch 1")["benchmarks"]
    assert profiling.device_name() == "cpu" and rows[0]["extra_info"]["device"] == "cpu"
    main([str(write_run(tmp_path / "cpu.json", rows)), "--out", str(tmp_path / "out")])
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["gpu"] is None
    assert (tmp_path / "out" / "table.md").read_text().startswith("device: cpu,")


def test_rows_that_fell_out_of_cuda_graphs_are_named(tmp_path):
    """A row with cuda_graph_skips above zero is named in a note above the table and in summary.json's
    cuda_graph_skips; the headline keys stay as they were, and a run without skips has no note."""
    post = {"associative_embedding": {1: 1.0}, "dekr": {1: 2.0}}
    rows = crowd_rows(10.0, {"associative_embedding": 12.0, "dekr": 14.0}, post)
    for row in rows:
        row["extra_info"]["cuda_graph_skips"] = 0
    next(r for r in rows if r["name"] == "net[dekr-1]")["extra_info"]["cuda_graph_skips"] = 2
    main([str(write_run(tmp_path / "crowd.json", rows)), "--out", str(tmp_path / "out")])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["cuda_graph_skips"] == {"bottom-up network, batch 1/dekr": 2}
    assert summary["e2e_speedup_vs_bottom_up"] == {"1": 1.3}  # still reported, with the note beside it
    table = (tmp_path / "out" / "table.md").read_text()
    note = table.split("| group |")[0]
    assert (
        "Fell out of CUDA graphs" in note
        and "- bottom-up network, batch 1/dekr: cuda_graph_skips = 2" in note
    )
    assert "associative_embedding" not in note and "jcra" not in note

    next(r for r in rows if r["name"] == "net[dekr-1]")["extra_info"]["cuda_graph_skips"] = 0
    main([str(write_run(tmp_path / "clean.json", rows)), "--out", str(tmp_path / "clean")])
    summary = json.loads((tmp_path / "clean" / "summary.json").read_text())
    assert summary["cuda_graph_skips"] == {}
    assert "CUDA graphs" not in (tmp_path / "clean" / "table.md").read_text()
    assert set(summary) == {
        "gpu",
        "torch",
        "triton",
        "e2e_speedup_vs_bottom_up",
        "e2e_speedup_vs_bottom_up_batch8",
        "e2e_speedup_vs_bottom_up_flip_tested",
        "e2e_speedup_vs_bottom_up_flip_tested_batch8",
        "train_step_speedup",
        "train_step_provider",
        "msda_fwd_bwd_speedup_vs_compiled_reference",
        "matching_cost_speedup_vs_broadcast",
        "matcher_speedup_vs_scipy",
        "cuda_graph_skips",
    }


def test_results_of_two_gpus_are_refused(tmp_path, capsys):
    """summary.json names one GPU: files of an H100 call and an H200 call make two reports."""
    rows = {}
    for name, device in (("h100", "NVIDIA H100 80GB HBM3"), ("h200", "NVIDIA H200")):
        rows[name] = [bench_row("g", "triton", 0.001), bench_row("g", "reference", 0.002)]
        for row in rows[name]:
            row["extra_info"]["device"] = device
    paths = [write_run(tmp_path / f"{name}.json", r) for name, r in rows.items()]
    with pytest.raises(SystemExit):
        main([str(p) for p in paths] + ["--out", str(tmp_path / "out")])
    assert "several GPUs ['NVIDIA H100 80GB HBM3', 'NVIDIA H200']" in capsys.readouterr().err
    main([str(paths[0]), "--out", str(tmp_path / "out")])  # one machine's files report


def test_a_cpu_run_beside_a_gpu_run_is_refused(tmp_path, capsys):
    """The CPU suites' smaller groups sort first and hold no Triton row: their headline ratios came out
    null, without a word."""
    gpu = [
        bench_row("linear_assignment N=56 Q=300 G=20", p, m)
        for p, m in (("scipy", 0.002), ("triton", 0.0001))
    ]
    for row in gpu:
        row["extra_info"]["device"] = "NVIDIA H200"
    cpu = [bench_row("linear_assignment N=14 Q=300 G=20", "scipy", 0.003)]
    paths = [write_run(tmp_path / "gpu.json", gpu), write_run(tmp_path / "cpu.json", cpu)]
    with pytest.raises(SystemExit):
        main([str(p) for p in paths] + ["--out", str(tmp_path / "out")])
    assert "mix a CPU run with a GPU run (NVIDIA H200)" in capsys.readouterr().err


def test_a_ratio_comes_from_the_first_matching_group_that_holds_both_providers(tmp_path):
    rows = [bench_row("linear_assignment N=14 Q=300 G=20", "scipy", 0.003)]
    rows += [
        bench_row("linear_assignment N=56 Q=300 G=20", p, m)
        for p, m in (("scipy", 0.002), ("triton", 0.0001))
    ]
    main([str(write_run(tmp_path / "run.json", rows)), "--out", str(tmp_path / "out")])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["matcher_speedup_vs_scipy"] == pytest.approx(20.0)


def test_table_orders_groups_by_their_numbers(tmp_path):
    """"5 people" comes before "10 people", as a reader scans the crowd sizes."""
    rows = [bench_row(f"postprocess, {n} people", "dekr", 0.001) for n in (10, 5, 50, 1, 20)]
    main([str(write_run(tmp_path / "r.json", rows)), "--out", str(tmp_path / "out")])
    table = (tmp_path / "out" / "table.md").read_text()
    order = [int(n) for n in re.findall(r"\| postprocess, (\d+) people \|", table)]
    assert order == [1, 5, 10, 20, 50]
