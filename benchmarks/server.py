"""The benchmarks' model: the project's scripted OpenAI-compatible server, in a process of its own.

It runs apart from the code being measured so that its HTTP parsing and threads do not take
the measured process's GIL; the parent talks to it over stdin/stdout (one JSON line per
command) to read the request log, reset it and change the latency.

    python benchmarks/server.py --latency 0.1      # prints {"base_url": ...}, then serves
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class Server:
    """Handle on the server process: start, count calls, reset, stop."""

    def __init__(self, latency: float):
        self.process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--latency", str(latency)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.base_url = self._read()["base_url"]
        self.latency = latency

    def _read(self) -> dict[str, Any]:
        line = self.process.stdout.readline() if self.process.stdout else ""
        if not line:
            raise RuntimeError("the benchmark server stopped")
        return json.loads(line)

    def command(self, *words: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(" ".join(str(w) for w in words) + "\n")
        self.process.stdin.flush()
        return self._read()

    def calls(self) -> int:
        """Chat completions received since the last reset."""
        return self.command("count")["calls"]

    def stats(self) -> dict[str, Any]:
        return self.command("count")

    def reset(self) -> None:
        self.command("reset")

    def set_latency(self, seconds: float) -> None:
        self.command("latency", seconds)
        self.latency = seconds

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(RuntimeError, BrokenPipeError):
                self.command("quit")
            self.process.wait(timeout=10)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(latency: float) -> None:
    """Run the server and answer the parent's commands until it says quit (or goes away)."""
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from responder import answer

    from tests.fake_llm import FakeLLMServer

    server = FakeLLMServer(answer, latency=latency).start()

    def say(payload: dict[str, Any]) -> None:
        print(json.dumps(payload), flush=True)

    say({"base_url": server.base_url})
    try:
        for line in sys.stdin:
            words = line.split()
            if not words or words[0] == "quit":
                break
            if words[0] == "count":
                say({"calls": len(server.chat_requests()), "max_in_flight": server.max_in_flight})
            elif words[0] == "reset":
                server.reset()
                say({"ok": True})
            elif words[0] == "latency":
                server.latency = float(words[1])
                say({"ok": True})
            else:
                say({"error": f"unknown command {words[0]!r}"})
    finally:
        server.stop()
    say({"ok": True})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency", type=float, default=0.1)
    serve(parser.parse_args().latency)
