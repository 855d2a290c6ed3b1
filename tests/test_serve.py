"""The HTTP imputation service: a real uvicorn server on a free loopback port (in a thread, with a
tiny model trained once for this module), driven with httpx; bounded requests and time."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pandas as pd
import pytest
import uvicorn

from toolkit.domains.timeseries import synthetic_frames
from toolkit.impute import Imputer
from toolkit.serve import build_parser, create_app, main

MAX_BYTES = 20_000
MAX_SAMPLES = 16
TIMEOUT = httpx.Timeout(30.0)


def free_port() -> int:
    """A loopback port that was free a moment ago, for a server subprocess to bind."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def imputer(tmp_path_factory) -> Imputer:
    frames = synthetic_frames(num_series=2, length=100, num_features=2, seed=0)[0]
    return Imputer.fit(
        frames,
        window=16,
        stride=4,
        max_steps=20,
        batch_size=16,
        run_dir=tmp_path_factory.mktemp("fit"),
        **{"domain.net.channels": 16, "domain.net.layers": 1, "domain.net.heads": 2, "sampler.steps": 2},
    )


@pytest.fixture(scope="module")
def base_url(imputer):
    app = create_app(imputer, max_bytes=MAX_BYTES, max_samples=MAX_SAMPLES, max_steps=10)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    assert host == "127.0.0.1"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    assert not thread.is_alive()


@pytest.fixture(scope="module")
def client(base_url):
    with httpx.Client(base_url=base_url, timeout=TIMEOUT) as c:
        yield c


def gappy_records(n: int = 24) -> tuple[pd.DataFrame, list[dict]]:
    """Hourly rows with text time stamps and gaps (x0 at rows 3-7, x1 at row 10), as records."""
    assert n > 10
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "date": pd.date_range("2021-01-01", periods=n, freq="h").strftime("%Y-%m-%d %H:%M:%S"),
            "x0": rng.normal(size=n),
            "x1": 10 + rng.normal(size=n),
        }
    )
    frame.loc[3:7, "x0"] = np.nan
    frame.loc[10, "x1"] = np.nan
    records = [
        {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
        for r in frame.to_dict("records")
    ]
    return frame, records


def test_health_describes_the_model(client):
    answer = client.get("/health")
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "ok" and body["columns"] == ["x0", "x1"] and body["window"] == 16


def test_json_records_are_filled_with_observed_values_unchanged(client):
    frame, records = gappy_records()
    payload = {"data": records, "n_samples": 5, "quantiles": [0.05, 0.95], "seed": 1, "steps": 2}
    answer = client.post("/impute", json=payload)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["columns"] == ["date", "x0", "x1"] and body["variables"] == ["x0", "x1"] and body["rows"] == 24
    assert body["filled"]["date"] == frame["date"].tolist()
    for column in ("x0", "x1"):
        filled = np.array(body["filled"][column])
        observed = frame[column].notna().to_numpy()
        assert filled[observed].tobytes() == frame[column].to_numpy()[observed].tobytes()
        assert np.isfinite(filled).all()
        low, high = (np.array(body["quantiles"][q][column]) for q in ("0.05", "0.95"))
        assert (low <= filled).all() and (filled <= high).all()
    again = client.post("/impute", json=payload).json()
    assert again == body


def test_json_columns_and_csv_bodies_give_the_same_answer(client):
    frame, records = gappy_records()
    columns = {c: [r[c] for r in records] for c in frame.columns}
    options = {"n_samples": 4, "seed": 2, "steps": 2, "quantiles": [0.1]}
    from_columns = client.post("/impute", json={"data": columns, **options}).json()
    from_csv = client.post(
        "/impute",
        content=frame.to_csv(index=False),
        headers={"content-type": "text/csv"},
        params={"n_samples": 4, "seed": 2, "steps": 2, "quantiles": "0.1"},
    )
    assert from_csv.status_code == 200, from_csv.text
    assert from_csv.json() == from_columns
    as_csv = client.post(
        "/impute",
        content=frame.to_csv(index=False),
        headers={"content-type": "text/csv", "accept": "text/csv"},
        params={"n_samples": 4, "seed": 2, "steps": 2, "quantiles": "0.1"},
    )
    table = pd.read_csv(io.StringIO(as_csv.text))
    assert list(table.columns) == ["date", "x0", "x1", "x0_q10", "x1_q10"]
    np.testing.assert_array_equal(table["x0"].to_numpy(), np.array(from_columns["filled"]["x0"]))


def test_forecast_through_the_service(client):
    _, records = gappy_records()
    answer = client.post("/impute", json={"data": records, "horizon": 3, "n_samples": 3, "steps": 2})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["rows"] == 27 and body["filled"]["date"][-1] == "2021-01-02T02:00:00"
    assert all(v is not None for v in body["filled"]["x0"])


def test_forecast_of_a_daily_series_missing_a_day_through_the_service(client):
    """Text dates with one day missing: the future continues the days, and the answer says a stamp
    was missing; as CSV the same note comes in a header."""
    days = pd.date_range("2020-03-01", periods=20, freq="D").delete(9).strftime("%Y-%m-%d")
    rng = np.random.default_rng(1)
    data = {"date": list(days), "x0": rng.normal(size=19).tolist(), "x1": (10 + rng.normal(size=19)).tolist()}
    answer = client.post("/impute", json={"data": data, "horizon": 2, "n_samples": 2, "steps": 2})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["filled"]["date"][-3:] == ["2020-03-20T00:00:00", "2020-03-21T00:00:00", "2020-03-22T00:00:00"]
    assert len(body["warnings"]) == 1 and "1 time stamps are missing from its regular grid" in body["warnings"][0]
    csv = pd.DataFrame(data).to_csv(index=False)
    answer = client.post(
        "/impute?horizon=2&n_samples=2&steps=2",
        content=csv,
        headers={"content-type": "text/csv", "accept": "text/csv"},
    )
    assert answer.status_code == 200 and "1 time stamps are missing" in answer.headers["x-warnings"]
    assert pd.read_csv(io.StringIO(answer.text))["date"].iloc[-1].startswith("2020-03-22")
    regular = client.post("/impute", json={"data": gappy_records()[1], "n_samples": 2, "steps": 2})
    assert regular.json()["warnings"] == []


@pytest.mark.parametrize(
    ("request_kwargs", "status", "message"),
    [
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "invalid JSON"),
        ({"json": [1, 2]}, 422, '"data"'),
        ({"json": {"data": 5}}, 422, "not a table"),
        ({"json": {"data": []}}, 422, "no rows"),
        ({"json": {"data": {"x0": [1.0, 2.0], "x1": [1.0]}}}, 422, "not a table"),
        ({"json": {"data": [{"x0": 1.0, "x1": "high"}]}}, 422, "not a number"),
        ({"json": {"data": [{"x0": 1.0, "x1": True}]}}, 422, "not a number"),
        ({"json": {"data": [{"x0": 1.0, "x2": 1.0, "x3": 2.0}]}}, 422, "differ from the model"),
        ({"json": {"data": [{"x0": 1.0, "x1": 2.0}], "n_samples": MAX_SAMPLES + 1}}, 422, "n_samples"),
        ({"json": {"data": [{"x0": 1.0, "x1": 2.0}], "n_samples": "many"}}, 422, "n_samples"),
        ({"json": {"data": [{"x0": 1.0, "x1": 2.0}], "steps": 1000}}, 422, "steps"),
        ({"json": {"data": [{"x0": 1.0, "x1": 2.0}], "quantiles": [2]}}, 422, "quantiles"),
        ({"json": {"data": [{"x0": 1.0, "x1": 2.0}], "sampler": "magic"}}, 422, "unknown sampler"),
        ({"json": {"data": [{"x0": 1.0, "x1": 2.0}], "samples": 3}}, 422, "unknown options"),
        (
            {"json": {"data": [{"t": 1, "x0": 1.0, "x1": 2.0}, {"t": 1, "x0": 1.0, "x1": 2.0}]}},
            422,
            "duplicate",
        ),
        ({"content": b"x0,x1\n1,2", "headers": {"content-type": "application/xml"}}, 415, "content type"),
        ({"content": b"\xff\xfe\x00bad", "headers": {"content-type": "text/csv"}}, 400, "invalid CSV"),
        (
            {"content": b"date;x0;x1\n2021-01-01;1,5;2,5\n", "headers": {"content-type": "text/csv"}},
            400,
            "the CSV body looks ';'-separated",
        ),
        (
            {"json": {"data": [{"x0": 1.0, "x1": 1e300}, {"x0": 2.0, "x1": 1.0}]}},
            422,
            "column 'x1' holds 1e+300 at row 0",
        ),
        (
            {
                "json": {
                    "data": {"date": ["2021-01-01", "2021-01-02", "2021-01-02 07:00"], "x0": [1, 2, 3], "x1": [1, 2, 3]}
                }
            },
            422,
            "not on one regular grid",
        ),
    ],
)
def test_bad_requests_get_a_clear_4xx(client, request_kwargs, status, message):
    answer = client.post("/impute", **request_kwargs)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["detail"]


