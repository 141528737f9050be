"""Fault injection with real processes and sockets, on loopback only (no mocks).

- :class:`StallingForwarder`: a TCP forwarder in front of a real engine that can stop passing
  bytes, as a stalled node (GC pause, SIGSTOP, a dead switch) looks to a client, now or at
  the first request that holds a given byte string (a fault at a known step of a task).
- :class:`PrivateRedis`: a real ``redis-server`` on a free port, to stop under a running app.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class StallingForwarder:
    """Forwards 127.0.0.1:<port> to ``target``; while stalled, holds every byte."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._running = threading.Event()
        self._running.set()  # set: bytes flow; clear: stalled
        self._trigger: bytes | None = None
        self.tripped = threading.Event()  # set once a request met the trigger
        self._closed = False
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stall(self) -> None:
        self._running.clear()

    def stall_on(self, pattern: bytes) -> None:
        """Stall before passing on the first client chunk that holds ``pattern``."""
        self._trigger = pattern

    def resume(self) -> None:
        self._trigger = None
        self._running.set()

    def close(self) -> None:
        self._closed = True
        self._running.set()
        self._server.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except (TimeoutError, OSError):
                continue
            upstream = socket.create_connection(self.target)
            for a, b, watched in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pipe, args=(a, b, watched), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, watched: bool) -> None:
        with contextlib.suppress(OSError):
            while not self._closed:
                data = source.recv(65536)
                if not data:
                    break
                trigger = self._trigger
                if watched and trigger is not None and trigger in data:
                    self._running.clear()
                    self.tripped.set()
                self._running.wait()
                sink.sendall(data)
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.close()


class PrivateRedis:
    """A real redis-server of this test's own on a free port; ``persistent`` keeps an
    append-only file, so a restart brings back what it held (as `make up`'s Redis does);
    ``tls`` makes it speak TLS only, with a certificate of a CA made in ``workdir``."""

    def __init__(self, workdir: Path, persistent: bool = False, tls: bool = False) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is not installed (make up installs it)")
        self.port = free_port()
        self.ca: Path | None = _make_certificates(workdir) if tls else None
        listen = (["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no",
                   *(arg for name in ("cert", "key", "ca-cert")
                     for arg in (f"--tls-{name}-file", str(workdir / f"server.{name}")))]
                  if tls else ["--port", str(self.port)])
        self.command = [server, "--bind", "127.0.0.1", *listen, "--save", "",
                        "--appendonly", "yes" if persistent else "no", "--dir", str(workdir)]
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        if self.ca is None:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"rediss://127.0.0.1:{self.port}/0?ssl_cert_reqs=required&ssl_ca_certs={self.ca}"

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def stop(self, graceful: bool = False) -> None:
        """SIGTERM (writes its file, like a restart) or SIGKILL."""
        if self.process is None or self.process.poll() is not None:
            return
        if graceful:
            self.process.terminate()
        else:
            self.process.kill()
        self.process.wait(timeout=30)


def _make_certificates(workdir: Path) -> Path:
    """A CA and a server certificate for 127.0.0.1 signed by it, made with ``openssl``
    (``make up`` installs it with redis-server) as ``server.cert``, ``server.key`` and
    ``server.ca-cert``; returns the CA's certificate."""
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl is not installed (make up installs it with redis-server)")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=workdir, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "server.ca-cert", "-days", "2", "-subj", "/CN=es-interest test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
            "server.csr", "-subj", "/CN=127.0.0.1")
    (workdir / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "server.ca-cert", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.cert", "-days", "2", "-extfile", "san.cnf")
    return workdir / "server.ca-cert"
