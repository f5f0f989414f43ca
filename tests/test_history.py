"""The history of gate runs: change points on scripted series, the SQLite store under concurrent writers and a
killed writer, merged stores, and the new-change-point gate."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from deploycheck.history.changepoints import change_points
from deploycheck.history.pictures import MAX_POINTS, RECENT, history_page, panels, trend_section
from deploycheck.history.recorder import change_note, record_run
from deploycheck.history.records import HistoryRecord, figures, fingerprint
from deploycheck.history.store import HistoryError, HistoryStore, merge_stores
from deploycheck.history.trend import new_worse_changes, trend_table, trends
from deploycheck.run_result import Check, Result, RunInfo


def scripted(seed: int, noise: float = 0.01, outliers: int = 0) -> np.ndarray:
    """30 commits: +15% at commit 12, +3% a commit over commits 20-24, noise elsewhere; `outliers` runs 10% low
    (a busy machine: the reference workload lost more to the neighbour than the model did)."""
    rng = np.random.default_rng(seed)
    values = np.ones(30)
    values[12:] *= 1.15
    for commit in range(20, 25):
        values[commit:] *= 1.03
    values *= 1 + rng.normal(0, noise, 30)
    values[rng.choice(30, outliers, replace=False)] *= 0.9
    return values


@pytest.mark.parametrize("seed", range(5))
def test_a_step_and_a_creep_are_found_with_their_commits(seed: int) -> None:
    found = [(p.start, p.end) for p in change_points(scripted(seed), min_change=0.02)]
    assert (11, 12) in found, found
    creep = [(start, end) for start, end in found if start >= 18]
    assert len(creep) == 1 and creep[0][0] in (18, 19, 20) and creep[0][1] in (23, 24, 25), found


def test_single_run_outliers_keep_the_step_apart_from_the_creep() -> None:
    """Three runs 10% low at random places: the step is still one change near commit 12 and the creep another
    over commits 19-25. Before the outlier filter and the second transition fit, 5 of these 50 histories merged
    the two into one change spanning both (commits 7..26 and the like)."""
    for seed in range(50):
        found = [(p.start, p.end) for p in change_points(scripted(seed, outliers=3), min_change=0.02)]
        assert not any(start <= 13 and end >= 19 for start, end in found), (seed, found)
        assert any(9 <= start <= 13 and 12 <= end <= 16 for start, end in found), (seed, found)
        assert any(start >= 17 and end <= 27 for start, end in found), (seed, found)


def test_noise_and_outliers_alone_have_no_change_points() -> None:
    for seed in range(200):
        values = 1 + np.random.default_rng(seed).normal(0, 0.01, 30)
        values[np.random.default_rng(seed + 1000).choice(30, 3, replace=False)] *= 0.9
        assert change_points(values, min_change=0.02) == [], seed


def test_noise_alone_has_no_change_points() -> None:
    false = sum(bool(change_points(1 + np.random.default_rng(seed).normal(0, 0.01, 30), min_change=0.02))
                for seed in range(200))
    assert false == 0
    assert change_points([5.0] * 40) == []


def test_the_papers_change_in_mean_example_is_located() -> None:
    """Matteson & James (2014), section 5: univariate normal segments whose mean changes; every change is found
    within a couple of observations, and each is significant."""
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(0, 1, 100), rng.normal(3, 1, 100), rng.normal(0, 1, 100)])
    found = change_points(values)
    assert len(found) == 2
    assert abs(found[0].end - 100) <= 2 and abs(found[1].end - 200) <= 2
    assert all(p.pvalue < 1e-6 for p in found)


def test_a_long_history_is_searched_in_windows_without_losing_a_change() -> None:
    values = 1 + np.random.default_rng(0).normal(0, 0.01, 10_000)
    values[6_000:] *= 1.05
    found = change_points(values, min_change=0.02)
    assert len(found) == 1 and 5_997 <= found[0].start <= 5_999 and 6_000 <= found[0].end <= 6_002


def _run(index: int, machine: str = "m1", commit: str | None = None) -> RunInfo:
    return RunInfo(f"run{index:05d}", commit or f"{index:040x}", "main", f"2026-01-01T00:00:{index:09.6f}",
                   "compare", machine, {"cpu": "x"})


def _records(index: int, value: float, formats: tuple[str, ...] = ("eager", "onnx")) -> list[HistoryRecord]:
    return [HistoryRecord(_run(index), "tiny", name, "ok", {"p50_norm@1": value, "size_bytes": 1000.0})
            for name in formats]


def test_the_significance_test_is_welchs() -> None:
    """The change-point search's p-value is scipy's Welch t-test, computed from Student's t directly."""
    from scipy import stats

    from deploycheck.history.changepoints import _pvalue

    rng = np.random.default_rng(0)
    for _ in range(100):
        left = rng.normal(0, rng.uniform(0.1, 2), rng.integers(2, 30))
        right = rng.normal(rng.uniform(-1, 1), rng.uniform(0.1, 2), rng.integers(2, 30))
        assert _pvalue(left, right) == pytest.approx(stats.ttest_ind(left, right, equal_var=False).pvalue,
                                                     rel=1e-9, abs=1e-15)
    assert _pvalue(np.ones(3), np.ones(4)) == 1.0 and _pvalue(np.ones(3), np.full(4, 2.0)) == 0.0


