"""benchmarks/ts_scaling.py: a quick run writes the training, evaluation, parameter and growth tables with a
positive figure in every measured cell (the peer's cells too when PyPOTS is installed), and the timing rules
(warm-up, repeats, allowance, run budget) hold."""

import argparse
import importlib.util
import re

import pytest
from conftest import load_benchmark

from toolkit.config import compose_config

bench = load_benchmark("ts_scaling")
HAS_PYPOTS = importlib.util.find_spec("pypots") is not None


def table_rows(text: str, title: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the markdown table that follows the ``### title`` line."""
    lines = text.split(f"### {title}", 1)[1].splitlines()
    first = lines.index(next(line for line in lines if line.startswith("|")))
    table = []
    for line in lines[first:]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip("|").split("|")])
    return table[0], table[2:]


def positive_ms(cell: str) -> float:
    value = float(re.match(r"^([0-9.]+)( \(1 call\))?$", cell).group(1))
    assert value > 0, cell
    return value


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("scaling") / "ts_scaling.md"
    bench.main(["--quick", "--repeats", "1", "--n-samples", "4", "--batch", "4", "--out", str(out)])
    return out.read_text()


def test_quick_run_tables_hold_positive_costs_for_every_cell(quick_run):
    cells = [(k, window) for k in bench.QUICK_FEATURES for window in bench.QUICK_WINDOWS]
    header, rows = table_rows(quick_run, "One training step (batch 4)")
    assert header == ["K", "L", "ours wall ms", "peer wall ms", "ours CPU ms", "peer CPU ms", "peer / ours (CPU)"]
    assert [(int(r[0]), int(r[1])) for r in rows] == cells
    header, eval_rows = table_rows(quick_run, "One denoiser evaluation for 4 samples of one window")
    assert header[:7] == header[:2] + [
        "ours wall ms",
        "peer wall ms",
        "ours CPU ms",
        "peer CPU ms",
        "peer / ours (CPU)",
    ]
    assert "ours sampling CPU ms" in header and "peer's loop CPU ms" in header
    assert [(int(r[0]), int(r[1])) for r in eval_rows] == cells
    for row in rows + eval_rows:
        positive_ms(row[2])
        positive_ms(row[4])
        if HAS_PYPOTS:
            positive_ms(row[3])
            positive_ms(row[5])
            assert float(row[6].rstrip("x")) > 0
        else:
            assert row[3] == row[5] == row[6] == "-"
    steps = compose_config(["domain=timeseries"]).sampler.steps
    for row in eval_rows:
        sampling_ms = positive_ms(row[header.index("ours sampling CPU ms")])
        rounding = 0.05 * (steps + 1)  # both cells are printed to 0.1 ms
        assert sampling_ms == pytest.approx(steps * float(row[4]), rel=0.01, abs=rounding)  # the config's steps
    if HAS_PYPOTS:
        speed_ups = [float(r[-1].rstrip("x")) for r in eval_rows]
        summary = re.search(
            r"Smallest sampling speed-up over the peer \(CPU time\), K = 1: ([0-9.]+)x .*; K >= 4: ([0-9.]+)x",
            quick_run,
        )
        assert float(summary.group(1)) == pytest.approx(min(speed_ups[: len(bench.QUICK_WINDOWS)]), abs=0.06)
        assert float(summary.group(2)) == pytest.approx(min(speed_ups[len(bench.QUICK_WINDOWS) :]), abs=0.06)
    _, params = table_rows(quick_run, "Parameters")
    assert [int(r[0]) for r in params] == list(bench.QUICK_FEATURES)
    assert all(int(r[1]) > 0 for r in params)
    assert int(params[1][1]) - int(params[0][1]) == 3 * 16  # only the feature embedding grows with K
    _, growth = table_rows(quick_run, "Growth from K=1 to K=4")
    assert [r[1] for r in growth] == ["training step", "evaluation, batched", "evaluation, peer's loop"]
    assert float(growth[0][2].rstrip("x")) > 0  # tiny timings on a shared machine: no order asserted
    verdict = quick_run.split("### Growth from K=1 to K=4", 1)[1]
    if HAS_PYPOTS:
        assert re.search(r"Ours grows (no faster than the peer's in all 2 comparisons|faster than the peer's)", verdict)
    else:
        assert "No growth compared: the peer was not timed" in verdict
    assert "Load average before:" in quick_run and "; after:" in quick_run
    assert ("PyPOTS" in quick_run) and (HAS_PYPOTS or "not timed: PyPOTS is not installed" in quick_run)


def test_cells_past_the_budget_are_listed_not_measured(tmp_path):
    out = tmp_path / "budget.md"
    bench.main(
        ["--features", "1", "2", "--windows", "8", "--repeats", "1", "--n-samples", "2", "--batch", "2"]
        + ["--budget", "0", "--no-peer", "--out", str(out)]
    )
    text = out.read_text()
    _, rows = table_rows(text, "One training step (batch 2)")
    assert [(r[0], r[1]) for r in rows] == [("1", "8")], "the first cell is always measured"
    assert re.search(r"- K=2 L=8: skipped: about \d+ s expected after \d+ s, past the 0 s budget", text)


def test_time_call_repeats_within_the_allowance():
    calls = []
    timing = bench.time_call(lambda: calls.append(1), repeats=3, allowance=10.0)
    assert len(calls) == 4 and timing.repeats == 3  # one warm-up, then the repeats
    assert timing.wall >= 0 and timing.cpu >= 0

    def slow():
        calls.append(1)
        sum(range(200_000))

    calls.clear()
    once = bench.time_call(slow, repeats=5, allowance=0.0)
    assert len(calls) == 1 and once.repeats == 0 and once.wall > 0, "a warm-up past the allowance is the measure"
    assert bench.ms(once).endswith(" (1 call)")


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        bench.main(["--repeats", "0", "--no-peer"])
    with pytest.raises(SystemExit):
        bench.main(["--features", "0", "--no-peer"])


@pytest.mark.skipif(not HAS_PYPOTS, reason="the fit cost compares against PyPOTS' CSDI")
def test_fit_cost_projects_our_steps_and_validations_against_the_peers_iterations():
    args = argparse.Namespace(repeats=1, allowance=0.1, n_samples=2, override=[], batch=4)
    _, core_class = bench.import_pypots_core()
    lines = bench.fit_cost(["interest_inflation"], args, core_class)
    header, rows = table_rows("\n".join(lines), f"Fit cost against the peer's {bench.PEER_ITERATIONS} iterations")
    assert rows[0][0] == "interest_inflation (2 x 16)"
    row = dict(zip(header, rows[0], strict=True))
    step, peer_step = float(row["ours step CPU ms"]) / 1000, float(row["peer iteration CPU ms"]) / 1000
    validation = float(row["one validation CPU ms"]) / 1000
    interval = compose_config(["domain=timeseries"]).trainer.val_check_interval
    assert float(row["ours 1000 steps CPU s"]) == pytest.approx(1000 * step + 1000 / interval * validation, abs=1)
    assert float(row[f"peer {bench.PEER_ITERATIONS} iterations CPU s"]) == pytest.approx(
        bench.PEER_ITERATIONS * peer_step, abs=1
    )
    break_even = float(row["ours at most, steps"])
    assert break_even * (step + validation / interval) == pytest.approx(bench.PEER_ITERATIONS * peer_step, rel=0.01)
