"""Turn pytest-benchmark JSON files of one run into a markdown table, PNG plots and summary.json.

    python -m bench.report bench/results/<run-name>/*.json --out bench/results/<run-name>

A benchmark's provider is ``extra_info["provider"]``, else the first id of its parametrisation
(``test[dekr-20]`` is ``dekr``). Within one benchmark group (same shape, mode and dtype, timed in the
same process) each provider's speedup is the baseline's median over its own; the baseline is the first
provider present from ``BASELINES``: kernels earn their place against the compiled reference; the
whole matcher is set against matching image by image, JCRA's fused end to end against its reference,
Dynamo's host time a call without module guards against Dynamo's default.

When the bottom-up and end-to-end suites are present, the crowd table compares per-image latency:
JCRA's end-to-end time (independent of the number of people) against each bottom-up baseline's
network time plus its post-processing time at N people, and ``crowd.png`` plots it; where the run
also timed the baselines flip-tested (``dekr+flip``), as their published test settings run them, the
table compares against those too (summary keys ``..._flip_tested``). Stage times
from ``bench.profile_end_to_end`` and ``bench.profile_train_step`` (``--json``) become
``stages.png``. ``summary.json`` holds the headline ratios the benchmark issue names, each from
timings of one process (null where the run did not measure them), the GPU (null on a CPU) and, under
``cuda_graph_skips``, the rows whose compiled graph fell out of CUDA graphs, which table.md also names
above its table: their times are not of the replayed graph the suite means to time, and ratios taken
from them are off.
"""

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

BASELINES = (
    "reference+compile",
    "reference",
    "broadcast",
    "scipy",
    "per_image",
    "jcra-reference",
    "module_guards",
)
BOTTOM_UP = ("associative_embedding", "dekr")
FLIP_TESTED = tuple(f"{method}+flip" for method in BOTTOM_UP)
ALL_BOTTOM_UP = BOTTOM_UP + FLIP_TESTED
NAMES = {"jcra": "JCRA", "associative_embedding": "associative embedding", "dekr": "DEKR"}
NAMES.update({f"{method}+flip": f"{NAMES[method]} + flip" for method in BOTTOM_UP})
TRAIN_PROVIDERS = ("fused+compile-transformer", "fused+compile")  # summary's train step, in preference
STAGE_GROUP = "JCRA stages"
"""Prefix of the benchmark groups that hold stage times, one row a stage (``bench.profiling``)."""
TOTAL = "end to end"
"""The row of a stage group that holds the whole batch or step, which its stages add up to."""


def _provider(bench: dict) -> str:
    info = bench.get("extra_info", {})
    if "provider" in info:
        return info["provider"]
    ids = re.search(r"\[(.*)\]", bench["name"])
    return ids.group(1).split("-")[0] if ids else bench["name"]


def load_groups(paths: list[Path]) -> tuple[dict, dict[str, list[dict]]]:
    """(machine info of the first file, {group: [benchmark rows]}) from pytest-benchmark JSON files.

    Each row keeps its file (``source``): a file is one process, and ratios are only taken between rows
    of one source. Other JSON files (a run folder's own summary.json) and empty ones (what a killed
    section leaves beside its ``.partial.json``) are skipped with a message."""
    groups, machine = defaultdict(list), {}
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:  # a run killed before it ended leaves its JSON empty
            print(f"skipped {path}: empty or not JSON (a killed run's timings are in *.partial.json)")
            continue
        if not isinstance(data, dict) or "benchmarks" not in data:
            print(f"skipped {path}: not a pytest-benchmark JSON file")
            continue
        machine = machine or data.get("machine_info", {})
        benchmarks = data["benchmarks"]
        if not isinstance(benchmarks, list):
            raise ValueError(f"{path}: 'benchmarks' must be a list, got {type(benchmarks).__name__}")
        for index, bench in enumerate(benchmarks):
            _check_row(bench, f"{path}: benchmarks[{index}]")
            groups[bench.get("group") or bench["name"]].append(
                {
                    "name": bench["name"],
                    "source": path.name.removesuffix(".json"),
                    "provider": _provider(bench),
                    "median_ms": bench["stats"]["median"] * 1e3,
                    "iqr_ms": _iqr_ms(bench["stats"]),
                    "info": bench.get("extra_info", {}),
                }
            )
    return machine, dict(groups)


