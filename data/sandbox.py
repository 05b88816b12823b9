"""Run untrusted Python programs (model-written code + its tests), one separate process each, and record
how each one ended.

    run_programs(programs, timeout=3.0)  ->  [ExecutionResult(outcome, detail, seconds), ...]

Every program runs in its own `sys.executable -I -S data/sandbox_child.py` process, started in a new
session so that the whole process group can be killed, in a fresh temporary working directory that is
removed afterwards, with a minimal environment; the program travels on stdin. The child limits itself
(memory, CPU, file size, processes), disables destructive calls, sockets and writes outside its directory,
executes the program as OpenAI human-eval does and reports one JSON line (sandbox_child.py says how).
The parent kills the process group at `timeout + grace` seconds of wall clock whatever the child does,
and classifies a child that died without reporting by its exit status.

Outcomes: passed | syntax_error | assertion_failed | exception (detail: the type and message) |
refused (detail: the blocked call) | timeout (wall clock or CPU) | crashed (MemoryError under the memory
limit, killed by a signal, or exited without a report). Like human-eval's guard, this is a seat belt for
model-written code, not a security boundary against code written to escape it.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

CHILD = str(Path(__file__).with_name("sandbox_child.py"))
OUTCOMES = ("passed", "syntax_error", "assertion_failed", "exception", "refused", "timeout", "crashed")


@dataclass(frozen=True)
class ExecutionResult:
    outcome: str    # one of OUTCOMES
    detail: str     # "" when passed; the exception, blocked call, limit or signal otherwise
    seconds: float  # wall clock of the child process

    @property
    def passed(self) -> bool:
        return self.outcome == "passed"


def run_program(program: str, timeout: float = 3.0, memory_bytes: int = 1 << 30,
                file_bytes: int = 16 << 20, grace: float = 2.0) -> ExecutionResult:
    """Execute `program` in a fresh sandboxed child process; see the module docstring."""
    workdir = tempfile.mkdtemp(prefix="sandbox-")
    limits = {"timeout": timeout, "memory_bytes": memory_bytes, "file_bytes": file_bytes}
    env = {"HOME": workdir, "TMPDIR": workdir, "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1",
           "SANDBOX_LIMITS": json.dumps(limits)}
    start = time.monotonic()
    try:
        child = subprocess.Popen([sys.executable, "-I", "-S", CHILD], cwd=workdir, env=env,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 start_new_session=True)
        try:
            out, err = child.communicate(program.encode("utf-8", "surrogatepass"), timeout=timeout + grace)
            killed_by_parent = False
        except subprocess.TimeoutExpired:
            # The child is not reaped yet (or a descendant still holds its pipes), so its pid still names
            # our process group and nothing else.
            _kill_group(child.pid)
            out, err = child.communicate()
            killed_by_parent = True
        seconds = time.monotonic() - start
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if killed_by_parent:
        return ExecutionResult("timeout", f"wall clock over {timeout + grace:g} s, process group killed", seconds)
    report = _last_json_line(out)
    if report is not None:
        return ExecutionResult(report["outcome"], report["detail"], seconds)
    return ExecutionResult(*_unreported(child.returncode, err), seconds)


def run_programs(programs: list[str], workers: int | None = None, **limits) -> list[ExecutionResult]:
    """run_program over many programs, `workers` (default: the CPU count) child processes at a time;
    results in the order of `programs`."""
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:  # threads only wait; the children do the work
        return list(pool.map(lambda p: run_program(p, **limits), programs))


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _last_json_line(out: bytes):
    lines = out.decode("utf-8", "replace").strip().splitlines()
    try:
        report = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return None
    if isinstance(report, dict) and report.get("outcome") in OUTCOMES and isinstance(report.get("detail"), str):
        return report
    return None


def _unreported(returncode: int, err: bytes) -> tuple[str, str]:
    """(outcome, detail) of a child that died before it reported."""
    if returncode < 0:
        sig = signal.Signals(-returncode)
        if sig == signal.SIGXCPU:
            return "timeout", "CPU time limit (SIGXCPU)"
        return "crashed", f"killed by {sig.name}"
    tail = err.decode("utf-8", "replace").strip()[-300:]
    return "crashed", f"exited with status {returncode} without a report" + (f": {tail}" if tail else "")
