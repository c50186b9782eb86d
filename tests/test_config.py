"""Settings: built once from defaults → .env → environment → overrides; bad values stop startup."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from limits import parse

from kimi_backend import create_app
from kimi_backend.config import load_settings, read_environment
from kimi_backend.config.parsers import ConfigError
from tests.helpers import ROOT, free_port
from tests.servers import Service, clean_env


def test_defaults_match_the_original_service():
    settings = load_settings({"KIMI_API_KEY": "sk-x"})
    assert settings.port == 3000
    assert settings.env == "development"
    assert settings.base_url == "https://api.moonshot.cn/v1"
    assert (settings.rate_limit_window_ms, settings.rate_limit_max_requests) == (900000, 100)
    assert settings.rate_limit_window_s == 900
    assert settings.require_api_key is False and settings.offline is False


def test_original_env_file_works_unchanged(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("KIMI_API_KEY=sk-from-dotenv\nKIMI_BASE_URL=https://api.moonshot.ai/v1\nPORT=8080\n"
                        "NODE_ENV=production\nRATE_LIMIT_WINDOW_MS=60000\nRATE_LIMIT_MAX_REQUESTS=5\n"
                        "REQUIRE_API_KEY=true\nVALID_API_KEYS=k1,k2\nALLOWED_ORIGINS=https://a.example,https://b.example\n")
    settings = load_settings(read_environment({}, str(env_file)))
    assert settings.api_key == "sk-from-dotenv" and settings.base_url == "https://api.moonshot.ai/v1"
    assert settings.port == 8080 and settings.production
    assert (settings.rate_limit_max_requests, settings.rate_limit_window_s) == (5, 60)
    assert settings.require_api_key and settings.valid_api_keys == ("k1", "k2")
    assert settings.allowed_origins == ("https://a.example", "https://b.example")


def test_environment_wins_over_dotenv_and_overrides_win_over_both(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("PORT=1111\nDEFAULT_MODEL=moonshot-v1-32k\n")
    merged = read_environment({"PORT": "2222", "KIMI_API_KEY": "sk-x"}, str(env_file))
    assert load_settings(merged).port == 2222
    assert load_settings(merged).default_model == "moonshot-v1-32k"
    assert load_settings(merged, {"PORT": "3333"}).port == 3333


def test_app_env_wins_over_node_env():
    assert load_settings({"NODE_ENV": "production", "APP_ENV": "development"}).env == "development"
    assert load_settings({"NODE_ENV": "development", "APP_ENV": "production", "KIMI_API_KEY": "sk-x"}).production


@pytest.mark.parametrize("name,value", [
    ("RATE_LIMIT_WINDOW_MS", "fifteen minutes"), ("RATE_LIMIT_WINDOW_MS", "0"), ("RATE_LIMIT_MAX_REQUESTS", "-1"),
    ("PORT", "99999"), ("PORT", "http"), ("NODE_ENV", "staging"), ("APP_ENV", "prod"),
    ("REQUIRE_API_KEY", "maybe"), ("KIMI_BASE_URL", "api.moonshot.cn"), ("UPSTREAM_READ_TIMEOUT_S", "0"),
    ("UPSTREAM_CONNECT_TIMEOUT_S", "nan"), ("UPSTREAM_MAX_RETRIES", "50"), ("LOG_LEVEL", "loud"),
    ("TRUSTED_PROXY_COUNT", "-1"), ("MAX_BODY_BYTES", "10"), ("KIMI_OFFLINE", "perhaps"),
    ("REQUEST_BODY_TIMEOUT_S", "0"), ("REQUEST_BODY_TIMEOUT_S", "inf"), ("MAX_CONNECTIONS_PER_IP", "-1"),
    ("MAX_CONNECTIONS_PER_IP", "many"), ("UPSTREAM_MAX_REPLY_BYTES", "100"), ("UPSTREAM_MAX_LINE_BYTES", "1e6"),
])
def test_bad_values_name_the_variable(name, value):
    with pytest.raises(ConfigError) as caught:
        load_settings({"KIMI_API_KEY": "sk-x", name: value})
    assert str(caught.value).startswith(name)


def test_require_api_key_without_keys_is_refused():
    with pytest.raises(ConfigError, match="REQUIRE_API_KEY"):
        load_settings({"KIMI_API_KEY": "sk-x", "REQUIRE_API_KEY": "true"})


def test_production_without_key_is_refused_unless_offline():
    with pytest.raises(ConfigError, match="KIMI_API_KEY"):
        load_settings({"NODE_ENV": "production"})
    assert load_settings({"NODE_ENV": "production", "KIMI_OFFLINE": "1"}).offline


def test_development_without_key_runs_offline():
    assert load_settings({}).offline is True


def test_keys_from_files(tmp_path):
    (tmp_path / "upstream").write_text("sk-from-file\n")
    (tmp_path / "clients").write_text("alpha\nbeta\n")
    settings = load_settings({"KIMI_API_KEY_FILE": str(tmp_path / "upstream"), "REQUIRE_API_KEY": "true",
                              "VALID_API_KEYS_FILE": str(tmp_path / "clients"), "VALID_API_KEYS": "gamma"})
    assert settings.api_key == "sk-from-file"
    assert settings.valid_api_keys == ("gamma", "alpha", "beta")


def test_unreadable_key_file_names_the_variable(tmp_path):
    with pytest.raises(ConfigError, match="KIMI_API_KEY_FILE"):
        load_settings({"KIMI_API_KEY_FILE": str(tmp_path / "missing")})


@pytest.mark.parametrize("key", ["sk-one\nX-Injected: yes", "sk-one\rtwo", "sk one", "sk-ключ", "sk-\x00"])
def test_a_moonshot_key_that_cannot_be_a_header_value_is_refused(tmp_path, key):
    """The key is written into the upstream request's Authorization header as it is."""
    with pytest.raises(ConfigError, match="KIMI_API_KEY holds") as refused:
        load_settings({"KIMI_API_KEY": key})
    assert key not in str(refused.value)
    (tmp_path / "upstream").write_text(key + "\n")
    with pytest.raises(ConfigError, match="KIMI_API_KEY holds"):
        load_settings({"KIMI_API_KEY_FILE": str(tmp_path / "upstream")})