def _iqr_ms(stats: dict) -> float | None:
    """The rounds' interquartile range in ms (pytest-benchmark's ``iqr``), None when not recorded."""
    iqr = stats.get("iqr")
    return iqr * 1e3 if isinstance(iqr, int | float) else None


def _check_row(bench, where: str) -> None:
    """ValueError naming ``where`` unless ``bench`` is a pytest-benchmark row with a name and a median
    time > 0 (every ratio divides by one)."""
    if not (isinstance(bench, dict) and isinstance(bench.get("name"), str)):
        raise ValueError(f"{where} is not a benchmark row with a name")
    median = bench.get("stats", {}).get("median") if isinstance(bench.get("stats"), dict) else None
    if not (isinstance(median, int | float) and median > 0):
        raise ValueError(f"{where} ({bench['name']}) has no median time > 0 in 'stats': {median!r}")
    if not isinstance(bench.get("extra_info", {}), dict):
        raise ValueError(f"{where} ({bench['name']}) has an extra_info that is not a mapping")


def _by_source(rows: list[dict]) -> dict[str, list[dict]]:
    """A group's rows per source file, in the order the files came."""
    sources: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        sources[row["source"]].append(row)
    return dict(sources)


def _label(group: str, row: dict, rows: list[dict]) -> str:
    """The group's name, with the row's source when the group comes from several files."""
    return group if len(_by_source(rows)) == 1 else f"{group} [{row['source']}]"


def add_speedups(groups: dict[str, list[dict]]) -> None:
    """Set row["speedup"] = baseline median / row median within each group and source (None without a
    baseline there)."""
    for rows in groups.values():
        for same_process in _by_source(rows).values():
            providers = {row["provider"]: row for row in same_process}
            baseline = next((providers[p] for p in BASELINES if p in providers), None)
            for row in same_process:
                row["baseline"] = baseline["provider"] if baseline else None
                row["speedup"] = baseline["median_ms"] / row["median_ms"] if baseline else None


def _natural(text: str) -> list:
    """Sort key that orders the numbers in ``text`` by value: "5 people" before "10 people"."""
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", text))]


