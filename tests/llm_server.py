"""A real OpenAI-compatible server for tests: llama.cpp's own server (the ``xllamacpp``
wheel) on the embedded SmolLM2-135M-Instruct GGUF, on 127.0.0.1 at a free port, in a
child process that the context manager stops."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request

SCRIPT = """
import os, sys, threading, xllamacpp as xlc
p = xlc.CommonParams()
p.model.path = sys.argv[1]
p.n_ctx, p.n_parallel, p.port = 8192, 2, 0          # port 0: a free port, 127.0.0.1 by default
p.cpuparams.n_threads = p.cpuparams_batch.n_threads = int(sys.argv[2])
if os.environ.get("TEST_SERVER_KEY"):
    p.api_keys = [os.environ["TEST_SERVER_KEY"]]
server = xlc.Server(p)
print(server.listening_address, flush=True)
threading.Event().wait()
"""


@contextlib.contextmanager
def llama_server(gguf: str, *, key: str | None = None, threads: int = 1):
    """Yield the server's base URL (e.g. http://127.0.0.1:41234)."""
    env = {**os.environ, "TEST_SERVER_KEY": key or ""}
    child = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, gguf, str(threads)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        url = child.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"the llama.cpp server did not start (exit code {child.poll()})")
        deadline = time.monotonic() + 60
        while True:  # the address is printed once listening; wait until the model answers health checks
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