def test_request_size_limit(client):
    big = {"data": [{"x0": 1.0, "x1": 2.0}] * 2000}
    answer = client.post("/impute", json=big)
    assert answer.status_code == 413 and str(MAX_BYTES) in answer.json()["detail"]

    def chunks():  # no Content-Length: the limit is enforced while reading
        body = json.dumps(big).encode()
        for i in range(0, len(body), 4096):
            yield body[i : i + 4096]

    streamed = client.post("/impute", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert client.get("/health").status_code == 200  # the server is still serving


def test_cli_defaults_to_loopback():
    args = build_parser().parse_args(["--model", "m.ckpt"])
    assert args.host == "127.0.0.1" and args.port == 8000 and args.max_bytes == 5_000_000


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--model", "missing.ckpt"], "checkpoint missing.ckpt does not exist"),
        (["--model", "empty.ckpt"], "checkpoint empty.ckpt is an empty file"),
        (["--model", "m.ckpt", "--port", "70000"], "argument --port: expected a port in"),
        (["--model", "m.ckpt", "--max-samples", "0"], "argument --max-samples: expected an integer >= 1"),
        (["--model", "m.ckpt", "--log-level", "loud"], "argument --log-level: invalid choice"),
        (["--port", "8000"], "the following arguments are required: --model"),
    ],
)
def test_cli_errors_are_one_line_with_exit_2(tmp_path, monkeypatch, capsys, arguments, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err


def test_cli_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    text = capsys.readouterr().out
    assert exit_info.value.code == 0 and "POST /impute" in text
    for action in build_parser()._actions:
        assert action.help and all(flag in text for flag in action.option_strings), action.dest


@pytest.mark.slow
def test_command_line_server_starts_answers_and_stops(imputer, tmp_path):
    model = imputer.save(tmp_path / "model.ckpt")
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "toolkit.serve",
            "--model",
            str(model),
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read().decode()
            assert time.monotonic() < deadline, "the server did not start in time"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        _, records = gappy_records(12)
        answer = httpx.post(f"http://127.0.0.1:{port}/impute", json={"data": records, "n_samples": 2}, timeout=TIMEOUT)
        assert answer.status_code == 200, answer.text
        assert answer.json()["rows"] == 12
    finally:
        process.terminate()
        process.wait(timeout=30)