def markdown_table(groups: dict[str, list[dict]]) -> str:
    lines = [
        "| group | provider | median (ms) | speedup vs baseline | GB/s (minimal / gather) | peak MiB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for group, rows in sorted(groups.items(), key=lambda item: _natural(item[0])):
        for row in sorted(rows, key=lambda r: (r["source"], r["median_ms"])):
            info = row["info"]
            gbps = f"{info['gbps_minimal']:.3g} / {info['gbps_gather']:.3g}" if "gbps_minimal" in info else ""
            peak = info.get("peak_memory_mb")
            if peak is None and info.get("peak_mem_bytes") is not None:
                peak = info["peak_mem_bytes"] / 2**20
            if peak is not None:  # whole MiB, but a kernel's few KiB keep their digits
                peak = f"{peak:.0f}" if peak >= 100 else f"{peak:.3g}"
            else:
                peak = ""
            speedup = f"{row['speedup']:.2f}x vs {row['baseline']}" if row["speedup"] else ""
            cells = [
                _label(group, row, rows),
                row["provider"],
                f"{row['median_ms']:.3f}",
                speedup,
                gbps,
                peak,
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (imported late: only plotting needs it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_speedups(groups: dict[str, list[dict]], out: Path) -> Path:
    """One horizontal bar per (group, provider): speedup over the group's baseline, log scale."""
    plt = _pyplot()
    bars = [
        (f"{_label(group, row, rows)} | {row['provider']}", row["speedup"])
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


def _median(groups: dict, group: str, provider: str, source: str) -> float | None:
    rows = groups.get(group, [])
    return next((r["median_ms"] for r in rows if r["provider"] == provider and r["source"] == source), None)


def _ratio(groups: dict, pattern: str, baseline: str, provider: str) -> float | None:
    """baseline median / provider median in the first group matching ``pattern`` and source holding
    both (None if none does)."""
    for group in sorted(g for g in groups if re.fullmatch(pattern, g)):
        for source in _by_source(groups[group]):
            slow, fast = _median(groups, group, baseline, source), _median(groups, group, provider, source)
            if slow and fast:
                return slow / fast
    return None


def crowd_latency(groups: dict, batch: int) -> dict[int, dict[str, float]]:
    """{people: {"jcra": ms, method: ms, method + " network": ms}} per image at ``batch``, for the
    methods of :data:`BOTTOM_UP` and those of :data:`FLIP_TESTED` the source timed, and ``"jcra iqr"``
    (JCRA's rounds' interquartile range, ms an image) where the source recorded it.

    A bottom-up image costs its share of the batch's network time plus its own post-processing (run
    per image); JCRA's share of the batch's end-to-end time covers everything and does not depend on
    the number of people. All from one source file (one process; the one covering the most crowd
    sizes), and only where JCRA and the baselines' networks ran at the same image size. Empty when no
    source holds both suites.
    """
    jcra_rows = [
        r
        for g, rows in groups.items()
        if g.startswith(f"end to end batch {batch} ")
        for r in rows
        if r["provider"] == "jcra"
    ]
    tables = [_crowd_table(groups, batch, row) for row in jcra_rows]
    return max(tables, key=len, default={})


def _crowd_table(groups: dict, batch: int, jcra: dict) -> dict[int, dict[str, float]]:
    """crowd_latency's table from ``jcra``'s end-to-end row and the bottom-up rows of its source."""
    source = jcra["source"]
    network_group = f"bottom-up network, batch {batch}"
    network = {m: _median(groups, network_group, m, source) for m in ALL_BOTTOM_UP}
    if None in (network[m] for m in BOTTOM_UP):
        return {}
    sizes = {tuple(r["info"].get("image_hw", ())) for r in groups[network_group] if r["source"] == source}
    if sizes != {tuple(jcra["info"].get("image", ()))}:
        return {}  # another input size (the CPU suites' defaults): not a comparison
    table = {}
    for group in groups:
        crowd = re.fullmatch(r"bottom-up postprocess, (\d+) people", group)
        if crowd:
            row = {"jcra": jcra["median_ms"] / batch}
            if jcra["iqr_ms"] is not None:
                row["jcra iqr"] = jcra["iqr_ms"] / batch
            post = {method: _median(groups, group, method, source) for method in ALL_BOTTOM_UP}
            if None in (post[m] for m in BOTTOM_UP):
                continue
            for method in ALL_BOTTOM_UP:
                if network[method] is not None and post[method] is not None:
                    row[method + " network"] = network[method] / batch
                    row[method] = network[method] / batch + post[method]
            table[int(crowd.group(1))] = row
    return dict(sorted(table.items()))


def _timed_in(table: dict, methods) -> bool:
    """Whether every crowd size of ``table`` has every one of ``methods``."""
    return all(m in row for row in table.values() for m in methods)


def crowd_markdown(groups: dict) -> str:
    lines = []
    for batch in (1, 8):
        table = crowd_latency(groups, batch)
        if not table:
            continue
        comparisons = [(BOTTOM_UP, "faster bottom-up")]
        if _timed_in(table, FLIP_TESTED):
            comparisons.append((FLIP_TESTED, "faster flip-tested"))
        columns = [method for methods, _ in comparisons for method in methods]
        header = ["people", "JCRA", *(NAMES[m] for m in columns)]
        header += [f"JCRA speedup vs {label}" for _, label in comparisons]
        lines += [
            f"\nPer-image latency at batch {batch} (ms; bottom-up = network share + post-processing):\n",
            "| " + " | ".join(header) + " |",
            "|" + "---:|" * len(header),
        ]
        for people, row in table.items():
            cells = [str(people)] + [f"{row[key]:.2f}" for key in ("jcra", *columns)]
            cells += [f"{min(row[m] for m in methods) / row['jcra']:.2f}x" for methods, _ in comparisons]
            lines.append("| " + " | ".join(cells) + " |")
        first = next(iter(table.values()))
        if "jcra iqr" in first:
            spread = first["jcra iqr"] / first["jcra"]
            lines.append(
                f"\nJCRA's rounds spread over {first['jcra iqr']:.2f} ms an image (interquartile range, "
                f"{spread:.0%} of its median): a speedup within {spread:.0%} of 1.00x is no clear difference."
            )
    return "\n".join(lines) + ("\n" if lines else "")


def plot_crowd(groups: dict, out: Path) -> Path | None:
    """Per-image latency against people (batch 1, and 8 where timed), and batch 1's network /
    post-processing split."""
    tables = {batch: crowd_latency(groups, batch) for batch in (1, 8)}
    if not tables[1]:
        return None
    tables = {batch: table for batch, table in tables.items() if table}  # a batch 1 run draws no empty plot
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(tables) + 1, figsize=(5 * len(tables) + 5, 4.5))
    for ax, (batch, table) in zip(axes[:-1], tables.items(), strict=True):
        people = list(table)
        keys = ("jcra", *BOTTOM_UP) + (FLIP_TESTED if _timed_in(table, FLIP_TESTED) else ())
        for i, key in enumerate(keys):
            style = dict(linestyle="--", color=f"C{i - len(BOTTOM_UP)}") if key in FLIP_TESTED else {}
            ax.plot(people, [table[n][key] for n in people], marker="o", label=NAMES[key], **style)
        ax.set_xscale("log")
        ax.set_xlabel("people in the image")
        ax.set_ylabel("ms per image")
        ax.set_title(f"end to end, batch {batch}")
        ax.legend()
    table, ax = tables[1], axes[-1]
    people = list(table)
    width = 0.35
    for offset, method in ((-width / 2, "associative_embedding"), (width / 2, "dekr")):
        xs = [i + offset for i in range(len(people))]
        net = [table[n][method + " network"] for n in people]
        post = [table[n][method] - table[n][method + " network"] for n in people]
        ax.bar(xs, net, width, label=f"{method} network")
        ax.bar(xs, post, width, bottom=net, label=f"{method} post-processing")
    ax.axhline(table[people[0]]["jcra"], color="black", linestyle="--", label="JCRA end to end")
    ax.set_xticks(range(len(people)), [str(n) for n in people])
    ax.set_xlabel("people in the image")
    ax.set_ylabel("ms per image, batch 1")
    ax.set_title("per stage, batch 1")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "crowd.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_stages(groups: dict, out: Path) -> Path | None:
    """A stacked bar per stage group (``bench.profile_end_to_end`` and ``bench.profile_train_step``
    with ``--json``): where one batch's inference or one training step goes, stage by stage."""
    stage_groups = {g: rows for g, rows in sorted(groups.items()) if g.startswith(STAGE_GROUP)}
    if not stage_groups:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 1.2 * len(stage_groups) + 1.5))
    names = dict.fromkeys(r["provider"] for rows in stage_groups.values() for r in rows)
    stages = [name for name in names if name != TOTAL]
    # one colour a stage in every bar; tab20, as inference and a training step have 11 stages together
    colours = {stage: plt.get_cmap("tab20")(i % 20) for i, stage in enumerate(stages)}
    labelled = set()
    for y, rows in enumerate(stage_groups.values()):
        left = 0.0
        for row in rows:
            stage = row["provider"]
            if stage == TOTAL:
                continue
            label = None if stage in labelled else stage
            labelled.add(stage)
            ax.barh(y, row["median_ms"], left=left, color=colours[stage], label=label)
            left += row["median_ms"]
        total = next((r["median_ms"] for r in rows if r["provider"] == TOTAL), left)
        ax.text(left, y, f" {total:.1f} ms", va="center")
    ax.set_yticks(range(len(stage_groups)), list(stage_groups))
    ax.set_xlabel("ms per batch or step (medians; device time between stamps at stage boundaries)")
    ax.legend(ncol=6, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.35))
    fig.tight_layout()
    path = out / "stages.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _crowd_speedups(groups: dict, batch: int, methods=BOTTOM_UP) -> dict[str, float] | None:
    """{people: the faster of ``methods``' per-image time / JCRA's} at ``batch``."""
    crowd = crowd_latency(groups, batch)
    if not _timed_in(crowd, methods):
        return None
    return {str(n): min(row[m] for m in methods) / row["jcra"] for n, row in crowd.items()} or None


