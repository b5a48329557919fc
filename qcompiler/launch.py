"""`qcompile --nproc N`: start N ranks of the same compile on this machine, as torchrun would.

Why our own launcher rather than torchrun's: a failed run must end with one `error:` line and a
non-zero exit, and torchrun prints its own multi-line failure summary. The launcher sets the
environment torch.distributed reads (MASTER_ADDR/PORT on localhost, RANK, WORLD_SIZE, LOCAL_*),
splits the CPU threads between the ranks (OMP_NUM_THREADS, unless set), and runs
`python -m qcompiler.cli.qcompile ARGS` N times. Rank 0 talks to the terminal (progress bars,
notes, its error); the other ranks' stderr is kept and shown only when one of them holds the
error that stopped the run. When a rank fails, the others stop: at their next collective
(qcompiler/distributed.py raises PeerFailed, and a launched rank then exits quietly with
PEER_FAILED_EXIT), or after a grace period by SIGTERM (which unwinds Python, so rank 0's
half-written artifact temp directory is removed). For several machines use torchrun
(docs/DISTRIBUTED.md).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

from typing import Any, Callable

from qcompiler.errors import QCompilerError

LAUNCHED_ENV = "QCOMPILE_LAUNCHED"
PEER_FAILED_EXIT = 75  # a rank that stopped because another failed: it printed nothing
GRACE_SECONDS = 5.0


def launch(nproc: int, argv: list[str], module: str = "qcompiler.cli.qcompile") -> int:
    """Run `python -m module argv` as `nproc` ranks; the exit status of the run."""
    port = _free_port()
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // nproc))
    procs: list[subprocess.Popen] = []
    logs: list[list[bytes]] = []
    readers: list[threading.Thread] = []
    for rank in range(nproc):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                   LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc),
                   GROUP_RANK="0", OMP_NUM_THREADS=threads, **{LAUNCHED_ENV: "1"})
        quiet = rank > 0
        proc = subprocess.Popen([sys.executable, "-m", module, *argv], env=env,
                                stdout=subprocess.DEVNULL if quiet else None,
                                stderr=subprocess.PIPE if quiet else None)
        procs.append(proc)
        logs.append([])
        if quiet:
            reader = threading.Thread(target=_drain, args=(proc, logs[-1]), daemon=True)
            reader.start()
            readers.append(reader)
    try:
        codes = _wait(procs)
    except KeyboardInterrupt:
        _stop(procs)
        return 130
    for reader in readers:
        reader.join(timeout=5)
    return _verdict(codes, logs)


def _wait(procs: list[subprocess.Popen]) -> list[int | None]:
    """Wait for every rank; once one fails, give the rest GRACE_SECONDS, then stop them."""
    failed_at = None
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            return codes
        if failed_at is None and any(c not in (None, 0) for c in codes):
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > GRACE_SECONDS:
            _stop(procs)
            return [p.returncode if not _stopped(p) else None for p in procs]
        time.sleep(0.05)


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            p._qc_stopped = True  # type: ignore[attr-defined]
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _stopped(p: subprocess.Popen) -> bool:
    return bool(getattr(p, "_qc_stopped", False))


def _verdict(codes: list[int | None], logs: list[list[bytes]]) -> int:
    """0 when every rank succeeded; else the failing rank's status, its error shown once."""
    if all(c == 0 for c in codes):
        return 0
    for rank, code in enumerate(codes):
        if code in (None, 0, PEER_FAILED_EXIT):
            continue
        if code < 0:
            sys.stderr.write(f"error: the process of rank {rank} was killed by signal {-code}"
                             f"{' (out of memory?)' if -code == signal.SIGKILL else ''}\n")
            return 1
        if rank > 0:  # rank 0 printed its own error on the terminal
            lines = b"".join(logs[rank]).decode(errors="replace").splitlines()
            errors = [line for line in lines if line.startswith("error:")]
            sys.stderr.write((errors[-1] if errors else
                              f"error: the process of rank {rank} failed (exit {code})") + "\n")
        return code
    sys.stderr.write("error: the calibration processes stopped without saying why\n")
    return 1


def _drain(proc: subprocess.Popen, into: list[bytes]) -> None:
    assert proc.stderr is not None
    for chunk in iter(lambda: proc.stderr.read1(65536), b""):  # type: ignore[union-attr]
        into.append(chunk)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_rank(body: Callable[[Any], int]) -> int:
    """Run `body(group)` as one rank: join the process group the environment describes (none
    when alone), leave it at the end. In a rank started by `launch`, SIGTERM and a failure caused
    by another rank's (PeerFailed) end it quietly with PEER_FAILED_EXIT: the failing rank's own
    error is the one line shown. Alone (no WORLD_SIZE > 1), torch.distributed is not even
    imported, so a usage error stays a fast one-liner."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) < 2:
        return body(None)
    from qcompiler.distributed import finish, init_from_env

    launched = os.environ.get(LAUNCHED_ENV) == "1"
    if launched:
        install_stop_handler()
    try:
        return body(init_from_env())
    except QCompilerError as e:
        if launched and caused_by_peer(e):
            return PEER_FAILED_EXIT
        raise
    finally:
        finish()


def caused_by_peer(e: BaseException | None) -> bool:
    """Whether `e` (or what it was raised from) is another rank's failure."""
    from qcompiler.distributed import PeerFailed

    while e is not None:
        if isinstance(e, PeerFailed):
            return True
        e = e.__cause__
    return False


def install_stop_handler() -> None:
    """In a launched rank: SIGTERM unwinds Python (finally blocks, temp-dir cleanup) and exits
    quietly with PEER_FAILED_EXIT."""
    def stop(signum: int, frame: object) -> None:
        raise SystemExit(PEER_FAILED_EXIT)

    signal.signal(signal.SIGTERM, stop)