def test_settings_repr_hides_keys():
    settings = load_settings({"KIMI_API_KEY": "sk-very-secret", "VALID_API_KEYS": "client-secret"})
    assert "sk-very-secret" not in repr(settings) and "client-secret" not in repr(settings)


def test_the_rate_limit_is_counted_as_flask_limiter_would_parse_it():
    # The same item, and so the same storage keys, as the "100 per 900 second" string gave.
    assert create_app({"KIMI_API_KEY": "sk-x"}).config["API_RATE_LIMIT"] == parse("100 per 900 second")
    assert create_app({"KIMI_API_KEY": "sk-x", "RATE_LIMIT_WINDOW_MS": "1"}).config["API_RATE_LIMIT"] == parse("100 per 1 second")


def test_gunicorn_settings_keep_their_defaults():
    settings = load_settings({})
    # One worker per CPU this process may use (issue 15: every core by default).
    assert (settings.host, settings.worker_class, settings.web_concurrency) == ("0.0.0.0", "gevent", len(os.sched_getaffinity(0)))
    assert load_settings({"WEB_CONCURRENCY": "1"}).web_concurrency == 1
    assert (settings.worker_connections, settings.gunicorn_threads, settings.graceful_timeout_s) == (2000, 32, 30)
    assert settings.pool_size == 2000
    assert load_settings({"WORKER_CLASS": "gthread", "GUNICORN_THREADS": "4"}).pool_size == 4


def test_create_app_refuses_bad_config():
    with pytest.raises(ConfigError, match="RATE_LIMIT_WINDOW_MS"):
        create_app({"KIMI_API_KEY": "sk-x", "RATE_LIMIT_WINDOW_MS": "soon"})