def cuda_graph_skips(groups: dict) -> dict[str, int]:
    """{"group/provider": skips} of the rows that recorded ``cuda_graph_skips`` above zero (Inductor's
    ``cudagraph_skips``: a compiled graph that ran outside CUDA graphs), the group named as in the
    table (with its source when several files hold it)."""
    return {
        f"{_label(group, row, rows)}/{row['provider']}": row["info"]["cuda_graph_skips"]
        for group, rows in sorted(groups.items())
        for row in rows
        if row["info"].get("cuda_graph_skips", 0) > 0
    }


def skips_markdown(groups: dict) -> str:
    """A note naming the rows of :func:`cuda_graph_skips`, empty when there are none."""
    skips = cuda_graph_skips(groups)
    if not skips:
        return ""
    lines = [
        "**Fell out of CUDA graphs** (`cuda_graph_skips` > 0): these rows did not time the replayed graph"
        " their suite means to time, so every ratio taken from them, the crowd table's included, is off.\n"
    ]
    lines += [f"- {name}: cuda_graph_skips = {count}" for name, count in skips.items()]
    return "\n".join(lines) + "\n\n"


def gpus(groups: dict) -> list[str]:
    """The GPUs the rows ran on (``bench.profiling.device_name``), sorted."""
    return sorted({r["info"].get("device") for rows in groups.values() for r in rows} - {None, "cpu"})


