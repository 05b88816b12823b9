"""data/sandbox.py: every outcome kind, the limits that stop runaway programs, and the guard that keeps a
program from changing anything outside its temporary directory."""
import os
import time

import pytest

from data.sandbox import run_program, run_programs

FAST = {"timeout": 1.0, "grace": 1.0, "memory_bytes": 256 << 20}


def test_outcome_kinds_are_told_apart():
    programs = {
        "passed": "assert sum(range(4)) == 6\nprint('the program may print')",
        "syntax_error": "def f(:\n    pass",
        "assertion_failed": "assert 1 == 2, 'wrong answer'",
        "exception": "{}['missing']",
    }
    results = run_programs(list(programs.values()), **FAST)
    assert [r.outcome for r in results] == list(programs)
    passed, syntax, assertion, exception = results
    assert passed.passed and passed.detail == ""
    assert "SyntaxError" in syntax.detail and "line 1" in syntax.detail
    assert assertion.detail == "AssertionError: wrong answer" and not assertion.passed
    assert exception.detail == "KeyError: 'missing'"


def test_infinite_loop_is_stopped_by_the_time_limit():
    result = run_program("while True:\n    pass", **FAST)
    assert result.outcome == "timeout"
    assert result.seconds < FAST["timeout"] + FAST["grace"] + 1.0


def test_a_program_that_swallows_the_alarm_is_killed_by_the_parent():
    swallow = "import time\nwhile True:\n    try:\n        time.sleep(10)\n    except BaseException:\n        pass"
    result = run_program(swallow, **FAST)
    assert result.outcome == "timeout" and "process group killed" in result.detail
    assert FAST["timeout"] + FAST["grace"] <= result.seconds < FAST["timeout"] + FAST["grace"] + 1.5


def test_a_program_that_blocks_the_alarm_is_stopped_by_the_cpu_limit():
    spin = "import signal\nsignal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])\nwhile True:\n    pass"
    result = run_program(spin, **FAST | {"grace": 8.0})  # the CPU limit (2 s) comes long before the wall clock
    assert (result.outcome, result.detail) == ("timeout", "CPU time limit (SIGXCPU)")


def test_file_size_is_limited():
    result = run_program("open('big.bin', 'wb').write(bytes(2 << 20))", **FAST | {"file_bytes": 1 << 20})
    assert result.outcome == "exception" and "File too large" in result.detail


@pytest.mark.parametrize("program", [
    "x = bytearray(1 << 40)",                                   # one huge allocation
    "x = []\nwhile True:\n    x.append(bytearray(1 << 24))",    # growth without bound
])
def test_unbounded_allocation_is_stopped_by_the_memory_limit(program):
    result = run_program(program, **FAST)
    assert result.outcome == "crashed" and "MemoryError" in result.detail


def test_a_hard_crash_is_reported_by_its_signal():
    result = run_program("import faulthandler\nfaulthandler._sigsegv()", **FAST)
    assert (result.outcome, result.detail) == ("crashed", "killed by SIGSEGV")


def test_leaving_without_a_report_is_a_crash_not_a_pass():
    result = run_program("import os\nos._exit(0)", **FAST)
    assert result.outcome == "crashed" and "without a report" in result.detail


def test_destructive_calls_are_refused_and_nothing_outside_changes(tmp_path):
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("keep me")
    folder = tmp_path / "folder"
    folder.mkdir()
    s, d = str(sentinel), str(folder)
    attacks = {
        f"import os\nos.remove({s!r})": "os.remove",
        f"import os\nos.unlink({s!r})": "os.unlink",
        f"import pathlib\npathlib.Path({s!r}).unlink()": "os.unlink",
        f"import os\nos.rename({s!r}, {s + '.moved'!r})": "os.rename",
        f"import os\nos.truncate({s!r}, 0)": "os.truncate",
        f"import os\nos.chmod({s!r}, 0)": "os.chmod",
        f"import shutil\nshutil.rmtree({d!r})": "shutil.rmtree",
        f"open({s!r}, 'w').write('overwritten')": "open(",
        f"import pathlib\npathlib.Path({s!r}).write_text('overwritten')": "open(",
        f"import io\nio.FileIO({s!r}, 'w')": "FileIO(",
        f"import os\nos.open({s!r}, os.O_WRONLY | os.O_TRUNC)": "os.open(",
        f"import os\nos.mkdir({d + '/new'!r})": "os.mkdir(",
        f"import os\nos.system('rm -f {s}')": "os.system",
        f"import subprocess\nsubprocess.run(['rm', '-f', {s!r}])": "subprocess.run",
        "import os\nos.fork()": "os.fork",
        f"import posix\nposix.unlink({s!r})": "posix.unlink",
        f"import posix\nposix.open({s!r}, posix.O_WRONLY | posix.O_TRUNC)": "os.open(",
        "import posix\nposix.fork()": "posix.fork",
        "import subprocess\nsubprocess._fork_exec()": "subprocess._fork_exec",
        "import os\nos.kill(os.getppid(), 9)": "os.kill",
        "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_STREAM)": "socket.socket",
        "import socket\nsocket.create_connection(('127.0.0.1', 80))": "socket.create_connection",
        "try:\n    import os\n    os.fork()\nexcept Exception:\n    pass": "os.fork",  # not swallowed
        "exit(0)": "exit",
    }
    results = run_programs(list(attacks), **FAST)
    for (program, call), result in zip(attacks.items(), results):
        assert result.outcome == "refused", (program, result)
        assert result.detail.startswith(call), (program, result)
    assert sentinel.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "sentinel.txt"]
    assert list(folder.iterdir()) == []


def test_the_program_writes_freely_inside_a_fresh_directory_that_is_removed_afterwards():
    program = ("import os\nassert os.listdir('.') == []\nopen('scratch.txt', 'w').write('x')\n"
               "os.mkdir('sub')\nassert sorted(os.listdir('.')) == ['scratch.txt', 'sub']\n"
               "assert os.environ['TMPDIR'] == os.getcwd()\n"
               "raise ValueError(os.getcwd())")
    first, second = run_programs([program, program], **FAST)
    assert first.outcome == second.outcome == "exception"
    workdir = first.detail.removeprefix("ValueError: ")
    assert workdir != second.detail.removeprefix("ValueError: ")
    assert not os.path.exists(workdir)


def test_runs_are_parallel_and_results_keep_their_order():
    programs = [f"import time\ntime.sleep(1.0)\nassert {i} % 2 == 0" for i in range(4)]
    start = time.monotonic()
    results = run_programs(programs, workers=4, **FAST | {"timeout": 3.0})
    elapsed = time.monotonic() - start
    assert [r.outcome for r in results] == ["passed", "assertion_failed", "passed", "assertion_failed"]
    assert all(r.seconds >= 1.0 for r in results)
    assert elapsed < 3.5  # one after the other would take over 4 s of sleeping alone
