"""A loopback TCP forwarder that a test cuts, freezes and restores: a real service (a
broker, the API) made unreachable without stopping it."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from tests.helpers import free_port


class TcpProxy:
    """A loopback TCP forwarder to a real service that a test can cut and restore.

    ``stop()`` refuses new connections and resets the open ones, as a crashed broker
    would; ``start()`` listens again on the same port. ``freeze()`` makes the broker hang
    instead: connections stay open (new ones are accepted) but nothing is answered. The
    service itself is never stopped (other suites share it).
    """

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._frozen = threading.Event()
        self._accepter: threading.Thread | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)
        self._listener = listener
        self._stopping.clear()
        self._frozen.clear()
        self._accepter = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._accepter.start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._frozen.is_set():  # hold it open, answer nothing
                with self._lock:
                    self._sockets.add(client)
                threading.Thread(target=self._pipe, args=(client, None), daemon=True).start()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._sockets |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket | None) -> None:
        try:
            while data := source.recv(65536):
                if sink is not None and not self._frozen.is_set():
                    sink.sendall(data)
        except OSError:
            pass
        finally:
            if sink is not None:
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)

    def freeze(self) -> None:
        """From now on, swallow everything in both directions (a hung broker)."""
        self._frozen.set()

    def stop(self) -> None:
        self._stopping.set()
        if self._accepter is not None:
            self._accepter.join(5)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                # Linger 0: close with a reset, as a crashed peer's kernel would.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