def summary(groups: dict) -> dict:
    """The headline ratios (the benchmark issue's summary.json), each from one process's timings."""
    infos = [r["info"] for rows in groups.values() for r in rows]
    gpu = next(
        (i for i in infos if i.get("device") not in (None, "cpu")), None
    )  # bench.profiling.device_name
    info = gpu or (infos[0] if infos else {})
    # not every suite records triton's version (the bottom-up baselines do not use it)
    triton_version = info.get("triton") or next((i["triton"] for i in infos if i.get("triton")), None)
    # the transformer compiled (what train.compile=true runs) if it ran, else the whole forward
    train = [(p, _ratio(groups, r"train step .*", "reference", p)) for p in TRAIN_PROVIDERS]
    train_provider, train_speedup = next(((p, r) for p, r in train if r), (None, None))
    return {
        "gpu": gpu["device"] if gpu else None,
        "torch": info.get("torch"),
        "triton": triton_version,
        "e2e_speedup_vs_bottom_up": _crowd_speedups(groups, 1),
        "e2e_speedup_vs_bottom_up_batch8": _crowd_speedups(groups, 8),
        "e2e_speedup_vs_bottom_up_flip_tested": _crowd_speedups(groups, 1, FLIP_TESTED),
        "e2e_speedup_vs_bottom_up_flip_tested_batch8": _crowd_speedups(groups, 8, FLIP_TESTED),
        "train_step_speedup": train_speedup,
        "train_step_provider": train_provider,
        "msda_fwd_bwd_speedup_vs_compiled_reference": _ratio(
            groups, r"ms_deform_attn encoder-b2 forward\+backward bf16", "reference+compile", "triton"
        ),
        "matching_cost_speedup_vs_broadcast": _ratio(
            groups, r"pose_matching_cost .* G=20 .*", "reference", "triton"
        ),
        "matcher_speedup_vs_scipy": _ratio(groups, r"linear_assignment N=\d+ Q=\d+ G=20", "scipy", "triton"),
        "cuda_graph_skips": cuda_graph_skips(groups),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", type=Path, nargs="+", help="pytest-benchmark JSON files of one run")
    parser.add_argument("--out", type=Path, required=True, help="folder for table.md, plots, summary.json")
    args = parser.parse_args(argv)
    for path in args.results:
        if not path.is_file():
            parser.error(f"results file missing: {path}")
    try:
        machine, groups = load_groups(args.results)
    except ValueError as error:  # a malformed results file, named
        parser.error(str(error))
    if not groups:
        parser.error("no benchmark results in " + ", ".join(map(str, args.results)))
    # the headline names one GPU: one report per run, per machine
    if len(gpus(groups)) > 1:
        parser.error(f"the results come from several GPUs {gpus(groups)}; report each machine's files apart")
    if gpus(groups) and any(r["info"].get("device") == "cpu" for rows in groups.values() for r in rows):
        parser.error(f"the results mix a CPU run with a GPU run ({gpus(groups)[0]}); report each apart")
    add_speedups(groups)
    args.out.mkdir(parents=True, exist_ok=True)
    headline = summary(groups)
    cpu = machine.get("cpu", {}).get("brand_raw", "?")
    device = headline["gpu"] or "cpu"
    header = f"device: {device}, torch {headline['torch']}, triton {headline['triton']}, cpu: {cpu}\n\n"
    table = header + skips_markdown(groups) + markdown_table(groups) + crowd_markdown(groups)
    (args.out / "table.md").write_text(table)
    (args.out / "summary.json").write_text(json.dumps(headline, indent=2) + "\n")
    plots = [plot_speedups(groups, args.out), plot_crowd(groups, args.out), plot_stages(groups, args.out)]
    names = ", ".join(str(p) for p in plots if p)
    print(f"wrote {args.out / 'table.md'}, {args.out / 'summary.json'} and {names}")


if __name__ == "__main__":
    main()
