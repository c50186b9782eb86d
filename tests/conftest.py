"""Fixtures: the Moonshot simulator over real HTTP on loopback, apps built per config
variant, and a suite-wide guard that the upstream key never leaks."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile

import pytest
from flask.testing import FlaskClient

from kimi_backend import create_app
from kimi_backend.moonshot.simulator import start_in_thread
from tests.browser import browser  # noqa: F401  (a fixture: the browser tests' Chromium)
from tests.servers import SETTING_VARIABLES, Service, SimulatorProcess

# The client key the SDK and test-page tests present to a service that requires one.
CLIENT_KEY = "frontend-test-client-key"

# A fake key, long and recognisable, so a leak anywhere is found by a plain substring search.
UPSTREAM_KEY = "sk-test-upstream-key-0123456789abcdefghijklmnopqrstuv"

# Settings a developer's shell or .env could set; tests start from a clean slate.
os.environ["DOTENV_PATH"] = ""
for _name in SETTING_VARIABLES:
    os.environ.pop(_name, None)

# The usage ledger of every test app that does not name its own: a temporary file, never one
# in the working directory.
SESSION_DB_DIR = tempfile.mkdtemp(prefix="kimi-test-usage-")

LEAKS: list[str] = []


@pytest.fixture(scope="session", autouse=True)
def session_usage_dir():
    """Removes SESSION_DB_DIR once the run is over."""
    yield
    shutil.rmtree(SESSION_DB_DIR, ignore_errors=True)


class LeakCheckingClient(FlaskClient):
    """A test client that records any response carrying the upstream key."""

    def open(self, *args, **kwargs):
        response = super().open(*args, **kwargs)
        if not response.is_streamed:
            if UPSTREAM_KEY in response.get_data(as_text=True):
                LEAKS.append(f"body of {response.request.path}")
        if UPSTREAM_KEY in str(response.headers):
            LEAKS.append(f"headers of {response.request.path}")
        return response


class _KeyLogGuard(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if UPSTREAM_KEY in record.getMessage() or (record.exc_text and UPSTREAM_KEY in record.exc_text):
            LEAKS.append(f"log line from {record.name}")


@pytest.fixture(autouse=True)
def no_key_leaks():
    """Fails any test during which the upstream key reached a response or a log line."""
    guard = _KeyLogGuard(level=logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(guard)
    LEAKS.clear()
    yield
    root.removeHandler(guard)
    assert not LEAKS, f"upstream key leaked: {LEAKS}"


@pytest.fixture(scope="session")
def simulator_server():
    """One simulator for the session, over real HTTP on loopback."""
    server = start_in_thread(api_key=UPSTREAM_KEY)
    yield server
    server.stop()


@pytest.fixture
def simulator(simulator_server):
    """The simulator, with stats and script queue reset for this test."""
    simulator_server.simulator.reset()
    return simulator_server.simulator


@pytest.fixture
def simulator_url(simulator_server, simulator) -> str:
    """The simulator's base URL (…/v1) for tests that speak to it directly, reset for this test."""
    return simulator_server.base_url


@pytest.fixture
def simulator_process():
    """Starts the simulator as its own process, on gevent's server as the benchmarks run it
    (keep-alive, hundreds of streams), with `simulator_process(api_key=...)`; stops every one
    afterwards. Most tests need only the in-process `simulator`."""
    started: list[SimulatorProcess] = []

    def start(api_key: str | None = None) -> SimulatorProcess:
        started.append(SimulatorProcess(api_key))
        return started[-1]
    yield start
    for upstream in started:
        upstream.stop()


def base_config(simulator_server, **overrides) -> dict:
    """The settings every test app starts from: live mode against the simulator."""
    config = {
        "KIMI_API_KEY": UPSTREAM_KEY,
        "KIMI_BASE_URL": simulator_server.base_url,
        "UPSTREAM_RETRY_BACKOFF_S": "0.01",
        "UPSTREAM_READ_TIMEOUT_S": "5",
        "UPSTREAM_COMPLETION_TIMEOUT_S": "5",
        "RATE_LIMIT_MAX_REQUESTS": "10000",
        "USAGE_DATABASE_URL": f"sqlite:///{SESSION_DB_DIR}/usage.sqlite3",
    }
    config.update(overrides)
    return config


def close_app(app) -> None:
    """Lets go of what an app holds open beyond its test: its usage ledger's database
    connections (kept alive by the ledger's exit hook, so every app built in this process
    would otherwise hold its descriptors to the end of the run) and, offline, its simulator."""
    ledger = app.extensions.get("usage_ledger")
    if ledger is not None:
        ledger.close()
    offline_simulator = app.extensions.get("simulator")
    if offline_simulator is not None:
        offline_simulator.stop()


@pytest.fixture
def make_app(simulator_server, simulator):
    """Builds an app for one config variant: `make_app(REQUIRE_API_KEY="true", ...)`; every
    app built is closed after the test."""
    built = []

    def build(**overrides):
        app = create_app(base_config(simulator_server, **overrides))
        app.test_client_class = LeakCheckingClient
        built.append(app)
        return app
    yield build
    for app in built:
        close_app(app)


@pytest.fixture
def token_app(make_app):
    """Builds an app with browser tokens and the admin key on (`token_app(**overrides)`), its
    token clock a `Clock` at T0 (tests/token_support.py)."""
    from tests.token_support import token_config, with_clock

    def build(**overrides):
        return with_clock(make_app(**token_config(**overrides)))
    return build


@pytest.fixture
def app(make_app):
    """The default app: live mode against the simulator."""
    return make_app()


@pytest.fixture
def client(app):
    """A test client for the default app."""
    return app.test_client()


@pytest.fixture
def served():
    """Starts the service under gunicorn with `served(**env)`; stops every one afterwards."""
    started: list[Service] = []

    def start(**env: str) -> Service:
        started.append(Service(**env))
        return started[-1]
    yield start
    for service in started:
        service.stop()


@pytest.fixture(scope="module")
def keyed_service():
    """The service under gunicorn (offline simulator) requiring CLIENT_KEY, as the SDK and the
    test page meet it. No upstream retries: the 429 cases want the simulator's Retry-After
    passed straight through."""
    service = Service(REQUIRE_API_KEY="true", VALID_API_KEYS=CLIENT_KEY, UPSTREAM_MAX_RETRIES="0",
                      RATE_LIMIT_MAX_REQUESTS="10000")
    yield service
    service.stop()


@pytest.fixture(scope="module")
def scripted_service(simulator_server):
    """The service under gunicorn with the session's simulator as its upstream (live mode, no
    client key), so that a test can script replies no `sim:` directive can spell (Markdown over
    many lines) with the `simulator` fixture's `script([...])`."""
    service = Service(KIMI_API_KEY=UPSTREAM_KEY, KIMI_BASE_URL=simulator_server.base_url, UPSTREAM_MAX_RETRIES="0",
                      RATE_LIMIT_MAX_REQUESTS="10000")
    yield service
    service.stop()