SERVE = (sys.executable, "serve.py")  # as `make run`, the Dockerfile and the systemd unit start it
GUNICORN = (sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app")


def _start(extra_env: dict, *command: str) -> subprocess.CompletedProcess:
    env = clean_env(PORT=str(free_port()), **extra_env)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("extra_env,variable", [
    ({"NODE_ENV": "production"}, "KIMI_API_KEY"),
    ({"RATE_LIMIT_WINDOW_MS": "abc"}, "RATE_LIMIT_WINDOW_MS"),
    ({"NODE_ENV": "prod"}, "NODE_ENV"),
    ({"REQUIRE_API_KEY": "true"}, "REQUIRE_API_KEY"),
    ({"MAX_CONNECTIONS_PER_IP": "lots"}, "MAX_CONNECTIONS_PER_IP"),
    ({"WORKER_CLASS": "sync"}, "WORKER_CLASS"),
    ({"WORKER_CONNECTIONS": "0"}, "WORKER_CONNECTIONS"),
    ({"GUNICORN_THREADS": "many"}, "GUNICORN_THREADS"),
    ({"GRACEFUL_TIMEOUT_S": "2.5"}, "GRACEFUL_TIMEOUT_S"),
])
@pytest.mark.parametrize("command", [SERVE, GUNICORN], ids=["serve.py", "gunicorn"])
def test_gunicorn_refuses_to_start_with_one_sentence(extra_env, variable, command):
    result = _start(extra_env, *command)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("kimi-backend: configuration error:") and variable in last_line


@pytest.mark.parametrize("value,sentence", [
    ("abc", "WEB_CONCURRENCY must be a whole number, got 'abc'."),
    ("0", "WEB_CONCURRENCY must be at least 1, got 0."),
])
@pytest.mark.parametrize("command", [SERVE, GUNICORN], ids=["serve.py", "gunicorn"])
def test_gunicorn_refuses_a_bad_worker_count_in_one_sentence(tmp_path, value, sentence, command):
    # From .env, which gunicorn.conf.py reads: gunicorn itself never sees it.
    (tmp_path / ".env").write_text(f"WEB_CONCURRENCY={value}\n")
    result = _start({"DOTENV_PATH": str(tmp_path / ".env")}, *command)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"kimi-backend: configuration error: {sentence}"


@pytest.mark.parametrize("value,sentence", [
    ("abc", "WEB_CONCURRENCY must be a whole number, got 'abc'."),
    ("2.5", "WEB_CONCURRENCY must be a whole number, got '2.5'."),
])
def test_serve_refuses_a_bad_worker_count_from_the_environment_in_one_sentence(value, sentence):
    # From the process environment (a systemd EnvironmentFile, `docker run --env-file`), gunicorn
    # reads it with a bare int() as it is imported, before gunicorn.conf.py runs: started
    # directly, it stops with a traceback. serve.py checks the settings first.
    result = _start({"WEB_CONCURRENCY": value}, *SERVE)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"kimi-backend: configuration error: {sentence}"]


def test_serve_becomes_gunicorn_with_the_environment_it_was_given(tmp_path):
    # exec, not a child: systemd (Type=notify, NotifyAccess=main) and Docker signal and hear
    # from the process they started. `.env` stays gunicorn.conf.py's to read: a gunicorn setting
    # there (GUNICORN_CMD_ARGS) reaches gunicorn no more than it did when started directly.
    (tmp_path / ".env").write_text("GUNICORN_CMD_ARGS=--workers 3\n")
    service = Service(WEB_CONCURRENCY="1", DOTENV_PATH=str(tmp_path / ".env"))  # started with serve.py
    try:
        pid = service.proc.pid
        assert b"gunicorn" in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert len(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()) == 1
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"WEB_CONCURRENCY=1" in environ
        assert not any(item.startswith(b"GUNICORN_CMD_ARGS=") for item in environ)
    finally:
        assert service.stop() == 0


def test_gunicorn_master_imports_only_the_config_package():
    # gunicorn.conf.py runs in the master: Flask, requests or urllib3 imported there would come
    # before gevent patches the workers and break its ssl patching.
    probe = ("import runpy, sys; runpy.run_path('gunicorn.conf.py'); "
             "print(' '.join(sorted(name for name in sys.modules if name.split('.')[0] in "
             "('flask', 'requests', 'urllib3', 'kimi_backend', 'prometheus_client'))))")
    assert _probe(probe).strip() == ""


def test_each_worker_freezes_what_loading_the_app_made():
    # The garbage collector's full passes then walk only what requests made, not the ~80,000
    # objects of the loaded app, which live as long as the worker.
    probe = ("import gc, runpy; hooks = runpy.run_path('gunicorn.conf.py'); import wsgi; "
             "before = gc.get_freeze_count(); hooks['post_worker_init'](None); "
             "print(before, gc.get_freeze_count())")
    before, after = map(int, _probe(probe).split())
    assert before == 0 and after > 10_000


def _probe(code: str) -> str:
    """Runs `code` in a fresh interpreter in the repository, as gunicorn would start there;
    returns what it printed."""
    result = _start({}, sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_allowed_hosts_are_host_names_lowercased_and_unset_by_default():
    assert load_settings({}).allowed_hosts is None
    assert load_settings({"ALLOWED_HOSTS": ""}).allowed_hosts is None
    assert load_settings({"ALLOWED_HOSTS": "API.example.com, .corp.example"}).allowed_hosts == ("api.example.com", ".corp.example")


@pytest.mark.parametrize("value", ["*", "https://api.example.com", "api.example.com:3000", "api.example.com/", "10.0.0.7",
                                   "::1", "[::1]", ".", "a..example", "-a.example", " , "])
def test_allowed_hosts_refuses_what_is_not_a_host_name_in_one_sentence(value):
    with pytest.raises(ConfigError, match=r"^ALLOWED_HOSTS (entries must be host names|is empty)"):
        load_settings({"ALLOWED_HOSTS": value})
