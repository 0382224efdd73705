"""Start, watch and stop the daemons of one state dir (stdlib only; used by hack/local-cluster
and hack/real-node).

A state dir holds `state.json` (ports, pids), `.lock` (one up/down at a time) and `logs/`. A pid
counts as "ours" only while its command line names the state dir, because pids are reused and
`down` must never signal someone else's process.

Why two checks of liveness: right after `Popen` returns, and now and then later on these VMs,
`/proc/<pid>/cmdline` reads back empty for a live process (measured: 12 of 30 spawns). Trusting
one such read called a healthy etcd dead, and the retry then left it running, holding its data
dir. So a process this run started is judged by its Popen handle, and any other by /proc read a
few times before saying no.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def cmdline(pid: int) -> str | None:
    """The pid's command line (spaces for NULs), or None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":
            return None
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


class Supervisor:
    """The processes, state file, lock and logs of one state dir."""

    def __init__(self, state_dir: Path, tag: str, error: type[Exception]) -> None:
        self.state_dir = state_dir
        self.tag = tag
        self.error = error
        self.children: dict[str, subprocess.Popen[bytes]] = {}  # started by this process

    def log(self, msg: str) -> None:
        print(f"{self.tag}: {msg}", file=sys.stderr, flush=True)

    # state -----------------------------------------------------------------------------------

    def load_state(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.state_dir / "state.json").read_text())
            return data
        except (OSError, ValueError):
            return {}

    def save_state(self, state: dict[str, Any]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.state_dir / "state.json")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One `up`/`down` at a time per state dir (engineers share the working tree)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / ".lock", "w") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.log(f"waiting for another up/down on {self.state_dir}")
                fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    # liveness --------------------------------------------------------------------------------

    def is_ours(self, pid: int) -> bool:
        """The pid runs and its command line names our state dir (re-read before saying no)."""
        for attempt in range(4):
            line = cmdline(pid)
            if line is not None and f"{self.state_dir}/" in line:
                return True
            if not Path(f"/proc/{pid}").exists():
                return False
            time.sleep(0.05 * (attempt + 1))
        return False

    def alive(self, name: str, pid: int) -> bool:
        proc = self.children.get(name)
        if proc is not None and proc.pid == pid:
            return proc.poll() is None
        return self.is_ours(pid)

    def running(self, state: dict[str, Any]) -> dict[str, int]:
        """The recorded components that still run, by name."""
        pids = {name: int(pid) for name, pid in state.get("pids", {}).items()}
        return {name: pid for name, pid in pids.items() if self.alive(name, pid)}

    # processes -------------------------------------------------------------------------------

    def start(self, name: str, argv: list[str], state: dict[str, Any]) -> None:
        """Start a daemon in its own session, logging to logs/<name>.log; record its pid."""
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{name}.log", "ab") as out:
            out.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.state_dir,
            )
        self.children[name] = proc
        state.setdefault("pids", {})[name] = proc.pid
        self.save_state(state)

    def stop(self, name: str, pid: int, timeout: float = 20.0) -> None:
        """SIGTERM, wait up to `timeout`, then SIGKILL; only if the pid is still ours."""
        if not self.alive(name, pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive(name, pid):
            time.sleep(0.05)
        if self.alive(name, pid):
            self.log(f"{name} ({pid}) ignored SIGTERM; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def log_tail(self, name: str, lines: int = 25) -> str:
        path = self.state_dir / "logs" / f"{name}.log"
        try:
            text = path.read_text(errors="replace").splitlines()
        except OSError:
            return f"(no log for {name})"
        return f"--- last lines of {path} ---\n" + "\n".join(text[-lines:])

    def wait(self, what: str, check: Callable[[], bool], deadline: float, watch: list[str]) -> None:
        """Poll `check` until true; fail early (with its log) when a watched component died."""
        pids = self.load_state().get("pids", {})
        while True:
            if check():
                return
            for name in watch:
                proc = self.children.get(name)
                code = proc.poll() if proc is not None else None
                gone = code is not None if proc is not None else (
                    name in pids and not self.is_ours(int(pids[name]))
                )
                if gone:
                    how = "" if code is None else f"with code {code}" if code >= 0 else f"by signal {-code}"
                    raise self.error(f"{name} exited {how} while waiting for {what}\n{self.log_tail(name)}")
            if time.monotonic() > deadline:
                tails = "\n".join(self.log_tail(n) for n in watch)
                raise self.error(f"timed out waiting for {what}\n{tails}")
            time.sleep(0.25)
