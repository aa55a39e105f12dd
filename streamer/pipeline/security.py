"""Endpoint policy and CurveZMQ: loopback/ipc is open, anything else needs Curve keys.

Key directory layout (``streamer keys DIR`` creates it with :func:`zmq.auth.create_certificates`,
which uses ``zmq.curve_keypair()``):

    DIR/server.key, DIR/server.key_secret   the sink's key pair (servers: ingest, work, PUB)
    DIR/client.key, DIR/client.key_secret   a client key pair (publishers, workers, monitors)
    DIR/authorized/*.key                    public keys of clients the sink accepts

Copy ``server.key`` (public) and a client key pair to other hosts; add each client's ``.key``
to ``authorized/`` on the sink host.
"""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator


def is_local(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on a loopback address or ``localhost``."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # '*', an interface name or a host name: a network interface
        return False


def check_bind(endpoints: list[str], curve_dir: str | None) -> None:
    """Refuse to bind a network interface without Curve keys (clear error, nothing bound)."""
    exposed = [e for e in endpoints if not is_local(e)]
    if exposed and not curve_dir:
        raise ValueError(
            f"refusing to bind {', '.join(exposed)} (not loopback/ipc) without CurveZMQ: "
            "pass --curve DIR (create keys with `streamer keys DIR`)")


def create_keys(directory: str | Path) -> Path:
    """Create server + client key pairs and authorize the client (see module docstring)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "authorized").mkdir(exist_ok=True)
    for name in ("server", "client"):
        if not (d / f"{name}.key_secret").exists():
            zmq.auth.create_certificates(str(d), name)
    shutil.copy(d / "client.key", d / "authorized" / "client.key")
    return d


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    if not path.exists():
        raise FileNotFoundError(f"Curve key file {path} not found (create keys with `streamer keys DIR`)")
    return zmq.auth.load_certificate(str(path))


class CurveServer:
    """Makes bound sockets Curve servers and authenticates clients against DIR/authorized."""

    def __init__(self, ctx: zmq.Context, curve_dir: str | Path):
        d = Path(curve_dir)
        self.public, self.secret = _load(d / "server.key_secret", True)
        authorized = d / "authorized"
        if not authorized.is_dir() or not any(authorized.glob("*.key")):
            raise FileNotFoundError(f"no authorized client keys in {authorized}")
        self.auth = ThreadAuthenticator(ctx)
        self.auth.start()
        self.auth.configure_curve(domain="*", location=str(authorized))

    def apply(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def stop(self) -> None:
        self.auth.stop()


def apply_client(sock: zmq.Socket, curve_dir: str | Path | None) -> None:
    """Configure a connecting socket as Curve client of the sink (no-op without a key dir)."""
    if not curve_dir:
        return
    d = Path(curve_dir)
    public, secret = _load(d / "client.key_secret", True)
    server_public, _ = _load(d / "server.key", False)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = server_public
