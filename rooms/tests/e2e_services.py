"""The whole deployment on loopback, for the end-to-end call test: a throwaway PostgreSQL
cluster, Redis, coturn, Daphne processes and a Celery worker with beat.

Everything here runs inside a network namespace that has only loopback (`unshare -n`), so
every packet stays on 127.0.0.1 and the services of the machine (its PostgreSQL, its Redis)
are neither reachable nor touched. Each process is a child of the harness in its own process
group; `Deployment.close` ends them all and removes the temporary folder, also on failure.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

PROJECT_DIR = Path(__file__).resolve().parents[2]
BIN_DIR = Path(sys.executable).parent

PG_PORT = 5433
REDIS_PORT = 6380
TURN_PORT = 3479
TURN_SECRET = "parley-e2e-turn-secret"  # noqa: S105 (a throwaway coturn inside the namespace)
SECRET_KEY = "parley-e2e-only-8d3f1a6c2b9e4d7f0a5c8e1b3d6f9a2c4e7b0d5f8a1c3e6b9d2f"  # noqa: S105


# What the harness stops on (asked to, or over its time limit).
STOP_SIGNALS = {signal.SIGTERM, signal.SIGALRM}


class DeploymentError(RuntimeError):
    """A service did not come up; the message names it and the log to read."""


def loopback_only() -> bool:
    """True inside a network namespace whose only interface is loopback."""
    interfaces = {
        line.split(":")[0].strip() for line in Path("/proc/net/dev").read_text().splitlines()[2:]
    }
    return interfaces == {"lo"}


def wait_for(what: str, ready: Callable[[], bool], timeout: float, log: Path | None = None) -> None:
    """Poll `ready()` until it is true, else fail naming `what` and its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.1)
    hint = f"; its log:\n{tail(log)}" if log else ""
    raise DeploymentError(f"{what} did not become ready within {timeout:.0f} s{hint}")


def tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (loopback URL)
            return bool(response.status == 200)
    except OSError:
        return False


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    # Signal for a clean stop: PostgreSQL's "fast shutdown" is SIGINT.
    stop_signal: int = signal.SIGTERM


