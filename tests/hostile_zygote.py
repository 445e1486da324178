"""A process that imports medusa-mlx once, then forks one child per hostile case.

Starting Python and importing mlx, mlx-lm and transformers costs 1.3 s per process on an
idle 2-core box (10-20 s when it is shared); a fork of this already-imported process
costs ~0.3 s. Each child is still its own process: its own address-space limit
(``RLIMIT_AS``), stdin/stdout/stderr redirected to files, fresh signal handlers, and it
runs the script (``convert.py``, ``chat.py``) or ``-c`` code as ``__main__``, exactly as
``python ...`` would. Nothing is computed with MLX before the fork.

Protocol (JSON lines on stdin/stdout): a request ``{"argv", "stdin", "stdout",
"stderr", "timeout", "memory"}`` is answered by ``{"pid"}`` when the child starts and
``{"status", "maxrss", "seconds", "timed_out"}`` when it ends (killed after
``timeout``).
"""

import io
import json
import os
import resource
import runpy
import signal
import sys
import time
import traceback

import medusa_mlx  # noqa: F401  (first: preloads OpenBLAS)
import medusa_mlx.chat.cli  # noqa: F401
import medusa_mlx.chat.ui  # noqa: F401
import medusa_mlx.conversion.convert  # noqa: F401
import medusa_mlx.load  # noqa: F401
import medusa_mlx.loaders.gguf  # noqa: F401
import medusa_mlx.loaders.llama2c  # noqa: F401
import mlx_lm.convert  # noqa: F401
import transformers  # noqa: F401
from transformers import LlamaTokenizer, PreTrainedTokenizerFast  # noqa: F401


def run_child(request: dict) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (request["memory"], request["memory"]))
    for fd, path, flags in ((0, request["stdin"], os.O_RDONLY),
                            (1, request["stdout"], os.O_WRONLY | os.O_TRUNC),
                            (2, request["stderr"], os.O_WRONLY | os.O_TRUNC)):
        opened = os.open(path, flags)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)),
                                 encoding="utf-8", errors="strict")
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)),
                                  encoding="utf-8", errors="strict")
    sys.stderr = io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False)),
                                  encoding="utf-8", errors="backslashreplace",
                                  line_buffering=True)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    argv = request["argv"]
    code = 0
    try:
        if argv[0] == "-c":
            sys.argv = ["-c", *argv[2:]]
            exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})
        else:
            sys.argv = list(argv)
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001  (what python itself would print)
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            try:
                run_child(request)
            finally:
                os._exit(70)
        print(json.dumps({"pid": pid}), flush=True)
        timed_out = False
        while True:
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() - start > request["timeout"]:
                os.kill(pid, signal.SIGKILL)
                done, status, usage = os.wait4(pid, 0)
                timed_out = True
                break
            time.sleep(0.01)
        print(json.dumps({"status": os.waitstatus_to_exitcode(status),
                          "maxrss": usage.ru_maxrss * 1024,
                          "seconds": time.monotonic() - start, "timed_out": timed_out}),
              flush=True)


if __name__ == "__main__":
    serve()
