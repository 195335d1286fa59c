"""Turn a pytest-benchmark JSON into a markdown table and PNG plots.

    python -m bench.report bench/results/latest.json --out bench/results/<run-name>

Every benchmark records ``extra_info["provider"]``; within one benchmark group (same shape, mode and
dtype, timed in the same run) each provider's speedup is the baseline's median over its own. The
baseline is the first provider present from ``BASELINES``: kernels earn their place against the
compiled reference.
"""

import argparse
import json
from collections import defaultdict
from pathlib import Path

BASELINES = ("reference+compile", "reference", "broadcast", "scipy")


def load_groups(path: Path) -> tuple[dict, dict[str, list[dict]]]:
    """(machine/version info, {group: [benchmark rows]}) from a pytest-benchmark JSON file."""
    data = json.loads(path.read_text())
    groups = defaultdict(list)
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        groups[bench["group"] or bench["name"]].append(
            {
                "name": bench["name"],
                "provider": info.get("provider", bench["name"]),
                "median_ms": bench["stats"]["median"] * 1e3,
                "info": info,
            }
        )
    return data.get("machine_info", {}), dict(groups)


def add_speedups(groups: dict[str, list[dict]]) -> None:
    """Set row["speedup"] = baseline median / row median within each group (None without a baseline)."""
    for rows in groups.values():
        providers = {row["provider"]: row for row in rows}
        baseline = next((providers[p] for p in BASELINES if p in providers), None)
        for row in rows:
            row["baseline"] = baseline["provider"] if baseline else None
            row["speedup"] = baseline["median_ms"] / row["median_ms"] if baseline else None


def markdown_table(groups: dict[str, list[dict]]) -> str:
    lines = [
        "| group | provider | median (ms) | speedup vs baseline | GB/s (minimal / gather) | peak MB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for group, rows in sorted(groups.items()):
        for row in sorted(rows, key=lambda r: r["median_ms"]):
            info = row["info"]
            gbps = f"{info['gbps_minimal']:.3g} / {info['gbps_gather']:.3g}" if "gbps_minimal" in info else ""
            peak = f"{info['peak_memory_mb']:.0f}" if info.get("peak_memory_mb") is not None else ""
            speedup = f"{row['speedup']:.2f}x vs {row['baseline']}" if row["speedup"] else ""
            cells = [group, row["provider"], f"{row['median_ms']:.3f}", speedup, gbps, peak]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_speedups(groups: dict[str, list[dict]], out: Path) -> Path:
    """One horizontal bar per (group, provider): speedup over the group's baseline, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [
        (f"{group} | {row['provider']}", row["speedup"])
        for group, rows in sorted(groups.items())
        for row in rows
        if row["speedup"] and row["provider"] != row["baseline"]
    ]
    fig, ax = plt.subplots(figsize=(10, 0.3 * len(bars) + 1.5))
    ax.barh([label for label, _ in bars], [value for _, value in bars], color="tab:blue")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("speedup over the group's baseline (median time ratio, same run)")
    ax.invert_yaxis()
    fig.tight_layout()
    path = out / "speedups.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", type=Path, help="pytest-benchmark JSON (--benchmark-json)")
    parser.add_argument("--out", type=Path, required=True, help="folder for table.md and plots")
    args = parser.parse_args(argv)
    if not args.results.is_file():
        parser.error(f"results file not found: {args.results}")
    machine, groups = load_groups(args.results)
    add_speedups(groups)
    args.out.mkdir(parents=True, exist_ok=True)
    info = next((rows[0]["info"] for rows in groups.values()), {})
    cpu = machine.get("cpu", {}).get("brand_raw", "?")
    header = (
        f"device: {info.get('device', '?')}, torch {info.get('torch', '?')}, "
        f"triton {info.get('triton', '?')}, cpu: {cpu}\n\n"
    )
    (args.out / "table.md").write_text(header + markdown_table(groups))
    plot = plot_speedups(groups, args.out)
    print(f"wrote {args.out / 'table.md'} and {plot}")


if __name__ == "__main__":
    main()
