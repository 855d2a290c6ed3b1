"""HTTP imputation service: ``python -m toolkit.serve --model PATH [--host 127.0.0.1] [--port 8000]``.

``POST /impute`` takes either

- JSON: ``{"data": [{"date": "2020-01-01", "a": 1.5, "b": null}, ...]}`` (records) or
  ``{"data": {"date": [...], "a": [...], "b": [...]}}`` (columns), with optional ``time_column``,
  ``series_column``, ``n_samples``, ``quantiles`` (list), ``seed``, ``steps``, ``sampler`` and
  ``horizon`` (forecast that many future steps); ``null`` marks a gap;
- or a CSV body (``Content-Type: text/csv``) with the same options as query parameters
  (``?n_samples=20&quantiles=0.05,0.95``).

It answers JSON ``{"columns", "variables", "rows", "filled": {column: values}, "quantiles":
{"0.05": {variable: values}}, "n_samples", "seed", "warnings"}``, or, with ``Accept: text/csv``, the
filled table with ``<variable>_q05``-style quantile columns as CSV (warnings in an ``X-Warnings``
header). Warnings note input the service accepted but changed, such as time stamps missing from the
series' regular grid (imputed as gaps; irregular stamps are a 422). Observed values come back unchanged (JSON
floats round-trip exactly). Bad requests get a 4xx answer whose ``detail`` says what to fix:
413 (body over ``--max-bytes``), 415 (content type), 400 (unreadable JSON or CSV), 422 (wrong
columns, non-numeric values, options out of range such as too many samples). ``GET /health``
describes the model. Imputations run one at a time; the server binds to 127.0.0.1 unless told.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import threading
import warnings
from collections.abc import Mapping

import numpy as np
import pandas as pd
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from toolkit.core import sampler as samplers
from toolkit.domains.timeseries import check_separator
from toolkit.impute import CliParser, Imputer, check_quantiles, guess_time_column, int_at_least, user_errors

OPTIONS = ("time_column", "series_column", "n_samples", "quantiles", "seed", "steps", "sampler", "horizon")
CSV_TYPES = ("text/csv", "application/csv")
MAX_QUANTILES = 32


def _error(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``max_bytes``."""
    too_large = f"request body is larger than the limit of {max_bytes} bytes; send fewer rows per request"
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _error(413, too_large)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _error(413, too_large)
        chunks.append(chunk)
    return b"".join(chunks)


