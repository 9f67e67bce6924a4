"""gunicorn's gthread worker with a read deadline on every connection.

gthread waits 5 s for a new connection's first bytes, then reads the rest of the request with
a blocking socket and no deadline: a client that sends half a head and stops holds a thread
for as long as it likes, and (cores + 1) x 2 of them stop `web`. Here every read and write of
a request must make progress within ROUTINELY_WEB_READ_SECONDS (default 10), or the connection is closed and its thread
freed. (A client that sends one byte just inside each deadline still holds a thread: a
buffering proxy in front is what bounds that; docs/security.md.)
"""
from __future__ import annotations

import errno

from gunicorn.workers import gthread

from routinely.config import Settings


class DeadlineConn(gthread.TConn):
    read_seconds = Settings.web_read_seconds

    def init(self) -> None:
        super().init()  # once per connection; the worker makes the socket blocking before each request
        self.sock.settimeout(self.read_seconds)  # so: before each request, a deadline again


class Worker(gthread.ThreadWorker):
    def init_process(self) -> None:
        # gunicorn_conf.on_starting has already refused a bad setting, so this one reads
        DeadlineConn.read_seconds = Settings.from_env().web_read_seconds
        super().init_process()

    def accept(self, listener) -> None:
        """gthread's accept, making a DeadlineConn."""
        try:
            client_sock, client_addr = listener.accept()
            self.nr_conns += 1
            client_sock.setblocking(True)
            self.enqueue_req(DeadlineConn(self.cfg, client_sock, client_addr, listener.getsockname()))
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
