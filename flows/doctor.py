"""`tlpipe doctor`: which backends this project is configured to use, and whether each one answers.

One check per backend; each returns a row {component, setting, ok, detail, warning}. `ok` is None
for a backend that is not set up (the local default is used instead), False for one that is
configured but unreachable or that refuses this client. `warning` says what is wrong with one that
works (a server anyone on the network can use without credentials).

Credentials come from where the tools themselves read them: Prefect's setting PREFECT_API_AUTH_STRING
(environment or profile) and MLflow's MLFLOW_TRACKING_USERNAME/PASSWORD (environment or
~/.mlflow/credentials) or MLFLOW_TRACKING_TOKEN.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

TIMEOUT_S = 3.0


def _row(component: str, setting: str, ok: bool | None, detail: str, warning: str = "") -> dict:
    return {"component": component, "setting": setting, "ok": ok, "detail": detail, "warning": warning}


def _answer(url: str, authorization: str | None = None) -> tuple[int | None, str]:
    """(HTTP status of a GET, or None when nothing answers; why not)."""
    request = urllib.request.Request(url, headers={"Authorization": authorization} if authorization else {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.status, ""
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
        return None, str(getattr(exc, "reason", exc))


def _status(url: str, authorization: str | None = None) -> int | None:
    return _answer(url, authorization)[0]


def basic(user_password: str) -> str:
    return "Basic " + base64.b64encode(user_password.encode()).decode("ascii")


def prefect_authorization() -> str | None:
    """The Authorization header Prefect's client sends: from PREFECT_API_AUTH_STRING (or a key)."""
    from prefect.settings import get_current_settings

    api = get_current_settings().api
    auth = api.auth_string.get_secret_value() if api.auth_string else None
    key = api.key.get_secret_value() if api.key else None
    return basic(auth) if auth else (f"Bearer {key}" if key else None)


def mlflow_authorization() -> str | None:
    """The Authorization header MLflow's client sends: basic from MLFLOW_TRACKING_USERNAME/PASSWORD
    (or ~/.mlflow/credentials), else a bearer MLFLOW_TRACKING_TOKEN."""
    from mlflow.utils.credentials import read_mlflow_creds

    creds = read_mlflow_creds()
    if creds.username and creds.password:
        return basic(f"{creds.username}:{creds.password}")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    return f"Bearer {token}" if token else None


def is_loopback(url: str) -> bool:
    """Whether the host of `url` is this machine's loopback (127.0.0.0/8, ::1, localhost)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
    except (OSError, ValueError):
        return False


CREDENTIALS = {  # what a member sets, per server kind
    "prefect": "PREFECT_API_AUTH_STRING=<user>:<password> (environment, or `prefect config set`)",
    "mlflow": "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (environment, or ~/.mlflow/credentials)",
}


def judge_auth(kind: str, url: str, anonymous: int | None, with_ours: int | None, have_credentials: bool,
               loopback: bool) -> dict:
    """The auth row of a server from what it answered to a protected request without credentials
    (`anonymous`) and with this client's (`with_ours`, None when it has none)."""
    component = f"{kind} auth"
    if anonymous is None:
        return _row(component, url, None, "not checked: the server does not answer")
    if anonymous in (401, 403):
        if not have_credentials:
            return _row(component, url, False, f"the server asks for credentials and none are set: set {CREDENTIALS[kind]}")
        if with_ours in (401, 403):
            return _row(component, url, False, f"the server refused this client's credentials (HTTP {with_ours}): "
                                                f"check {CREDENTIALS[kind]}")
        return _row(component, url, True, "asks for credentials; this client's are accepted")
    if loopback:
        return _row(component, url, None, "no authentication (loopback only: this machine's users)")
    return _row(component, url, None, "no authentication",
                warning=f"{url} answers without credentials: anyone who can reach it can read, change and delete "
                        "runs; start it with authentication (see README, Share runs with your team)")


def prefect_auth_row(api: str) -> dict:
    probe = api.rstrip("/") + "/version"  # /health answers everyone; /version needs the auth string
    ours = prefect_authorization()
    return judge_auth("prefect", api, _status(probe), _status(probe, ours) if ours else None, ours is not None,
                      is_loopback(api))


def mlflow_auth_row(uri: str) -> dict:
    probe = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    ours = mlflow_authorization()
    return judge_auth("mlflow", uri, _status(probe), _status(probe, ours) if ours else None, ours is not None,
                      is_loopback(uri))


def refused(project: Path) -> list[str]:
    """One line per configured server that will not let this client in (no or wrong credentials)."""
    from runner import tracking

    problems = []
    api, uri = os.environ.get("PREFECT_API_URL", ""), tracking.configure(project)
    for variable, url, row in (("PREFECT_API_URL", api, prefect_auth_row),
                               ("MLFLOW_TRACKING_URI", uri, mlflow_auth_row)):
        if url.startswith(("http://", "https://")):
            found = row(url)
            if found["ok"] is False:
                problems.append(f"{variable}={url}: {found['detail']}")
    return problems


def _get(url: str) -> tuple[bool, str]:
    status, reason = _answer(url)
    return status == 200, f"HTTP {status}" if status is not None else f"no answer ({reason})"


