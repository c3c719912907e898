"""The traffic simulator: local-only, bounded, paced, with drift injection arguments that say what is wrong."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from nbs_lib.config import UserInputError
from src.monitoring import simulate


def recording_client(status: int = 200) -> tuple[httpx.Client, list[httpx.Request]]:
    """An httpx client whose requests never leave the process; returns it and the requests it got."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/ready":
            return httpx.Response(200, json={"status": "ready"})
        n = len(json.loads(request.content).get("records", [None]))
        return httpx.Response(status, json={"predictions": [{"prediction": "x"}] * n} if n > 1 else {"prediction": "x"})

    return httpx.Client(base_url="http://127.0.0.1:8000", transport=httpx.MockTransport(handle)), seen


@pytest.mark.parametrize("url, message", [
    ("http://example.com:8000", "only sends traffic to a local API (127.0.0.1 or localhost), not to 'example.com'"),
    ("http://10.0.0.5:8000", "not to '10.0.0.5'"),
    ("ftp://localhost/", "is not an http(s) URL"),
    ("localhost:8000", "is not an http(s) URL"),
])
def test_simulator_refuses_urls_that_are_not_a_local_api(url, message, capsys):
    client, seen = recording_client()
    assert simulate.main(["--url", url, "--rows", "5"], client=client) == 2
    assert message in capsys.readouterr().err
    assert seen == []


@pytest.mark.parametrize("args, message", [
    (["--rows", "0"], "ROWS=0: send between 1 and 100000 rows."),
    (["--rows", "100001"], "ROWS=100001: send between 1 and 100000 rows."),
    (["--rate", "0"], "RATE=0.0: use a rate above 0 and at most 2000 rows/s."),
    (["--rate", "5000"], "RATE=5000.0: use a rate above 0 and at most 2000 rows/s."),
    (["--batch", "0"], "BATCH=0: use 1 to 1000 rows per request."),
    (["--shift", "Gender=1"], "Cannot shift 'Gender': it is not a numeric feature of 'obesity'"),
    (["--shift", "Weight=lots"], "SHIFT item 'Weight=lots' is not column=number"),
    (["--mix", "MTRANS=Rocket:1"], "Bad level mix for 'MTRANS'"),
    (["--mix", "MTRANS=Walking"], "MIX 'MTRANS=Walking' is not column=level:weight"),
])
def test_simulator_rejects_unbounded_or_malformed_runs_before_sending(args, message, capsys):
    client, seen = recording_client()
    assert simulate.main(args, client=client) == 2
    assert message in capsys.readouterr().err
    assert seen == []


def test_shift_and_mix_arguments_parse_to_the_drift_to_inject():
    assert simulate.parse_shift("Weight=1.5, Age=-0.5") == {"Weight": 1.5, "Age": -0.5}
    assert simulate.parse_shift("") == {}
    assert simulate.parse_mix("MTRANS=Automobile:0.7,Walking:0.3;CALC=no:1") == {
        "MTRANS": {"Automobile": 0.7, "Walking": 0.3}, "CALC": {"no": 1.0}}
    with pytest.raises(UserInputError, match="the shift must be a finite number"):
        simulate.parse_shift("Weight=inf")


def test_replay_paces_rows_at_the_rate_and_counts_statuses():
    client, seen = recording_client(status=422)
    now = [100.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(round(s, 9))
        now[0] += s

    rows = [{"Age": i} for i in range(10)]
    result = simulate.replay(client, rows, rate=20, batch=2, clock=lambda: now[0], sleep=sleep)
    assert slept == [0.1] * 4                 # batches of 2 at 20 rows/s: one every 0.1 s
    assert [r.url.path for r in seen] == ["/predict/batch"] * 5
    assert (result.sent, dict(result.statuses), result.ok) == (10, {422: 5}, False)
    assert result.first_problem.startswith("HTTP 422: ")


def test_simulator_sends_drifted_records_with_only_the_spec_features(capsys):
    client, seen = recording_client()
    assert simulate.main(["--rows", "40", "--rate", "2000", "--shift", "Weight=2", "--mix", "MTRANS=Walking:1"], client=client) == 0
    bodies = [json.loads(r.content) for r in seen if r.url.path == "/predict"]
    assert len(bodies) == 40
    assert {b["MTRANS"] for b in bodies} == {"Walking"}
    assert all(list(b) == list(simulate.load_spec("obesity").features) for b in bodies)   # no id, no target
    assert "sent 40 rows" in capsys.readouterr().out


def test_simulator_says_how_to_start_the_api_when_none_answers(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]            # closed again when the block ends: nothing listens there
    assert simulate.main(["--url", f"http://127.0.0.1:{port}", "--rows", "3"]) == 2
    assert f"No API answers at http://127.0.0.1:{port} (ConnectError). Start it with `make serve`" in capsys.readouterr().err
