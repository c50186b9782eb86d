"""Two ways to serve the simulator: werkzeug's threaded server in a daemon thread
(`start_in_thread`: the service offline, the tests) and gevent's pywsgi as its own process
(`main`, behind `python -m kimi_backend.moonshot.simulator`: the benchmarks)."""
from __future__ import annotations

import argparse
import socket
import threading

from ...system import raise_open_files_limit
from .app import Simulator


class SimulatorServer:
    """A simulator running on werkzeug's threaded server in a daemon thread."""

    def __init__(self, server, thread: threading.Thread, simulator: Simulator):
        self._server, self._thread, self.simulator = server, thread, simulator
        self.host, self.port = server.server_address[:2]
        self.base_url = f"http://{self.host}:{self.port}/v1"

    def stop(self) -> None:
        """Stops accepting, frees hung requests and closes the listening socket."""
        self.simulator.release_waiters()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_in_thread(host: str = "127.0.0.1", port: int = 0, api_key: str | None = None) -> SimulatorServer:
    """Serves a new simulator (with api_key, only that exact key is accepted) from a daemon
    thread; returns once the socket is listening.

    Works with or without gevent's monkey-patching (threads then become greenlets).
    """
    # Imported here so the gevent CLI never loads werkzeug.serving (and with it ssl) before patching.
    from werkzeug.serving import WSGIRequestHandler, make_server

    class QuietHandler(WSGIRequestHandler):
        """werkzeug's handler without the per-request access log line."""

        def log_request(self, code="-", size="-") -> None:
            """Skips the access log."""

    simulator = Simulator(api_key)
    server = make_server(host, port, simulator, threaded=True, request_handler=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name="moonshot-simulator", daemon=True)
    thread.start()
    return SimulatorServer(server, thread, simulator)


def main(argv=None) -> None:
    """CLI: serve the simulator with gevent.pywsgi, which holds thousands of concurrent streams."""
    import warnings

    from gevent import monkey
    # `python -m` has already imported the kimi_backend package (Flask, requests, hence ssl); this
    # process never uses ssl, so gevent's "ssl imported before patching" warning is noise here.
    warnings.filterwarnings("ignore", category=monkey.MonkeyPatchWarning)
    monkey.patch_all()
    from gevent.pywsgi import WSGIServer

    parser = argparse.ArgumentParser(description="Offline Moonshot (Kimi) API simulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--api-key", default=None, help="accept only this key (default: any sk-... key)")
    args = parser.parse_args(argv)

    class NoDelayServer(WSGIServer):
        """pywsgi writes headers and body separately; without TCP_NODELAY, Nagle's algorithm
        and the client's delayed ACK add ~40 ms to every small response."""

        def handle(self, sock, address):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().handle(sock, address)

    raise_open_files_limit()  # 1,000 streams need over 1,024 sockets
    server = NoDelayServer((args.host, args.port), Simulator(args.api_key), log=None, backlog=2048)
    server.start()
    host, port = server.address[:2]
    print(f"simulator listening on http://{host}:{port}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