def test_records_keep_every_figure_and_the_store_keeps_each_once(tmp_path: Path) -> None:
    row = {"model": "m", "format": "onnx", "size_bytes": 10, "parity": {"max_abs": 1e-6},
           "accuracy": {"value": 0.9, "drop": 0.01},
           "latency": {"1": {"p50_ms": 2.0, "p90_ms": 3.0, "p99_ms": 4.0, "reference_p50_ms": 0.5,
                             "window_spread": 0.1, "throughput_per_s": 500.0}}}
    measured = figures(row)
    assert measured["p50_norm@1"] == 4.0 and measured["p99_ms@1"] == 4.0 and measured["accuracy"] == 0.9
    assert measured["p50_low_ms@1"] == pytest.approx(1.8) and measured["p50_high_ms@1"] == pytest.approx(2.2)
    assert fingerprint({"cpu": "a", "cores": 2}) != fingerprint({"cpu": "a", "cores": 4})
    store = HistoryStore(tmp_path / "h.sqlite")
    assert store.append(_records(1, 1.0)) == 2
    assert store.append(_records(1, 1.0)) == 0
    assert store.append(_records(2, 1.0)) == 2
    assert [r.run.run_id for r in store.records("tiny", "onnx", last_runs=1)] == ["run00002"]
    assert store.records()[0].figures == {"p50_norm@1": 1.0, "size_bytes": 1000.0}


def test_each_series_gets_its_own_recent_runs_in_one_query(history_location: str) -> None:
    """The end of a run reads every row's past at once: a format timed only in some runs still gets its own last
    N runs, not what is left of the store's last N."""
    store = HistoryStore(history_location)
    for index in range(10):
        store.append(_records(index, float(index), formats=("eager", "onnx") if index % 3 == 0 else ("eager",)))
    pasts = store.recent_series([("tiny", "eager"), ("tiny", "onnx"), ("tiny", "missing")], last_runs=2)
    assert [r.run.run_id for r in pasts[("tiny", "eager")]] == ["run00008", "run00009"]
    assert [r.run.run_id for r in pasts[("tiny", "onnx")]] == ["run00006", "run00009"]
    assert pasts[("tiny", "missing")] == []
    for key in (("tiny", "eager"), ("tiny", "onnx")):
        assert [r.key for r in pasts[key]] == [r.key for r in store.records(*key, last_runs=2)]
    assert store.recent_series([], last_runs=2) == {}


def test_a_newer_schema_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    HistoryStore(path)
    import sqlite3

    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    with pytest.raises(HistoryError, match=r"schema 99 is newer"):
        HistoryStore(path)


