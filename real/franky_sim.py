"""Start franky-sim (a MuJoCo Franka behind the real libfranka protocol) as a local peer.

Used by the tests and by `real/deploy.py --rehearse`: the deploy stack talks to it through
franky exactly as to an arm. franky-sim needs numpy >= 2 (pinocchio), the project's stack
numpy < 2, so it lives in its own virtual environment (`tools/setup.sh` builds
`.venv-franky-sim`; `FRANKY_SIM` names another executable). Facts (DESIGN.md): always
`--simulator mujoco`; ports are fixed (1337/1338), so each instance takes its own loopback
address; it is ready when it prints "Connect to the server using" (a TCP probe is not a
readiness check); SIGINT stops it; it serves one client at a time; it never raises robot errors.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
READY = "Connect to the server using"


class FrankySimError(RuntimeError):
    pass


def franky_sim_executable() -> str | None:
    """FRANKY_SIM, else the project's .venv-franky-sim, else one on PATH."""
    for candidate in (os.environ.get("FRANKY_SIM"), str(ROOT / ".venv-franky-sim" / "bin" / "franky-sim"),
                      shutil.which("franky-sim")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


class FrankySim:
    """`with FrankySim("127.0.0.2") as sim: franky.Robot(sim.host, ...)`."""

    def __init__(self, host: str = "127.0.0.2", ready_timeout_s: float = 60.0, executable: str | None = None):
        self.host = host
        self.ready_timeout_s = ready_timeout_s
        self.executable = executable or franky_sim_executable()
        self.proc: subprocess.Popen | None = None
        self.output: deque[str] = deque(maxlen=200)

    def start(self) -> "FrankySim":
        if self.executable is None:
            raise FrankySimError("franky-sim is not installed: tools/setup.sh builds .venv-franky-sim "
                                 "(python3 -m venv .venv-franky-sim && .venv-franky-sim/bin/pip install "
                                 "franky-sim==1.0.4), or set FRANKY_SIM to its executable")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("VIRTUAL_ENV", None)
        self.proc = subprocess.Popen([self.executable, "--simulator", "mujoco", "--hostname", self.host],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                     start_new_session=True)
        ready = threading.Event()

        def pump():
            for line in self.proc.stdout:
                self.output.append(line.rstrip())
                if READY in line:
                    ready.set()

        threading.Thread(target=pump, name=f"franky-sim-{self.host}", daemon=True).start()
        t = time.monotonic()
        while not ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() - t > self.ready_timeout_s:
                tail = "\n".join(list(self.output)[-10:])
                self.stop()
                raise FrankySimError(f"franky-sim on {self.host} did not become ready:\n{tail}")
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> "FrankySim":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
