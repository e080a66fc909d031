"""A node process stand-in: apply a sandbox plan, then try each action; print one JSON line.

    python child.py PLAN_JSON ACTION...      (ACTION is name or name:argument)

Like the runner, it imports numpy and iceoryx2 and creates its iceoryx2 node *before*
``apply``. Each outcome is "ok", "ok:<value>", "OSError:<errno name>" or "MemoryError".
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import resource
import socket
import subprocess
import sys
import threading
from collections.abc import Callable

import iceoryx2 as iox2
import numpy as np

from nodehost import sandbox

iox2.set_log_level_from_env_or(iox2.LogLevel.Error)
NODE = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int) -> None:
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def tcp(address: str) -> None:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5):
        pass


def inet(_: str) -> None:
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()


def inet6(_: str) -> None:
    socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()


def unix_pair(_: str) -> str:
    a, b = socket.socketpair(socket.AF_UNIX)
    a.sendall(b"ping")
    return b.recv(4).decode()


def abstract_unix(name: str) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect("\0" + name)


def write(path: str) -> None:
    with open(path, "w") as f:
        f.write("written by a sandboxed child\n")


def read(path: str) -> str:
    with open(path) as f:
        return f.read(200)


def listdir(path: str) -> str:
    return ",".join(sorted(os.listdir(path))[:3])


def kill(arg: str) -> None:
    pid, sig = arg.split(",")
    os.kill(int(pid), int(sig))


def ptrace(pid: str) -> None:
    PTRACE_SEIZE = 0x4206  # does not stop the tracee, should the sandbox ever fail
    _check(libc.ptrace(ctypes.c_long(PTRACE_SEIZE), ctypes.c_long(int(pid)), None, None))


def vm_readv(pid: str) -> None:
    class IoVec(ctypes.Structure):
        _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))

    buf = ctypes.create_string_buffer(8)
    local, remote = IoVec(ctypes.addressof(buf), 8), IoVec(0x10000, 8)
    _check(libc.process_vm_readv(int(pid), ctypes.byref(local), 1, ctypes.byref(remote), 1, 0))


def numpy_work(mb: str) -> str:
    # A normal workload: a matrix product (OpenBLAS threads) on arrays of about `mb` MiB.
    n = int((int(mb) << 20) / 8 / 3) ** 0.5
    a = np.random.default_rng(0).random((int(n), int(n)))
    return f"{float((a @ a.T).trace()):.3f}"


def alloc(mb: str) -> None:
    np.ones(int(mb) << 20, dtype=np.uint8)


def iceoryx2(slice_mb: str) -> str:
    # Service, ports and a second node all made after apply: /dev/shm and /tmp/iceoryx2 in use.
    name = iox2.ServiceName.new(f"nodehost/sandbox-test/{os.getpid()}")
    service = (
        NODE.service_builder(name)
        .publish_subscribe(iox2.Slice[ctypes.c_uint8])
        .max_subscribers(8)
        .open_or_create()
    )
    publisher = service.publisher_builder().initial_max_slice_len(int(slice_mb) << 20).create()
    other = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
    subscriber = (
        other.service_builder(name)
        .publish_subscribe(iox2.Slice[ctypes.c_uint8])
        .max_subscribers(8)
        .open_or_create()
        .subscriber_builder()
        .create()
    )
    sample = publisher.loan_slice_uninit(1024)
    np.frombuffer(sample.payload().as_memory_view(), np.uint8)[:] = 42
    sample.assume_init().send()
    received = subscriber.receive()
    total = int(np.frombuffer(received.payload().as_memory_view(), np.uint8).sum())
    received.delete()
    return str(total)


def fork(_: str) -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def run_true(_: str) -> None:
    subprocess.run(["true"], check=True)


def thread(_: str) -> str:
    box: list[int] = []
    worker = threading.Thread(target=lambda: box.append(threading.get_native_id()))
    worker.start()
    worker.join()
    return str(len(box))


def raise_rlimit(_: str) -> None:
    # Root keeps uid 0 but no capability: the memory limit cannot be lifted from inside.
    limit = resource.RLIM_INFINITY
    try:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    except ValueError as exc:  # Python reports EPERM from setrlimit as ValueError
        raise OSError(errno.EPERM, str(exc)) from None


def env(name: str) -> str:
    return os.environ.get(name, "<unset>")


ACTIONS: dict[str, Callable[[str], str | None]] = {
    f.__name__: f
    for f in (tcp, inet, inet6, unix_pair, abstract_unix, write, read, listdir, kill, ptrace,
              vm_readv, numpy_work, alloc, iceoryx2, fork, run_true, thread, raise_rlimit, env)
}


def main() -> None:
    spec = json.loads(sys.argv[1])
    plan = sandbox.SandboxPlan(**{k: tuple(v) if isinstance(v, list) else v
                                  for k, v in spec.items()})
    results: dict[str, object] = {"layers": sandbox.apply(plan)}
    for action in sys.argv[2:]:
        name, _, arg = action.partition(":")
        try:
            value = ACTIONS[name](arg)
            results[action] = "ok" if value is None else f"ok:{value}"
        except MemoryError:
            results[action] = "MemoryError"
        except OSError as exc:
            results[action] = f"OSError:{errno.errorcode.get(exc.errno or 0, exc.errno)}"
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