def check_prefect() -> list[dict]:
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return [_row("prefect", "temporary server per command", None,
                     "set PREFECT_API_URL to a `prefect server start` for schedules and shared runs")]
    ok, detail = _get(url.rstrip("/") + "/health")
    rows = [_row("prefect", url, ok, detail)]
    if ok:
        rows.append(auth := prefect_auth_row(url))
        if auth["ok"] is not False:
            rows.append(_work_pools())
    return rows


def _work_pools() -> dict:
    from prefect.client.orchestration import get_client

    from flows.deploy import POOLS

    with get_client(sync_client=True) as client:
        existing = {p.name for p in client.read_work_pools()}
        parts = [f"{name}: {sum(w.status == 'ONLINE' for w in client.read_workers_for_work_pool(name))} worker(s) online"
                 if name in existing else f"{name}: missing" for name in POOLS]
    complete = existing >= set(POOLS)
    return _row("prefect pools", ", ".join(POOLS), True if complete else None,
                "; ".join(parts) + ("" if complete else "  (tlpipe deploy creates them)"))


def check_mlflow(project: Path) -> list[dict]:
    from runner import tracking

    uri = tracking.configure(project)
    if uri.startswith(("http://", "https://")):
        ok, detail = _get(uri.rstrip("/") + "/health")
        rows = [_row("mlflow", uri, ok, detail)]
        if ok:
            rows.append(auth := mlflow_auth_row(uri))
            if auth["ok"] is not False:
                status = _status(uri.rstrip("/") + "/api/2.0/mlflow-artifacts/artifacts", mlflow_authorization())
                rows.append(_row("mlflow artifacts", "proxied by the server", status == 200,
                                 f"HTTP {status}" if status == 200 else "start the server with --serve-artifacts"))
        return rows
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        ok = folder.is_dir() and os.access(folder, os.W_OK)
        return [_row("mlflow", uri, None if ok else False, "local store (one machine)" if ok else f"{folder} not writable")]
    return [_row("mlflow", uri, None, "not checked")]


def check_dvc(project: Path) -> list[dict]:
    from dvc.repo import Repo

    from runner.dvc import default_remote

    name = default_remote(project)
    if name is None:
        return [_row("dvc remote", "none", None, "outputs stay in this clone; `dvc remote add -d` shares them")]
    try:
        with Repo(str(project)) as repo:
            odb = repo.cloud.get_remote_odb(name)
            found = odb.fs.exists(odb.path)
        return [_row("dvc remote", f"{name}: {odb.path}", True if found else None,
                     "reachable" if found else "does not exist yet (the first push creates it)")]
    except Exception as exc:  # any backend error (credentials, DNS, missing plugin) is the answer
        return [_row("dvc remote", name, False, f"{type(exc).__name__}: {exc}")]


def check_storage(project: Path) -> list[dict]:
    from runner.workspace import cache_location, store_root

    cache = cache_location(project)
    return [_folder_row("stage records", "TLPIPE_CACHE_DIR", cache) if isinstance(cache, Path)
            else _fsspec_row("stage records", cache),
            _folder_row("result store", "TLPIPE_STORE_DIR", store_root(project))]


def _folder_row(component: str, variable: str, path: Path) -> dict:
    shared = bool(os.environ.get(variable))
    folder = next(p for p in (path, *path.parents) if p.exists())  # the folder is created on first use
    writable = os.access(folder, os.W_OK)
    ok = writable if shared else (None if writable else False)
    return _row(component, str(path), ok, ("shared" if shared else f"in the project (set {variable} to share)")
                + ("" if writable else "; not writable"))


def _fsspec_row(component: str, url: str) -> dict:
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
        found = fs.exists(path)
        return _row(component, url, True, "shared" + ("" if found else "; created on first use"))
    except Exception as exc:  # a missing plugin (s3fs, gcsfs), credentials, DNS: all are the answer
        return _row(component, url, False, f"{type(exc).__name__}: {exc}")


def check_device() -> list[dict]:
    import torch

    from runner.keys import device_name

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [_row("device", device_name(), None if count == 0 else True,
                 f"{count} CUDA device(s)" if count else "no CUDA device: training runs on the CPU")]


def unreachable(project: Path) -> list[str]:
    """One line per backend a run is configured to use that does not answer, with what to do; each
    check gives up after a few seconds, so a dead server is reported at once, not after retries."""
    problems = []
    for variable, fallback in (("PREFECT_API_URL", "a temporary server is started"),
                               ("MLFLOW_TRACKING_URI", "the project's mlflow.db is used")):
        url = os.environ.get(variable, "")
        if url.startswith(("http://", "https://")):
            ok, detail = _get(url.rstrip("/") + "/health")
            if not ok:
                problems.append(f"{variable}={url}: {detail}; start that server, or unset {variable} ({fallback})")
    problems += refused(project)
    (remote,) = check_dvc(project)
    if remote["ok"] is False:
        problems.append(f"DVC remote {remote['setting']}: {remote['detail']}; fix it with `dvc remote modify` "
                        "or remove the default (`dvc remote default --unset`)")
    return problems


def diagnose(project: Path) -> list[dict]:
    """Every check, in the order a run meets the backends."""
    return [*check_prefect(), *check_mlflow(project), *check_dvc(project), *check_storage(project), *check_device()]
