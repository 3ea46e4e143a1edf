"""A second "machine"'s own network: a namespace joined to this one by a veth pair.

The test server listens on loopback only, so the host's end of each veth
pair gets a relay to it: a worker in the namespace reaches the server over
the pair, through its own network stack, as a worker on another machine
would over a LAN. Made as root with iproute2's ``ip``; where that is not
possible, :func:`join` returns None and the machine shares this network.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass

from sqlalchemy.engine import make_url


@dataclass(frozen=True)
class Network:
    namespace: str
    url: str  # the server, as a worker inside the namespace reaches it


_MADE: dict[str, Network] = {}


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=60)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(1 << 16):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _relay(listen: str, target: tuple[str, int]) -> int:
    """Forward every connection to ``listen``:port to ``target``, in daemon threads; returns the port."""
    server = socket.create_server((listen, 0))

    def serve() -> None:
        while True:
            client, _ = server.accept()
            try:
                upstream = socket.create_connection(target, timeout=30)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1]


def join(host: str, url: str) -> Network | None:
    """The network of machine ``host``, made on first use; None where this process cannot make one."""
    if host in _MADE:
        return _MADE[host]
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return None
    index = len(_MADE) + 1
    tag = f"{os.getpid() % 100000}x{index}"
    namespace, outside, inside = f"lrtune-{tag}", f"lrt{tag}h", f"lrt{tag}n"
    subnet = f"10.{200 + os.getpid() % 50}.{index}"
    try:
        _ip("netns", "add", namespace)
        atexit.register(subprocess.run, ["ip", "netns", "del", namespace], capture_output=True)
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", namespace)
        _ip("addr", "add", f"{subnet}.1/30", "dev", outside)
        _ip("link", "set", outside, "up")
        for args in (("addr", "add", f"{subnet}.2/30", "dev", inside), ("link", "set", inside, "up"), ("link", "set", "lo", "up")):
            _ip("netns", "exec", namespace, "ip", *args)
    except (subprocess.SubprocessError, OSError):
        subprocess.run(["ip", "link", "del", outside], capture_output=True)
        return None
    server = make_url(url)
    port = _relay(f"{subnet}.1", (server.host or "127.0.0.1", server.port or 5432))
    inner_url = server.set(host=f"{subnet}.1", port=port).render_as_string(hide_password=False)
    _MADE[host] = Network(namespace, inner_url)
    return _MADE[host]