def _int_option(name: str, value, low: int, high: int | None = None) -> int:
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise _error(422, f"{name} must be an integer, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise _error(422, f"{name} must be an integer {bounds}, got {value!r}")
    return value


def check_options(raw: Mapping, max_samples: int, max_steps: int) -> dict:
    """Request options with defaults (50 samples or the limit, the 5 and 95 % quantiles),
    validated; out-of-range values are 422 errors."""
    unknown = sorted(set(raw) - set(OPTIONS))
    if unknown:
        raise _error(422, f"unknown options {unknown}; known: {list(OPTIONS)}")
    options = {
        "n_samples": _int_option("n_samples", raw.get("n_samples", min(50, max_samples)), 1, max_samples),
        "seed": _int_option("seed", raw.get("seed", 0), 0, 2**63 - 1),
        "horizon": _int_option("horizon", raw.get("horizon", 0), 0),
        "steps": None if raw.get("steps") is None else _int_option("steps", raw["steps"], 1, max_steps),
    }
    quantiles = raw.get("quantiles", [0.05, 0.95])
    if isinstance(quantiles, str):
        quantiles = [q for q in quantiles.split(",") if q.strip()]
    if not isinstance(quantiles, list) or len(quantiles) > MAX_QUANTILES:
        raise _error(422, f"quantiles must be a list of at most {MAX_QUANTILES} numbers in [0, 1]")
    try:
        options["quantiles"] = check_quantiles(quantiles)
    except (TypeError, ValueError) as error:
        raise _error(422, f"quantiles must be numbers in [0, 1]: {error}") from None
    method = raw.get("sampler")
    if method is not None and method not in samplers.SAMPLERS:
        raise _error(422, f"unknown sampler {method!r}; choose one of {sorted(samplers.SAMPLERS)}")
    options["sampler"] = method
    for key in ("time_column", "series_column"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise _error(422, f"{key} must be a column name (a string), got {raw[key]!r}")
        options[key] = raw.get(key)
    return options


def frame_from_json(body: bytes) -> tuple[pd.DataFrame, dict]:
    """The data frame and the raw options of a JSON request."""
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _error(400, f"invalid JSON: {error}") from None
    if not isinstance(payload, dict) or "data" not in payload:
        raise _error(422, 'the JSON body must be an object with "data": a list of records or a dict of columns')
    data = payload.pop("data")
    try:
        if isinstance(data, list) and all(isinstance(r, dict) for r in data):
            frame = pd.DataFrame.from_records(data)
        elif isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
            frame = pd.DataFrame(data)
        else:
            raise ValueError("expected a list of records (objects) or an object of column lists")
    except ValueError as error:
        raise _error(422, f'"data" is not a table: {error}') from None
    if frame.empty:
        raise _error(422, '"data" holds no rows')
    return frame, payload


def frame_from_csv(body: bytes) -> pd.DataFrame:
    """A comma-separated CSV body; another separator (e.g. ';' with decimal commas) is a 400 naming it."""
    try:
        return check_separator(pd.read_csv(io.BytesIO(body)), "the CSV body")
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise _error(400, f"invalid CSV: {error}") from None


def numeric_columns(frame: pd.DataFrame, variables: list[str]) -> pd.DataFrame:
    """JSON values of the model's variables must be numbers or null; they become float columns."""
    frame = frame.copy()
    for column in variables:
        dtype = frame[column].dtype if column in frame.columns else None
        if dtype is None or (pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)):
            continue
        for row, value in enumerate(frame[column]):
            if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
                if isinstance(value, float) and math.isnan(value):
                    continue
                raise _error(422, f"column {column!r} row {row} holds {value!r}, not a number; send numbers or null")
        frame[column] = pd.to_numeric(frame[column].astype(object).where(frame[column].notna(), np.nan))
    return frame


def json_values(column: pd.Series) -> list:
    """A column as JSON-ready values: floats and ints as they are, dates as ISO text, gaps as null."""
    if pd.api.types.is_datetime64_any_dtype(column.dtype):
        return [None if pd.isna(t) else t.isoformat() for t in column]
    return [None if pd.isna(v) else v.item() if isinstance(v, np.generic) else v for v in column.astype(object)]


def result_payload(result, options: dict) -> dict:
    filled = result.filled
    return {
        "columns": [str(c) for c in filled.columns],
        "variables": [str(c) for c in result.columns],
        "rows": len(filled),
        "filled": {str(c): json_values(filled[c]) for c in filled.columns},
        "quantiles": {
            str(q): {str(c): json_values(frame[c]) for c in result.columns}
            for q, frame in result.quantile_frames().items()
        },
        "n_samples": options["n_samples"],
        "seed": options["seed"],
    }


def create_app(imputer: Imputer, max_bytes: int = 5_000_000, max_samples: int = 200, max_steps: int = 200) -> FastAPI:
    """The service around one loaded ``Imputer`` (see the module docstring for the protocol)."""
    app = FastAPI(title="toolkit imputation service")
    one_at_a_time = threading.Lock()

    def run(frame: pd.DataFrame, options: dict):
        """The result and the toolkit's warnings about the input (e.g. time stamps missing from the grid)."""
        horizon = options.pop("horizon")
        with one_at_a_time, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            result = imputer.forecast(frame, horizon, **options) if horizon else imputer.impute(frame, **options)
        return result, [str(w.message) for w in caught if w.category is UserWarning]

    @app.get("/health")
    def health() -> dict:
        return {
            "status": "ok",
            "columns": imputer.columns,
            "window": imputer.window,
            "time_column": imputer.time_column,
            "series_column": imputer.series_column,
            "max_bytes": max_bytes,
            "max_samples": max_samples,
        }

    @app.post("/impute")
    async def impute(request: Request):
        body = await read_body(request, max_bytes)
        content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if content_type in CSV_TYPES:
            frame, raw = frame_from_csv(body), dict(request.query_params)
        elif content_type in ("application/json", ""):
            frame, raw = frame_from_json(body)
        else:
            raise _error(415, f"unsupported content type {content_type!r}; send application/json or text/csv")
        options = check_options(raw, max_samples, max_steps)
        options["time_column"] = guess_time_column(frame, imputer, options["time_column"], options["series_column"])
        frame = numeric_columns(frame, imputer.columns)
        try:
            result, notes = await run_in_threadpool(run, frame, dict(options))
        except (ValueError, TypeError) as error:
            raise _error(422, str(error)) from None
        if "text/csv" in request.headers.get("accept", ""):
            headers = {"X-Warnings": " | ".join(notes)} if notes else None
            return Response(result.with_quantile_columns().to_csv(index=False), media_type="text/csv", headers=headers)
        return {**result_payload(result, options), "warnings": notes}

    return app


def port_number(text: str) -> int:
    port = int_at_least(0)(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"expected a port in [0, 65535], got {text!r}")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(
        prog="python -m toolkit.serve",
        description="HTTP imputation service around one time-series model: POST /impute (JSON or CSV body), "
        "GET /health. See the toolkit.serve module docstring or README for the request format.",
    )
    parser.add_argument(
        "--model", required=True, help="checkpoint: last.ckpt of a domain=timeseries run, or a file from Imputer.save"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=port_number, default=8000, help="port to listen on (default 8000; 0: any free)")
    parser.add_argument(
        "--max-bytes", type=int_at_least(1), default=5_000_000, help="largest request body accepted (413 beyond)"
    )
    parser.add_argument("--max-samples", type=int_at_least(1), default=200, help="largest n_samples accepted (422)")
    parser.add_argument("--max-steps", type=int_at_least(1), default=200, help="largest sampler steps accepted (422)")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug", "trace"],
        help="uvicorn's log level (default info)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    with user_errors():
        imputer = Imputer.load(args.model)
    app = create_app(imputer, args.max_bytes, args.max_samples, args.max_steps)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
