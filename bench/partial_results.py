"""pytest plugin: keep the timings of a benchmark run that is killed before it ends.

pytest-benchmark writes ``--benchmark-json=F`` only when the session ends, so a suite stopped at a
time limit (a section of ``bench.gpu_session`` on a lent GPU) would lose every timing it took. With
``-p bench.partial_results`` each finished test also rewrites ``F`` with ``.partial.json`` in place
of ``.json`` (atomically, the same format) holding every benchmark so far; a session that ends
normally removes it, since ``F`` then holds them all. ``bench.report`` reads either.
"""

import os
import warnings
from pathlib import Path

import pytest

_MACHINE_INFO = pytest.StashKey[dict]()


def _partial_path(config: pytest.Config) -> Path | None:
    out = config.getoption("benchmark_json", None)
    return None if out is None else Path(out.name).with_suffix(".partial.json")


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    path, session = _partial_path(item.config), getattr(item.config, "_benchmarksession", None)
    if path is None or session is None or not any(not b.has_error for b in session.benchmarks):
        return
    try:
        from pytest_benchmark.utils import safe_dumps

        if _MACHINE_INFO not in item.config.stash:  # read once: it probes the CPU
            item.config.stash[_MACHINE_INFO] = session.get_machine_info()
        data = item.config.hook.pytest_benchmark_generate_json(
            config=item.config,
            benchmarks=session.benchmarks,
            include_data=False,
            machine_info=item.config.stash[_MACHINE_INFO],
            commit_info={},
        )
        tmp = path.with_suffix(".tmp")
        tmp.write_text(safe_dumps(data, ensure_ascii=True, indent=1))
        os.replace(tmp, path)
    except Exception as err:  # the timings are the point of the run: never fail a test over a copy
        warnings.warn(f"bench.partial_results could not write {path}: {err!r}", stacklevel=1)


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = _partial_path(session.config)
    if path is not None:
        path.unlink(missing_ok=True)