def test_a_damaged_store_takes_no_run_and_is_named(tmp_path: Path) -> None:
    """A byte flipped inside a record's text (the pages stay sound, and an append used to succeed into a file that
    `deploycheck history` then refused), and bytes overwritten across a page: the store is checked before it is
    appended to, and the file is left as it was."""
    path = tmp_path / "h.sqlite"
    store = HistoryStore(path)
    for index in range(40):
        store.append(_records(index, 1.0, formats=tuple(f"f{k}" for k in range(8))))
    data = bytearray(path.read_bytes())
    assert len(data) > 16 * 4096
    flipped = data.replace(b'"size_bytes": 1000.0', b'"size_bytes"; 1000.0', 1)  # one byte of a record's text
    path.write_bytes(bytes(flipped))
    with pytest.raises(HistoryError, match=rf"history {path}: the file is damaged \(.* is not valid JSON\); nothing"):
        HistoryStore(path).append(_records(99, 1.0))
    assert path.read_bytes() == bytes(flipped), "nothing written to a damaged store"
    data[8 * 4096:8 * 4096 + 512] = b"\xa5" * 512  # a page in the middle of the file
    path.write_bytes(bytes(data))
    with pytest.raises(HistoryError, match=rf"history {path}: (the file is damaged|.*malformed)"):
        HistoryStore(path).append(_records(99, 1.0))
    assert path.read_bytes() == bytes(data)


