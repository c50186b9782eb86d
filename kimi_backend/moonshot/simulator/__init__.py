"""Offline look-alike of Moonshot AI's Kimi REST API, speaking the real wire format.

One plain WSGI app (no Flask, so it stays cheap per request) serves three uses:
the service's upstream when no API key is configured (`start_in_thread`), the test
suite's upstream over loopback, and the benchmarks' upstream as its own gevent process
(`python -m kimi_backend.moonshot.simulator --port 9100`).

Behaviour is steered per request by `sim:key=value` tokens in the last user message
(see `directives.DIRECTIVES`), or by a queue of scripted behaviours (`Simulator.script`).

The modules, one job each: directives (the `sim:` tokens), validation (requests checked as
Moonshot checks them), replies (the model list and chat replies), streams (a reply laid out
as SSE events), errors (Moonshot's error replies), wire (plain-WSGI requests, responses and
the connection), app (the WSGI app and its control routes), servers (the two runners).
"""
from .app import Simulator
from .replies import MODELS, OFFLINE_NOTICE
from .servers import start_in_thread

__all__ = ["MODELS", "OFFLINE_NOTICE", "Simulator", "start_in_thread"]
