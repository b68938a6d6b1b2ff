"""Run a command of the toolkit with every non-local socket connection and name lookup recorded and refused.

    python tests/net_guard.py LOG -m experiments.cli cache ...      (the CLI)
    python tests/net_guard.py LOG -c "code"                     (a snippet)

Each attempt appends one line "host port" to LOG. Loaded before anything else, so it also sees
requests made at import time.
"""

import socket
import sys

LOCAL_PREFIXES = ("127.", "/")  # loopback and Unix sockets
LOCAL_NAMES = {"", "localhost", "::1", "0.0.0.0"}
log_path = sys.argv[1]


def _record(host, port) -> None:
    host = host.decode() if isinstance(host, bytes) else str(host)
    if host in LOCAL_NAMES or host.startswith(LOCAL_PREFIXES):
        return
    with open(log_path, "a") as log:
        log.write(f"{host} {port}\n")
    raise OSError(f"net_guard: network access to {host}:{port} refused")


_connect, _getaddrinfo, _create_connection = socket.socket.connect, socket.getaddrinfo, socket.create_connection


def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _record(address[0], address[1])
    return _connect(self, address)


def getaddrinfo(host, port, *args, **kwargs):
    if host is not None:
        _record(host, port)
    return _getaddrinfo(host, port, *args, **kwargs)


def create_connection(address, *args, **kwargs):
    _record(address[0], address[1])
    return _create_connection(address, *args, **kwargs)


socket.socket.connect, socket.getaddrinfo, socket.create_connection = connect, getaddrinfo, create_connection

if sys.argv[2] == "-m":
    import runpy

    sys.argv = [sys.argv[3], *sys.argv[4:]]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    exec(compile(sys.argv[3], "<net_guard>", "exec"))
