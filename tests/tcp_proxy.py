"""A TCP proxy on 127.0.0.1 that can cut every connection at once, for the remote tests.

    proxy = CuttableProxy(upstream_port=s3_server.port); proxy.start()
    ... point the client at proxy.url ...
    proxy.cut()      # every open connection gets a TCP reset, new ones are refused: a crash
    proxy.start()    # the same port accepts again: the restart
    proxy.sent()     # every byte the clients sent, to check which headers went out

Why a proxy: moto's ThreadedMotoServer.stop() only stops accepting; a request already on a
keep-alive connection is still served, so it is not a crash. Cutting the sockets is. The server's
store lives on behind the proxy, as a real store's disk does across a restart.
"""

from __future__ import annotations

import socket
import struct
import threading


class CuttableProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._sent = bytearray()
        self._listener: socket.socket | None = None

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Reset every connection and stop listening."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                # linger 0: close() sends a reset, as a killed process's kernel does; shutdown()
                # first, or a pump thread blocked in recv() holds the socket open and nothing is sent.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by its pump
            sock.close()

    def sent(self) -> bytes:
        with self._lock:
            return bytes(self._sent)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            upstream = socket.create_connection(self.upstream)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, record: bool) -> None:
        try:
            while data := source.recv(65536):
                if record:
                    with self._lock:
                        self._sent += data
                target.sendall(data)
        except OSError:
            pass  # the other side is gone, or cut() closed us
        try:
            target.shutdown(socket.SHUT_RDWR)  # the other pump stops too, and closes its own source
        except OSError:
            pass
        with self._lock:
            if source in self._sockets:
                self._sockets.remove(source)
        source.close()
