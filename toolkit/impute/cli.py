"""``python -m toolkit.impute``: fill the gaps of a CSV/Parquet file with a trained model, with
one ``error:`` line and exit code 2 for what a user can fix."""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import warnings
from pathlib import Path

import pandas as pd

from toolkit.cli import fail
from toolkit.core import sampler as samplers
from toolkit.domains.timeseries import read_frame
from toolkit.files import atomic_path
from toolkit.impute.imputer import Imputer
from toolkit.impute.result import check_quantiles


def guess_time_column(frame: pd.DataFrame, imputer: Imputer, time_column: str | None, series_column: str | None):
    """For files without index information (CSV): the given time column, else the model's if
    present, else the one column that is neither a model variable nor the series id."""
    if time_column is not None:
        return time_column
    if imputer.time_column in frame.columns:
        return imputer.time_column
    series = series_column if series_column is not None else imputer.series_column
    others = [c for c in frame.columns if str(c) not in imputer.columns and c != series]
    return others[0] if len(others) == 1 else None


def parse_quantiles(text: str) -> tuple[float, ...]:
    try:
        return check_quantiles([float(q) for q in text.split(",") if q.strip()])
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers in [0, 1], e.g. 0.05,0.95 ({error})"
        ) from None


def int_at_least(low: int):
    """An argparse type: an integer >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    return parse


def sampler_name(text: str) -> str:
    if text not in samplers.SAMPLERS:
        raise argparse.ArgumentTypeError(f"unknown sampler {text!r}; choose one of {sorted(samplers.SAMPLERS)}")
    return text


class CliParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``error: ...``, with exit code 2 (no usage dump;
    ``toolkit.cli.fail``)."""

    def error(self, message: str):
        fail(f"{message} (see {self.prog} --help)")


@contextlib.contextmanager
def user_errors(*, prefix: str = ""):
    """Turn the errors a user can fix (bad files, values, options) into one ``error:`` line and exit
    code 2 (``toolkit.cli.fail``) instead of a traceback; the toolkit's and pandas' warnings become
    ``warning:`` lines, printed before it."""
    failure = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            yield
        except (ValueError, TypeError, OSError) as error:
            failure = f"{prefix}{str(error) or type(error).__name__}"
    for warning in caught:
        if warning.category is UserWarning:  # not library notes such as Lightning's PossibleUserWarning
            print(f"warning: {warning.message}", file=sys.stderr)
    if failure is not None:
        fail(failure)


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(
        prog="python -m toolkit.impute",
        description="Fill the gaps (empty cells) of a CSV/Parquet time series with a trained model, and "
        "optionally forecast future steps. Writes the filled table; observed values are kept as they are.",
        epilog="Input: comma-separated CSV (decimal point) or Parquet; one row per time stamp, one column per "
        "variable, empty cells are gaps. Time stamps must be one regular step apart (stamps missing from the "
        "grid are imputed with a warning). Errors exit with code 2 and one line saying what to fix.",
    )
    parser.add_argument("input", help="CSV or Parquet file with gaps (empty cells)")
    parser.add_argument(
        "--model", required=True, help="checkpoint: last.ckpt of a domain=timeseries run, or a file from Imputer.save"
    )
    parser.add_argument("--out", required=True, help="output file, .csv or .parquet (written only when all went well)")
    parser.add_argument(
        "--quantiles",
        type=parse_quantiles,
        default=(),
        help="comma-separated quantiles in [0, 1], e.g. 0.05,0.95: also write <col>_q05, <col>_q95 columns",
    )
    parser.add_argument("--n-samples", type=int_at_least(1), default=50, help="samples drawn per gap (default 50)")
    parser.add_argument("--seed", type=int_at_least(0), default=0, help="random seed; same seed, same output")
    parser.add_argument(
        "--steps", type=int_at_least(1), default=None, help="sampler steps (default: the model's config)"
    )
    parser.add_argument(
        "--sampler", type=sampler_name, default=None, help=f"one of {sorted(samplers.SAMPLERS)} (default: the model's)"
    )
    parser.add_argument(
        "--stride", type=int_at_least(1), default=None, help="steps between window starts (default: half a window)"
    )
    parser.add_argument(
        "--time-column", default=None, help="column of time stamps (default: the model's, or the one non-variable one)"
    )
    parser.add_argument(
        "--series-column", default=None, help="column of series ids (default: the model's, when the file has it)"
    )
    parser.add_argument(
        "--horizon",
        type=int_at_least(0),
        default=0,
        help="also forecast this many future steps, continuing the time stamps (fewer than the model's window)",
    )
    return parser


def write_frame(frame: pd.DataFrame, path: Path) -> None:
    """CSV (floats written with round-trip precision) or Parquet, by suffix, atomically
    (``toolkit.files.atomic_path``): on failure neither the file nor the folders made for it are
    left behind."""
    made = [folder for folder in path.parents if not folder.exists()]  # innermost first
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as partial:
            if path.suffix.lower() in (".parquet", ".pq"):
                frame.to_parquet(partial, index=False)
            else:
                frame.to_csv(partial, index=False)
    except BaseException:
        for folder in made:
            folder.rmdir()
        raise


def main(argv: list[str] | None = None) -> Path:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.suffix.lower() not in (".csv", ".parquet", ".pq"):
        parser.error(f"--out must end in .csv or .parquet, got {out.name}")
    if out.is_dir():
        parser.error(f"--out {out} is a folder; give a file name ending in .csv or .parquet")
    if out.resolve() == Path(args.input).resolve():
        parser.error(f"--out {out} is the input file; write the result to another file")
    with user_errors():
        frame = read_frame(args.input)
        imputer = Imputer.load(args.model)
    with user_errors(prefix=f"{args.input}: "):
        time_column = guess_time_column(frame, imputer, args.time_column, args.series_column)
        options = dict(
            n_samples=args.n_samples,
            quantiles=args.quantiles,
            seed=args.seed,
            steps=args.steps,
            sampler=args.sampler,
            stride=args.stride,
            time_column=time_column,
            series_column=args.series_column,
        )
        run = functools.partial(imputer.forecast, horizon=args.horizon) if args.horizon else imputer.impute
        table = run(frame, **options).with_quantile_columns()
    with user_errors(prefix=f"cannot write --out {out}: "):
        write_frame(table, out)
    print(f"wrote {out}")
    return out
