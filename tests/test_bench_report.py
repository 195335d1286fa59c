"""bench.report: speedups come from one group's medians, against the preferred baseline."""

import json

from bench.report import main


def bench_row(group, provider, median):
    return {
        "group": group,
        "name": f"test[{provider}]",
        "extra_info": {"provider": provider, "device": "cpu", "torch": "x", "triton": "y"},
        "stats": {"median": median},
    }


def test_report_ratios_against_compiled_reference(tmp_path):
    rows = [
        bench_row("g1", "triton", 0.001),
        bench_row("g1", "reference", 0.010),
        bench_row("g1", "reference+compile", 0.004),
        bench_row("g2", "triton", 0.002),
        bench_row("g2", "reference", 0.003),
    ]
    results = tmp_path / "r.json"
    results.write_text(json.dumps({"machine_info": {}, "benchmarks": rows}))
    main([str(results), "--out", str(tmp_path / "out")])
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| g1 | triton | 1.000 | 4.00x vs reference+compile |" in table
    assert "| g2 | triton | 2.000 | 1.50x vs reference |" in table
    assert (tmp_path / "out" / "speedups.png").stat().st_size > 0
