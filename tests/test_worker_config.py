"""kimi_backend/workers.py's SettledConfig: a worker reads the same settings as from
gunicorn's Config, each looked up once."""
from __future__ import annotations

from gunicorn import util
from gunicorn.config import Config
from gunicorn.http import wsgi

from kimi_backend.workers import SettledConfig, _ServiceWorkerMixin


def configured() -> Config:
    cfg = Config()
    cfg.set("limit_request_line", 1234)
    cfg.set("forwarded_allow_ips", "10.0.0.1")
    cfg.set("worker_class", "gevent")
    cfg.set("bind", ["127.0.0.1:9999"])
    return cfg


def test_every_setting_and_property_reads_as_from_gunicorns_config():
    cfg = configured()
    settled = SettledConfig(cfg)
    for name in cfg.settings:
        assert getattr(settled, name) == getattr(cfg, name), name
    assert settled.limit_request_line == 1234
    # Config's properties stay its own: `worker_class` is the class, not the setting's text.
    assert settled.worker_class is cfg.worker_class and settled.worker_class.__name__ == "GeventWorker"
    assert settled.address == cfg.address == [("127.0.0.1", 9999)]
    assert settled.forwarded_allow_networks() == cfg.forwarded_allow_networks()
    assert settled.is_ssl == cfg.is_ssl and not settled.is_ssl
    assert settled.settings is cfg.settings


def test_is_ssl_follows_the_certificate_settings():
    cfg = Config()
    cfg.set("certfile", "/etc/ssl/cert.pem")
    assert SettledConfig(cfg).is_ssl


def test_a_setting_is_not_looked_up_again_when_read(monkeypatch):
    settled = SettledConfig(configured())
    looked_up = []
    original = Config.__getattr__
    monkeypatch.setattr(Config, "__getattr__", lambda self, name: looked_up.append(name) or original(self, name))
    for _ in range(3):
        assert settled.limit_request_fields == 100 and settled.pre_request is not None
        assert settled.secure_scheme_headers == {"X-FORWARDED-PROTOCOL": "ssl", "X-FORWARDED-PROTO": "https",
                                                 "X-FORWARDED-SSL": "on"}
    assert looked_up == []


def test_the_service_workers_read_their_settings_from_it(monkeypatch):
    monkeypatch.setattr(wsgi, "Response", wsgi.Response)  # init_process installs the service's own
    monkeypatch.setattr(util, "write_error", util.write_error)

    class Base:
        cfg = configured()

        def init_process(self):
            self.cfg_at_start = self.cfg

    class Worker(_ServiceWorkerMixin, Base):
        pass

    worker = Worker()
    worker.init_process()
    assert isinstance(worker.cfg, SettledConfig) and worker.cfg_at_start is worker.cfg
    assert worker.cfg.limit_request_line == 1234