@dataclass
class Deployment:
    """Start services with `start`, stop them all with `close` (or the `with` block)."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="parley-e2e-")))
    services: list[Service] = field(default_factory=list)
    keep: bool = False

    def __enter__(self) -> Deployment:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- processes ----------------------------------------------------------------------
    def start(
        self,
        name: str,
        command: list[str],
        *,
        env: dict[str, str] | None = None,
        user: str | None = None,
        stop_signal: int = signal.SIGTERM,
        cwd: Path = PROJECT_DIR,
    ) -> Service:
        log = self.root / f"{name}.log"
        handle: IO[bytes] = log.open("wb")
        # A stop signal arriving between the start and the bookkeeping would leak the process:
        # it waits until the service is on the list that `close` stops.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            process = subprocess.Popen(  # noqa: S603 (fixed commands, no shell)
                command,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=cwd,
                user=user,
                start_new_session=True,
                # The child inherits the blocked signals; it must be stoppable.
                preexec_fn=_unblock_stop_signals,
            )
            service = Service(name, process, log, stop_signal)
            self.services.append(service)
        finally:
            handle.close()
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        return service

    def run(
        self, command: list[str], *, user: str | None = None, env: dict[str, str] | None = None
    ) -> None:
        """A command that must succeed (initdb, createdb)."""
        done = subprocess.run(  # noqa: S603 (fixed commands, no shell)
            command, capture_output=True, user=user, env=env, cwd=self.root, check=False
        )
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")
            raise DeploymentError(f"{' '.join(command)} failed ({done.returncode}):\n{output}")

    def kill(self, service: Service) -> None:
        """SIGKILL, as a crash: the process runs no shutdown code."""
        service.process.kill()
        service.process.wait(timeout=10)

    def close(self) -> None:
        # A second stop signal must not cut the cleanup short.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            # Reverse order of start: the Django processes before their databases.
            for service in reversed(self.services):
                self._stop(service)
            self.services.clear()
            if not self.keep:
                shutil.rmtree(self.root, ignore_errors=True)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    @staticmethod
    def _stop(service: Service) -> None:
        if service.process.poll() is not None:
            return
        try:
            os.killpg(service.process.pid, service.stop_signal)
        except ProcessLookupError:
            return
        try:
            service.process.wait(timeout=8)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(service.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            service.process.wait(timeout=5)

    def logs(self) -> str:
        return "\n".join(f"--- {s.name} ({s.log}) ---\n{tail(s.log)}" for s in self.services)

    # --- the services -------------------------------------------------------------------
    def postgres(self, *, durable: bool = False) -> str:
        """A fresh cluster owned by the postgres user, unix socket in our folder; returns
        its DATABASE_URL. Fast and forgetful: a commit returns before its WAL is written,
        so a crash of the cluster loses the last moment's commits; `durable` keeps every
        commit across a crash of PostgreSQL (not of the machine), as a fault harness that
        kills it needs."""
        bindir = _postgres_bindir()
        folder = self.root / "pg"
        folder.mkdir()
        user = "postgres" if os.geteuid() == 0 else None
        if user:
            shutil.chown(self.root, user)
            shutil.chown(folder, user)
        data = folder / "data"
        self.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
            + ["-E", "UTF8", "--no-sync", "--no-instructions"],
            user=user,
        )
        service = self.start(
            "postgres",
            [str(bindir / "postgres"), "-D", str(data), "-p", str(PG_PORT), "-k", str(folder)]
            + ["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]
            + ["-c", f"synchronous_commit={'on' if durable else 'off'}"]
            + ["-c", "full_page_writes=off"],
            user=user,
            stop_signal=signal.SIGINT,
            cwd=folder,
        )
        wait_for("PostgreSQL", lambda: port_open(PG_PORT), 20, service.log)
        # The port may open a moment before the cluster accepts connections.
        wait_for(
            "PostgreSQL",
            lambda: (
                subprocess.run(  # noqa: S603
                    [str(bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(PG_PORT)],
                    check=False,
                ).returncode
                == 0
            ),
            20,
            service.log,
        )
        self.run(
            [str(bindir / "psql"), "-h", "127.0.0.1", "-p", str(PG_PORT), "-U", "postgres"]
            + ["-qc", "CREATE DATABASE parley"],
        )
        return f"postgres://postgres@127.0.0.1:{PG_PORT}/parley"

    def redis(self) -> str:
        server = shutil.which("redis-server")
        if server is None:
            raise DeploymentError("redis-server is not installed (scripts/services.sh does it).")
        service = self.start(
            "redis",
            [server, "--bind", "127.0.0.1", "--port", str(REDIS_PORT), "--save", ""]
            + ["--appendonly", "no", "--dir", str(self.root)],
        )
        wait_for("Redis", lambda: port_open(REDIS_PORT), 10, service.log)
        return f"redis://127.0.0.1:{REDIS_PORT}/0"

    def coturn(self) -> None:
        server = shutil.which("turnserver")
        if server is None:
            raise DeploymentError("coturn is not installed (scripts/services.sh installs it).")
        config = self.root / "turnserver.conf"
        config.write_text("")
        service = self.start(
            "coturn",
            [server, "-c", str(config), "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1"]
            + [f"--listening-port={TURN_PORT}", "--use-auth-secret"]
            + [f"--static-auth-secret={TURN_SECRET}", "--realm=parley.test"]
            + ["--no-tls", "--no-dtls", "--no-cli", "--allow-loopback-peers"]
            + ["--min-port=49160", "--max-port=49400", "--fingerprint"]
            + [f"--userdb={self.root / 'turndb'}", f"--pidfile={self.root / 'turn.pid'}"]
            + ["--log-file=stdout", "--simple-log"],
        )
        # coturn listens on TCP too; the open port says it is up.
        wait_for("coturn", lambda: port_open(TURN_PORT), 10, service.log)

    def django_env(self, database_url: str, redis_url: str) -> dict[str, str]:
        """The environment of every Django process: production-like, minus HTTPS."""
        # Beat keeps its schedule there; with a Redis broker nothing else creates the folder.
        (self.root / "var" / "celery").mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "TEST_"))}
        env.update(
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            CHANNEL_LAYER_PREFIX="parley-e2e",
            SECRET_KEY=SECRET_KEY,
            DEBUG="0",
            HTTPS="0",
            STATIC_MANIFEST="0",
            ALLOWED_HOSTS="127.0.0.1,localhost",
            CSRF_TRUSTED_ORIGINS="http://127.0.0.1",
            PARLEY_VAR_DIR=str(self.root / "var"),
            PAYMENT_PROVIDER="local",
            LOCAL_PAYMENTS_ALLOWED="1",
            STUN_URLS=f"stun:127.0.0.1:{TURN_PORT}",
            TURN_URLS=f"turn:127.0.0.1:{TURN_PORT}?transport=udp",
            TURN_SECRET=TURN_SECRET,
            DJANGO_SETTINGS_MODULE="config.settings",
            CELERY_TASK_ALWAYS_EAGER="0",
            PYTHONUNBUFFERED="1",
        )
        return env

    def daphne(self, name: str, port: int, env: dict[str, str]) -> Service:
        return self.start(
            name,
            [str(BIN_DIR / "daphne"), "-b", "127.0.0.1", "-p", str(port)]
            + ["config.asgi:application"],
            env=env,
        )

    def celery(self, env: dict[str, str]) -> Service:
        return self.start(
            "celery",
            [str(BIN_DIR / "celery"), "-A", "config", "worker", "-B", "--concurrency=1"]
            # Every queue (config/celery.py): one worker does all the work here.
            + ["--queues=money,rooms,email"]
            + ["--loglevel=INFO", "--without-gossip", "--without-mingle"],
            env=env,
        )


def _unblock_stop_signals() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _postgres_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    if found:
        return Path(found[-1])
    initdb = shutil.which("initdb")
    if initdb is None:
        raise DeploymentError("PostgreSQL is not installed (scripts/services.sh does it).")
    return Path(initdb).resolve().parent


# --- running a suite in its own namespace (from the normal, outer test run) -----------------


def namespace_unready(tools: tuple[str, ...], why: str) -> str | None:
    """What stops a run under `unshare -n` here (not root, a tool missing), or None."""
    if os.geteuid() != 0:
        return (
            f"{why} needs root to make a loopback-only network namespace (unshare -n); "
            "run `make test` as root."
        )
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        return f"Missing {', '.join(missing)}: run scripts/services.sh as root."
    return None


@dataclass
class NamespaceRun:
    returncode: int
    stdout: str
    stderr: str  # empty when merged into stdout
    seconds: float
    timed_out: bool
    # Processes still in the namespace afterwards, killed: services a stopped run left behind.
    leftovers: str


def namespace_run(
    argv: list[str], *, timeout: float, stop_grace: float, merge_stderr: bool = False
) -> NamespaceRun:
    """Run `argv` in a fresh network namespace with only loopback up. Over `timeout` it gets
    SIGTERM (so it can stop the services it started), then SIGKILL after `stop_grace`;
    either way nothing it started outlives it."""
    started = time.monotonic()
    process = subprocess.Popen(  # noqa: S603 (the callers' fixed commands)
        ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', *argv],  # noqa: S607
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        text=True,
        cwd=PROJECT_DIR,
    )
    namespace = _namespace_of(process.pid)
    timed_out = False
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        process.terminate()
        try:
            stdout, stderr = process.communicate(timeout=stop_grace)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
    return NamespaceRun(
        returncode=process.returncode,
        stdout=stdout,
        stderr=stderr or "",
        seconds=time.monotonic() - started,
        timed_out=timed_out,
        leftovers=_namespace_end(namespace),
    )


def _namespace_of(pid: int) -> str | None:
    """The network namespace `unshare` made (its process becomes the command)."""
    deadline = time.monotonic() + 5
    own = os.readlink("/proc/self/ns/net")
    while time.monotonic() < deadline:
        try:
            namespace = os.readlink(f"/proc/{pid}/ns/net")
        except OSError:
            return None  # already gone
        if namespace != own:
            return namespace
        time.sleep(0.01)
    return None


def _namespace_end(namespace: str | None) -> str:
    """SIGKILL whatever still runs in the namespace (only the run's own processes live there);
    says what it ended."""
    if namespace is None:
        return ""
    ended = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns" / "net") != namespace:
                continue
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            os.kill(int(entry.name), signal.SIGKILL)
        except OSError:
            continue
        ended.append(f"{entry.name} {command[:80]}")
    if not ended:
        return ""
    return "; processes left in its namespace were killed: " + ", ".join(ended)