def test_a_figure_that_is_not_a_finite_number_is_refused_on_the_way_in_and_named_on_the_way_out(
        tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "h.sqlite"
    store = HistoryStore(path)
    store.append(_records(0, 1.0))
    for value in (float("nan"), float("inf"), "fast", True):
        bad = [HistoryRecord(_run(1), "tiny", "onnx", "ok", {"p50_norm@1": value})]  # type: ignore[dict-item]
        with pytest.raises(HistoryError, match=r"tiny/onnx of run run00001: figure 'p50_norm@1' is .*, not a finite"):
            store.append(bad)
    assert store.count() == 2, "nothing of a refused run was written"
    with sqlite3.connect(path) as connection:  # edited by hand, or by another tool
        connection.execute("""UPDATE results SET figures = '{"size_bytes": NaN}' WHERE format = 'onnx'""")
    with pytest.raises(HistoryError, match=rf"history {path}: tiny/onnx of run run00000 .*: figure 'size_bytes' is "
                                           "nan, not a finite number"):
        store.records()
    listed = subprocess.run([sys.executable, "-m", "deploycheck.cli", "history", "--store", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 2 and "Traceback" not in listed.stderr and "not a finite number" in listed.stderr


def test_a_database_that_is_not_a_history_is_never_written_into(tmp_path: Path) -> None:
    import sqlite3

    other = tmp_path / "app.sqlite"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE users (name TEXT)")
    before = other.read_bytes()
    with pytest.raises(HistoryError, match=r"a SQLite database but not a deploycheck history \(its tables: users\)"):
        HistoryStore(other)
    target = tmp_path / "merged.sqlite"
    with pytest.raises(HistoryError, match="not a deploycheck history"):
        merge_stores([other], target)
    assert other.read_bytes() == before
    with pytest.raises(HistoryError, match="does not exist"):
        merge_stores([tmp_path / "missing.sqlite"], tmp_path / "never.sqlite")
    assert not (tmp_path / "never.sqlite").exists(), "a mistyped source leaves no target behind"


def _write_runs(path: str, first: int, count: int) -> None:
    store = HistoryStore(path)
    for index in range(first, first + count):
        store.append(_records(index, 1.0, formats=tuple(f"f{k}" for k in range(12))))


def test_concurrent_writers_keep_every_record_once(history_location: str) -> None:
    path = history_location
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_runs, args=(path, first, 40)) for first in (0, 1000, 2000)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(120)
        assert writer.exitcode == 0
    store = HistoryStore(path)
    assert store.count() == 3 * 40 * 12 and store.check() == "ok"
    assert len({r.key for r in store.records()}) == 3 * 40 * 12


def test_a_writer_killed_mid_write_leaves_a_readable_store(history_location: str) -> None:
    path = history_location
    HistoryStore(path)
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_history as t; "
              f"t._write_runs({path!r}, 0, 100000)")
    writer = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while HistoryStore(path).count() < 12 * 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert writer.poll() is None, "the writer was still writing"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(30)
    store = HistoryStore(path)
    assert store.check() == "ok"
    count = store.count()
    assert count >= 12 * 20 and count % 12 == 0, "a run is in the store whole or not at all"
    store.append(_records(999_999, 1.0))  # and it takes the next run


def test_stores_merge_without_duplicates(history_location: str, tmp_path: Path) -> None:
    a, b = HistoryStore(history_location), HistoryStore(tmp_path / "b.sqlite")
    for index in range(5):
        a.append(_records(index, 1.0))
    for index in range(3, 8):
        b.append(_records(index, 1.0))
    read, added = merge_stores([a.location, b.location], tmp_path / "c.sqlite")
    assert (read, added) == (20, 16)
    assert HistoryStore(tmp_path / "c.sqlite").count() == 16
    assert merge_stores([tmp_path / "c.sqlite"], history_location) == (16, 6), "and back into the first kind"
    with pytest.raises(HistoryError, match="does not exist"):
        merge_stores([tmp_path / "missing.sqlite"], tmp_path / "c.sqlite")


def test_the_gate_fires_on_the_step_and_on_the_creep_and_never_on_noise() -> None:
    """Walking the scripted history run by run, as CI would: a new worse change point is raised a few runs after
    the step and during the creep (no single run there is 15% slower than the one before), never before."""
    values = scripted(1)
    fired = [index for index in range(1, 30)
             if new_worse_changes([r for i in range(index) for r in _records(i, float(values[i]))],
                                  _records(index, float(values[index])))]
    assert fired and not [index for index in fired if index < 12]
    assert [index for index in fired if 12 <= index <= 16], fired
    assert [index for index in fired if 20 <= index <= 27], fired
    history = [r for index in range(24) for r in _records(index, float(values[index]))]
    other_machine = [HistoryRecord(_run(100 + i, machine="m2"), "tiny", "onnx", "ok", {"p50_norm@1": 5.0})
                     for i in range(3)]
    found = trends([*history, *other_machine])
    onnx = next(t for t in found if t.format == "onnx" and t.figure.label == "p50 / reference")
    assert len(onnx.values) == 3, "latency is read on the newest run's machine only"
    table = trend_table(trends(history))
    assert "change point(s):" in table and "+" in table


def _timed_records(values: np.ndarray, accepted_at: int) -> list[HistoryRecord]:
    records = []
    for index, value in enumerate(values):
        run = RunInfo(f"run{index:05d}", f"{index:040x}", "main", f"2026-01-01T{index:09d}",
                      "update" if index == accepted_at else "compare", "m1", {})
        records.append(HistoryRecord(run, "tiny", "onnx", "ok", {
            "p50_ms@1": 2.0 * value, "p50_low_ms@1": 1.9 * value, "p50_high_ms@1": 2.1 * value,
            "p50_norm@1": float(value), "size_bytes": 1000.0 + (index >= 20) * 500, "accuracy": 0.95}))
    return records


def test_the_trend_pictures_mark_every_change_point_and_the_accepted_baseline() -> None:
    section = trend_section(_timed_records(scripted(2), accepted_at=5))
    assert section.count("<svg") == 1 and "tiny/onnx" in section
    assert "p50 ms, batch 1" in section and "size" in section and "accuracy" in section
    assert section.count("change point 00000000") == 3, "the step and the creep in latency, the size step"
    assert f"accepted baseline: {2 * scripted(2)[5]:.3g} ms" in section, "the accepted run's p50 as the baseline"
    assert "<polygon" in section, "the latency interval band"


def test_a_long_history_is_downsampled_but_keeps_its_change_points() -> None:
    values = 1 + np.random.default_rng(4).normal(0, 0.005, 10_000)
    values[3_000:] *= 1.1
    drawn = panels(_timed_records(values, accepted_at=9_000))
    latency = drawn[0]
    assert latency.runs == 10_000 and len(latency.x) <= MAX_POINTS
    assert [index for index, _ in latency.changes] == [3_000]
    assert latency.x[-RECENT:] == [float(i) for i in range(10_000 - RECENT, 10_000)], "recent runs one by one"
    page = history_page(_timed_records(values, accepted_at=9_000), "h.sqlite")
    assert len(page.encode()) < 2_000_000 / 12, "12 formats of 10,000 runs stay under 2 MB"


def test_each_change_point_says_whether_the_cost_counters_moved_across_it() -> None:
    """A latency step whose graph is unchanged reads "unchanged" (look at the machine or the runtime); a step
    where a layer was added names it; runs recorded without counters say so instead of guessing."""
    small = {"ops": {"Gemm": 2, "Relu": 1}, "flops_per_sample": 1000, "weight_bytes": 4000}
    larger = {"ops": {"Gemm": 3, "Relu": 2}, "flops_per_sample": 1240, "weight_bytes": 5000}
    noise = np.random.default_rng(3).normal(0, 0.005, 30)

    def history(after: dict | None, before: dict | None = small) -> list[HistoryRecord]:
        return [HistoryRecord(_run(i), "tiny", "onnx", "ok", {"p50_norm@1": (1.0 if i < 15 else 1.3) + noise[i]},
                              dict((before if i < 15 else after) or {})) for i in range(30)]

    def counters_column(records: list[HistoryRecord]) -> str:
        (change,) = [c for t in trends(records) for c in t.changes]
        return trend_table(trends(records)).splitlines()[-1].split("  ")[-1].strip() + " | " + change_note(change)

    assert counters_column(history(small)).startswith("unchanged | ")
    assert "cost counters: unchanged)" in counters_column(history(small))
    assert counters_column(history(larger)).startswith("+1 Gemm, +1 Relu, +24% FLOPs, +25% weight bytes | ")
    assert counters_column(history(None, None)).startswith("not recorded | ")


def _decoder_runs(itl_ms: np.ndarray) -> list[tuple[RunInfo, list[Result]]]:
    """One run per value: a decoder's onnx format at batch 1 with that median ITL, and eager beside it."""
    runs = []
    for index, itl in enumerate(itl_ms):
        run = RunInfo(f"run{index:05d}", str(index) * 40, "main", f"2026-12-08T00:{index:02d}:00", "compare", "m1")
        runs.append((run, [Result("llm", name, "generative", (
            Check("itl_p50_ms", "reported", value, "ms", batch_size=1),
            Check("decode_tokens_per_s", "reported", 1e3 / value, "tokens/s", batch_size=1),
            Check("mean_kl", "ok", 1e-6, "nats", "budget", 0.05, "max", batch_size=1),
            Check("itl_p50_ms", "ok", 1.0, "x", "accepted", 1.25, "max", batch_size=1)))
            for name, value in (("eager", 0.7), ("onnx", itl))]))
    return runs


@pytest.mark.parametrize("seed", range(3))
def test_a_slower_decode_step_is_one_change_point_with_its_commits_and_noise_none(tmp_path: Path, seed: int) -> None:
    """Ten scripted runs of a decoder: its median ITL 30% longer from run 6 (index 5) is one change point in
    `deploycheck history`, between the commits of runs 5 and 6; ten runs of noise alone (3%) have none."""
    rng = np.random.default_rng(seed)
    noise = 1 + rng.normal(0, 0.03, 10)
    stepped = 0.25 * noise * np.where(np.arange(10) >= 5, 1.3, 1.0)
    for name, values in (("stepped", stepped), ("unchanged", 0.25 * noise)):
        location = str(tmp_path / f"{name}.sqlite")
        for run, results in _decoder_runs(values):
            record_run(location, [], run, fail_on_change_point=False, decoders=results)
        records = HistoryStore(location).records()
        assert {(r.format, tuple(sorted(r.figures))) for r in records} == {
            (f, ("decode_tokens_per_s@1", "itl_p50_ms@1", "mean_kl@1")) for f in ("eager", "onnx")}, \
            "the figures measured, not the ratio to the accepted artifact"
        changes = [(t.format, c.commits) for t in trends(records) for c in t.changes]
        listed = subprocess.run([sys.executable, "-m", "deploycheck.cli", "history", "--store", location],
                                capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        if name == "stepped":
            assert changes == [("onnx", "4444444444..5555555555")]
            assert "4444444444..5555555555" in listed.stdout and "median ITL" in listed.stdout, listed.stdout
        else:
            assert changes == [], changes
