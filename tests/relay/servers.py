"""Real HTTP servers on free local ports, in a thread of the test process.

uvicorn serves an ASGI app on a socket bound to port 0, so tests never collide on ports; the
context manager stops the server and waits for its thread.
"""

import contextlib
import socket
import threading
import time

import uvicorn


@contextlib.contextmanager
def serve(app, *, lifespan: str = "off"):
    """Serve `app` on 127.0.0.1; yield its base URL (http://127.0.0.1:<port>)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan=lifespan)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
