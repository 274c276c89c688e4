"""What `tlpipe doctor` and the pre-run check say about a server's authentication, from the answers
it gave to a protected request without and with this client's credentials."""

import pytest

from flows.doctor import basic, is_loopback, judge_auth


@pytest.mark.parametrize("anonymous, ours, have, loopback, ok, words, warned", [
    (401, 200, True, False, True, "this client's are accepted", False),
    (401, None, False, True, False, "none are set: set MLFLOW_TRACKING_USERNAME", False),
    (401, 401, True, False, False, "refused this client's credentials (HTTP 401)", False),
    (403, 403, True, True, False, "refused this client's credentials (HTTP 403)", False),
    (200, None, False, True, None, "loopback only", False),
    (200, 200, True, False, None, "no authentication", True),  # open to the network: a warning, not a failure
    (None, None, False, False, None, "does not answer", False),
])
def test_auth_is_judged_from_what_the_server_answered(anonymous, ours, have, loopback, ok, words, warned):
    row = judge_auth("mlflow", "http://team:5000", anonymous, ours, have, loopback)
    assert row["component"] == "mlflow auth" and row["ok"] is ok and words in row["detail"]
    assert bool(row["warning"]) is warned
    if warned:
        assert "anyone who can reach it" in row["warning"]


def test_prefect_names_its_own_setting():
    row = judge_auth("prefect", "http://team:4200/api", 401, None, False, False)
    assert "PREFECT_API_AUTH_STRING=<user>:<password>" in row["detail"]


def test_loopback_and_basic_header():
    assert is_loopback("http://127.0.0.1:4200/api") and is_loopback("http://localhost:5000")
    assert not is_loopback("http://192.0.2.10:5000") and not is_loopback("http://no-such-host.invalid:1")
    assert basic("team:secret") == "Basic dGVhbTpzZWNyZXQ="
