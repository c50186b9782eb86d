"""Several workers with the default `memory://` storage under the real gunicorn: every core by
default, the rate limit and the daily budgets exact across two workers (one host-shared
store, kimi_backend/shared_counts.py), that store's directory removed on a graceful stop,
and a bad store location stopping startup in one sentence."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest
import requests

from kimi_backend.config import usable_cpus
from kimi_backend.config.parsers import key_id
from tests.conftest import UPSTREAM_KEY
from tests.helpers import LONG_WINDOW_MS, ROOT, free_port, json_lines, wait_until
from tests.servers import Service, clean_env, fetch_all

KEY = "shared-counts-key"


@pytest.fixture
def runtime_dir(tmp_path):
    """A private runtime directory (as systemd's RuntimeDirectory= gives), where the master
    puts the workers' shared counts."""
    path = tmp_path / "runtime"
    path.mkdir(mode=0o700)
    return path


def counts_dirs(runtime_dir) -> list:
    return sorted(runtime_dir.glob("kimi-backend-counts-*"))


def worker_pids(service: Service, route: str) -> set[int]:
    """The workers that wrote an access line for `route`."""
    lines = json_lines(service.log())
    return {line["pid"] for line in lines if line.get("route") == route and line.get("status") in (200, 429)}


def test_the_default_is_one_worker_per_usable_cpu(served):
    service = served(KIMI_OFFLINE="1")
    assert service.log().count("Booting worker") == usable_cpus()


def test_the_rate_limit_is_exact_across_two_workers(served, runtime_dir):
    service = served(KIMI_OFFLINE="1", WEB_CONCURRENCY="2", RATE_LIMIT_MAX_REQUESTS="60",
                     RATE_LIMIT_WINDOW_MS=LONG_WINDOW_MS, RUNTIME_DIRECTORY=str(runtime_dir))
    # Both workers answering before anything is counted: on a busy machine the second may still
    # be loading the app while the first takes every request of the rate limit.
    wait_until(lambda: fetch_all([service.url + "/health"] * 12) and len(worker_pids(service, "/health")) == 2,
               timeout=60, message="both workers answering /health")
    url = service.url + "/api/chat/models"
    responses = []
    # Concurrent batches, each request on its own connection, until both workers have counted.
    while len(worker_pids(service, "/api/chat/models")) < 2 and len(responses) < 60:
        responses += fetch_all([url] * 12)
    assert len(worker_pids(service, "/api/chat/models")) == 2, "both workers should have answered"
    responses += fetch_all([url] * (96 - len(responses)))
    assert sorted(r.status_code for r in responses) == [200] * 60 + [429] * 36
    refused = [r for r in responses if r.status_code == 429]
    assert {r.json()["code"] for r in refused} == {"rate_limited"}
    assert all(1 <= int(r.headers["Retry-After"]) <= 3600 for r in refused)
    assert len(counts_dirs(runtime_dir)) == 1


def test_daily_budgets_are_exact_across_two_workers(served, runtime_dir, simulator_server, simulator):
    service = served(KIMI_API_KEY=UPSTREAM_KEY, KIMI_BASE_URL=simulator_server.base_url, VALID_API_KEYS=KEY,
                     RATE_LIMIT_MAX_REQUESTS="10000", TOKEN_BUDGET_PER_DAY="1000", WEB_CONCURRENCY="2",
                     RUNTIME_DIRECTORY=str(runtime_dir))

    def chat(_=None) -> requests.Response:
        return requests.post(service.url + "/api/chat/completion", json={"message": "hi", "thinking": False,
                             "max_tokens": 20}, headers={"x-api-key": KEY}, timeout=10)

    # Both workers answering first, as for the rate limit above: a fresh clone's CI on a slow VM
    # saw the second still loading the app while the first served all 60 requests below.
    wait_until(lambda: fetch_all([service.url + "/health"] * 12) and len(worker_pids(service, "/health")) == 2,
               timeout=60, message="both workers answering /health")
    # Each request reserves 25 and costs 12. Concurrent batches until both workers have
    # charged the budget (reservations in flight may refuse some early)...
    statuses: list[int] = []
    with ThreadPoolExecutor(max_workers=12) as pool:
        while len(worker_pids(service, "/api/chat/completion")) < 2 and len(statuses) < 60:
            statuses += [r.status_code for r in pool.map(chat, range(12))]
    assert len(worker_pids(service, "/api/chat/completion")) == 2, "both workers should have answered"
    assert set(statuses) <= {200, 429}
    # ...then one at a time until the next 25 no longer fit: exactly 82 x 12 = 984 of 1000 used.
    while (response := chat()).status_code == 200:
        statuses.append(200)
    assert response.json()["code"] == "token_budget_exceeded"
    assert statuses.count(200) == 82
    day = datetime.now(timezone.utc).date().isoformat()
    with sqlite3.connect(counts_dirs(runtime_dir)[0] / "counts.sqlite3") as store:
        (count,) = store.execute("SELECT value FROM counts WHERE key = ?",
                                 (f"kimi:budget:{day}:client:key:{key_id(KEY)}",)).fetchone()
    assert count == 82 * 12


def test_the_shared_counts_are_removed_on_a_graceful_stop(runtime_dir):
    service = Service(KIMI_OFFLINE="1", WEB_CONCURRENCY="2", RUNTIME_DIRECTORY=str(runtime_dir))
    try:
        (directory,) = counts_dirs(runtime_dir)
        assert (directory / "counts.sqlite3").exists()
        assert directory.stat().st_mode & 0o777 == 0o700
        assert f"2 workers share their limit counts in {directory}" in service.log()
    finally:
        assert service.stop() == 0
    assert counts_dirs(runtime_dir) == []


def test_one_worker_keeps_counting_in_memory(served, runtime_dir):
    served(KIMI_OFFLINE="1", WEB_CONCURRENCY="1", RUNTIME_DIRECTORY=str(runtime_dir))
    assert counts_dirs(runtime_dir) == []


def test_a_bad_store_location_stops_startup_in_one_sentence(tmp_path):
    env = clean_env(PORT=str(free_port()), KIMI_OFFLINE="1", WEB_CONCURRENCY="2",
                    RATE_LIMIT_STORAGE_URI=f"sqlite://{tmp_path}/missing/counts.sqlite3")
    result = subprocess.run([sys.executable, "serve.py"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    # Each worker says why in one sentence; gunicorn's master then stops ("App failed to load").
    assert (f"kimi-backend: configuration error: RATE_LIMIT_STORAGE_URI: the shared counts database "
            f"{tmp_path}/missing/counts.sqlite3 cannot be opened (unable to open database file).\n") in result.stderr


def test_workers_failing_to_boot_stop_gunicorn_cleanly_and_remove_the_counts(runtime_dir):
    # Both workers find the same configuration error; the master stops once, without a
    # traceback, and still removes the directory it made.
    env = clean_env(PORT=str(free_port()), KIMI_OFFLINE="1", WEB_CONCURRENCY="2", RUNTIME_DIRECTORY=str(runtime_dir),
                    USAGE_DATABASE_URL=f"sqlite:///{runtime_dir}/missing/usage.sqlite3")
    result = subprocess.run([sys.executable, "serve.py"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 4
    assert "Traceback" not in result.stderr
    assert "kimi-backend: configuration error: USAGE_DATABASE_URL" in result.stderr
    assert counts_dirs(runtime_dir) == []


def test_no_place_for_the_shared_counts_stops_startup_in_one_sentence(tmp_path):
    not_a_directory = tmp_path / "runtime"
    not_a_directory.write_text("")
    not_a_directory.chmod(0o755)
    env = clean_env(PORT=str(free_port()), KIMI_OFFLINE="1", WEB_CONCURRENCY="2",
                    RUNTIME_DIRECTORY=str(not_a_directory))
    result = subprocess.run([sys.executable, "serve.py"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "kimi-backend: configuration error: RATE_LIMIT_STORAGE_URI is memory:// with 2 workers, and no directory "
        "for their shared counts could be created (Not a directory).")
