"""The HTTP server under the tests' fakes (Python 3 stdlib only)."""

import threading
from http.server import ThreadingHTTPServer


class LoopbackHTTPServer:
    """A request handler class served on 127.0.0.1 and a free port
    (self.port, known from the start), one thread a connection, from
    __enter__ to __exit__. A fake subclasses it and calls
    super().__init__(Handler)."""

    def __init__(self, handler):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        return False
