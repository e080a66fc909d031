"""Confine a node process: what it may read, write, connect to, signal and allocate.

The runner calls :func:`apply` in the node's own process, after it imported what nodehost
itself needs and before it imports the node's code. Each layer is enforced only where the
kernel offers it; :func:`apply` returns the names of the layers it did enforce, which the
runner reports in the node's status events. ``docs/sandbox.md`` says what each layer stops
and what none of them covers.

The host side uses :func:`scrubbed_env` for the child's environment; the child calls
:func:`preexec` first thing so that it dies with the host.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import re
import resource
import signal
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

import nodehost
from nodehost.errors import SandboxError as SandboxError
from nodehost.protocol import ExitCode

__all__ = [
    "EXIT_MEMORY_LIMIT",
    "EXIT_PARENT_GONE",
    "KernelSupport",
    "SandboxError",
    "SandboxPlan",
    "apply",
    "denied_path",
    "ensure_parent",
    "is_allocation_failure",
    "may_access",
    "memory_limit_hit",
    "node_env_problem",
    "preexec",
    "private_memory_bytes",
    "probe",
    "scrubbed_env",
]

# The runner's exit codes live in nodehost.protocol; these two are the sandbox's part.
EXIT_MEMORY_LIMIT = ExitCode.MEMORY_LIMIT
EXIT_PARENT_GONE = ExitCode.PARENT_GONE

DEFAULT_MAX_FILE_SIZE_MB = 4096
DEFAULT_MAX_OPEN_FILES = 4096

# Where iceoryx2 keeps its shared memory and its node/service records (read, write, create).
ICEORYX2_PATHS = ("/dev/shm", "/tmp/iceoryx2")


@dataclass(frozen=True)
class SandboxPlan:
    """What one node process may do; everything else is denied where the kernel allows.

    Paths are absolute. A granted ``fs_write`` path that does not exist yet is created by
    :func:`apply` (an empty file, or a directory when it ends with ``/``) so that the node can
    write it: Landlock attaches rules to existing inodes only.
    """

    tmp_dir: str
    network: bool = False
    fs_read: tuple[str, ...] = ()
    fs_write: tuple[str, ...] = ()
    plugin_paths: tuple[str, ...] = ()
    memory_mb: int | None = None
    max_file_size_mb: int | None = DEFAULT_MAX_FILE_SIZE_MB
    max_open_files: int = DEFAULT_MAX_OPEN_FILES
    allow_subprocesses: bool = True

    def __post_init__(self) -> None:
        for field in ("fs_read", "fs_write", "plugin_paths"):
            for path in getattr(self, field):
                if not os.path.isabs(path):
                    raise SandboxError(f"sandbox {field} paths must be absolute: {path!r}")
        if not os.path.isabs(self.tmp_dir):
            raise SandboxError(f"sandbox tmp_dir must be absolute: {self.tmp_dir!r}")
        for field in ("memory_mb", "max_file_size_mb"):
            value = getattr(self, field)
            if value is not None and value <= 0:
                raise SandboxError(f"sandbox {field} must be positive, got {value}")
        if self.max_open_files < 16:
            raise SandboxError(f"sandbox max_open_files must be at least 16: {self.max_open_files}")


# --- libc and syscalls ------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int
_libc.prctl.argtypes = (ctypes.c_int, *[ctypes.c_ulong] * 4)

PR_SET_PDEATHSIG = 1
PR_GET_SECCOMP = 21
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# The Landlock syscalls have the same numbers on every architecture (added after the unification).
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1


def _prctl(option: int, arg: int = 0, arg3: int = 0) -> None:
    if _libc.prctl(option, arg, arg3, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def _syscall(number: int, *args: Any) -> int:
    result = int(_libc.syscall(ctypes.c_long(number), *args))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


# --- Landlock constants (include/uapi/linux/landlock.h) ---------------------------------------

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

# Rights that make sense on a file (the kernel refuses directory rights in a rule for a file).
_FS_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
_FS_READ = FS_READ_FILE | FS_READ_DIR
_FS_READ_EXEC = _FS_READ | FS_EXECUTE
# No EXECUTE (a dropped binary cannot be exec'd) and never MAKE_CHAR/MAKE_BLOCK (device nodes).
_FS_WRITE = (
    _FS_READ
    | FS_WRITE_FILE
    | FS_TRUNCATE
    | FS_REMOVE_DIR
    | FS_REMOVE_FILE
    | FS_MAKE_DIR
    | FS_MAKE_REG
    | FS_MAKE_SOCK
    | FS_MAKE_FIFO
    | FS_MAKE_SYM
    | FS_REFER
)


def _fs_rights_for_abi(abi: int) -> int:
    """Every filesystem right this ABI can handle: all of them are denied unless granted."""
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


class _RulesetAttr(ctypes.Structure):
    # The full ABI 6 layout. Older kernels accept the larger size as long as the fields they do
    # not know are zero, so one struct serves every ABI.
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # packed in the uapi header
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


# --- capabilities (linux/capability.h) --------------------------------------------------------

_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


# --- probe ------------------------------------------------------------------------------------


@functools.cache
def _landlock_abi() -> int:
    try:
        return _syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                        ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    except OSError:  # ENOSYS: not built in; EOPNOTSUPP: disabled at boot
        return 0


@functools.cache
def _seccomp_module() -> Any:
    """pyseccomp, or None when it or the system libseccomp is missing."""
    try:
        import pyseccomp
    except (ImportError, RuntimeError, OSError):  # RuntimeError: "Unable to find libseccomp"
        return None
    return pyseccomp


class KernelSupport(TypedDict):
    """What :func:`probe` found: which layers :func:`apply` can enforce here."""

    landlock_abi: int  # 0 = no Landlock
    landlock_fs: bool
    landlock_net: bool  # TCP bind/connect rules (ABI >= 4)
    landlock_scope: bool  # signal and abstract unix socket scoping (ABI >= 6)
    seccomp: bool
    root: bool
    rlimits: dict[str, tuple[int, int]]  # (soft, hard) at the first probe, -1 = unlimited


@functools.cache
def probe() -> KernelSupport:
    """What this kernel and this Python offer, computed once per process."""
    seccomp = _seccomp_module() is not None
    if seccomp:
        # -1 (EINVAL) without CONFIG_SECCOMP; 2 when filters are installed already (a container
        # runtime's): ours stacks on top of them.
        seccomp = _libc.prctl(PR_GET_SECCOMP, 0, 0, 0, 0) != -1
    abi = _landlock_abi()
    return {
        "landlock_abi": abi,
        "landlock_fs": abi >= 1,
        "landlock_net": abi >= 4,
        "landlock_scope": abi >= 6,
        "seccomp": seccomp,
        "root": os.geteuid() == 0,
        "rlimits": {
            name: resource.getrlimit(getattr(resource, name))
            for name in ("RLIMIT_DATA", "RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_CORE")
        },
    }


# --- parent death -----------------------------------------------------------------------------


def preexec(expected_parent: int | None = None, death_signal: int = signal.SIGKILL) -> None:
    """Arm SIGKILL-on-parent-death and leave the host's session; call first in the child.

    Usable as ``preexec_fn`` (``functools.partial(preexec, os.getpid())``) or as the runner's
    first statement. The parent-death signal fires when the *thread* that forked the child
    exits, so the host must spawn from a thread that lives as long as the child should.
    ``expected_parent`` closes the race where the host died before the signal was armed.
    ``death_signal``: the zygote asks for SIGTERM, to clean up after its nodes before it goes.
    """
    _prctl(PR_SET_PDEATHSIG, death_signal)
    # A process group of its own: the terminal's Ctrl-C reaches only the host, which stops
    # nodes in order, and the host can kill a node's whole group. Popen(process_group=0) or
    # start_new_session=True may have done it already (setsid would then fail with EPERM).
    if os.getpgid(0) != os.getpid():
        os.setsid()
    if expected_parent is not None:
        ensure_parent(expected_parent)


def ensure_parent(expected_parent: int) -> None:
    """Exit at once (``EXIT_PARENT_GONE``) when the host is no longer this process's parent."""
    if os.getppid() != expected_parent:
        os._exit(EXIT_PARENT_GONE)


# --- environment ------------------------------------------------------------------------------

# Not secrets, and needed for the node to behave like the host: locale, time zone, the same
# import path, thread counts and the OpenBLAS settings some CPUs need to start at all.
_ENV_ALLOW = frozenset({
    "PATH", "LANG", "LANGUAGE", "TZ", "USER", "LOGNAME", "LD_LIBRARY_PATH", "PYTHONPATH",
    "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONIOENCODING", "PYTHONUTF8",
    "PYTHONHASHSEED", "PYTHONFAULTHANDLER",
    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
    "SSL_CERT_FILE", "SSL_CERT_DIR",
})
_ENV_ALLOW_PREFIXES = ("LC_",)
# Nodes never reach a model hub at run time: models come from installed packages.
_ENV_FORCED = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


# What a pipeline config's per-node ``env`` may not set: the sandbox sets these itself, or they
# decide which code the node process loads (that comes from the host, not from a config).
_ENV_SANDBOX_OWNED = {
    "HOME": "the node's private temp dir",
    "TMPDIR": "the node's private temp dir",
    **dict.fromkeys(_ENV_FORCED, "nodes never reach a model hub"),
}
_ENV_CODE_PATHS = frozenset({"PATH", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP",
                             "PYTHONSAFEPATH", "PYTHONUSERBASE", "PYTHONNOUSERSITE"})


def node_env_problem(name: str) -> str | None:
    """Why a pipeline config's ``env`` may not set ``name``, or None when it may."""
    if name in _ENV_SANDBOX_OWNED:
        return f"{name} is set by the sandbox ({_ENV_SANDBOX_OWNED[name]}) and cannot be changed"
    if name in _ENV_CODE_PATHS or name.startswith("LD_"):
        return (f"{name} decides which code the node process loads; it comes from the host's "
                "environment and cannot be set per node")
    return None


def scrubbed_env(
    extra: Mapping[str, str] | None = None, *, tmp_dir: str | None = None,
    node_env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment for a node process: an allow-list of the host's, never its secrets.

    With ``tmp_dir``, ``HOME`` and ``TMPDIR`` point at the node's private temp dir (the only
    place it can write by default). ``extra`` (the embedding application's) is added next,
    then ``node_env`` (the pipeline config's ``env`` of this node, names checked with
    :func:`node_env_problem`), which wins.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if key in _ENV_ALLOW or key.startswith(_ENV_ALLOW_PREFIXES)
    }
    env.update(_ENV_FORCED)
    if tmp_dir is not None:
        env["HOME"] = tmp_dir
        env["TMPDIR"] = tmp_dir
    if extra:
        env.update(extra)
    for name, value in (node_env or {}).items():
        problem = node_env_problem(name)
        if problem:
            raise SandboxError(problem)
        env[name] = value
    return env


# --- apply ------------------------------------------------------------------------------------


def apply(plan: SandboxPlan) -> list[str]:
    """Confine the calling process as far as the kernel allows; return the layers enforced.

    Call from the main thread, after every import nodehost needs and before node code runs.
    Landlock and capabilities bind the calling thread and the threads it starts later;
    threads that already exist (an OpenBLAS pool) keep them (seccomp and rlimits cover all).
    Raises :class:`SandboxError` only for a plan that cannot work (missing tmp_dir, a memory
    limit below what the process already uses); a layer the kernel lacks is skipped.
    """
    if not os.path.isdir(plan.tmp_dir):
        raise SandboxError(f"sandbox tmp_dir {plan.tmp_dir!r} does not exist; the host creates it")
    seccomp = _seccomp_module()  # loads libseccomp now: reading it later may be denied
    _create_granted_files(plan.fs_write)
    # tempfile may have cached /tmp already; the private dir is the one place it can write.
    tempfile.tempdir = plan.tmp_dir

    layers: list[str] = []
    layers += _apply_rlimits(plan)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)  # required by Landlock and seccomp without CAP_SYS_ADMIN
    layers.append("no_new_privs")
    if _drop_capabilities():
        layers.append("no_capabilities")
    layers += _apply_landlock(plan)
    if seccomp is not None and probe()["seccomp"]:
        layers += _apply_seccomp(seccomp, plan)
    return layers


def _create_granted_files(paths: Iterable[str]) -> None:
    # Landlock rules attach to inodes: a file the node should be allowed to create must exist
    # before restricting (granting the parent directory would open every sibling as well).
    for path in paths:
        if os.path.lexists(path):
            continue
        # A missing parent or an unwritable directory leaves nothing to attach a rule to: the
        # grant is skipped, and the node's own write fails naming the path.
        with contextlib.suppress(OSError):
            if path.endswith("/"):
                os.mkdir(path, 0o700)
            else:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                os.close(os.open(path, flags, 0o600))


def _apply_rlimits(plan: SandboxPlan) -> list[str]:
    layers = []
    _lower_rlimit(resource.RLIMIT_CORE, 0)  # no core dumps carrying node memory onto disk
    if plan.max_file_size_mb is not None:
        _lower_rlimit(resource.RLIMIT_FSIZE, plan.max_file_size_mb << 20)
        layers.append("rlimit_fsize")
    _lower_rlimit(resource.RLIMIT_NOFILE, plan.max_open_files)
    layers.append("rlimit_nofile")
    if plan.memory_mb is not None:
        # RLIMIT_DATA counts private writable mappings (heap, numpy buffers, thread stacks) but
        # not MAP_SHARED ones, so iceoryx2's shared-memory segments (hundreds of MiB of address
        # space) do not eat into the node's budget as they would under RLIMIT_AS.
        limit = plan.memory_mb << 20
        used = private_memory_bytes()
        if used is not None and used >= limit:
            raise SandboxError(
                f"resources.memory_mb={plan.memory_mb} is below what the node process uses "
                f"before running node code ({used >> 20} MiB of private memory: Python, numpy, "
                f"iceoryx2); raise memory_mb"
            )
        _lower_rlimit(resource.RLIMIT_DATA, limit)
        layers.append("rlimit_memory")
    return layers


def _lower_rlimit(which: int, value: int) -> None:
    # Never raise a limit: an unprivileged host may already run under a tighter one.
    _soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))


# How native libraries word a failed allocation (mkl_malloc, std::bad_alloc, onnxruntime's
# "Failed to allocate memory", glibc's strerror(ENOMEM), torch's "not enough memory", Rust's
# "memory allocation of N bytes failed" before it aborts): under RLIMIT_DATA they are the
# limit speaking, whatever the wording.
_ALLOCATION_FAILURE = re.compile(
    r"MemoryError|bad_alloc|mkl_malloc|fail(?:ed)? to allocate|cannot allocate memory|"
    r"out of memory|not enough memory|ENOMEM|allocation failed|"
    r"memory allocation of \d+ bytes failed", re.IGNORECASE)
NEAR_LIMIT = 0.95  # any failure with private memory this close to the limit counts as hitting it


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_allocation_failure(error: BaseException | str) -> bool:
    """Whether an error (its chain, or a native library's text) says an allocation failed."""
    if isinstance(error, str):
        return bool(_ALLOCATION_FAILURE.search(error))
    for exc in _exception_chain(error):
        if isinstance(exc, MemoryError):
            return True
        if isinstance(exc, OSError) and exc.errno == errno.ENOMEM:
            return True
        if _ALLOCATION_FAILURE.search(f"{type(exc).__name__}: {exc}"):
            return True
    return False


def memory_limit_hit(error: BaseException, memory_mb: int | None) -> int | None:
    """This process's private memory (bytes) when ``error`` came from hitting its limit.

    Call in the failing process, while the error's frames still hold what was allocated.
    A failed allocation is the limit speaking; so is any failure at the limit's edge.
    """
    if memory_mb is None:
        return None
    used = private_memory_bytes() or 0
    if is_allocation_failure(error) or used >= NEAR_LIMIT * (memory_mb << 20):
        return used
    return None


def private_memory_bytes() -> int | None:
    """VmData of this process: exactly what RLIMIT_DATA is compared with."""
    with contextlib.suppress(OSError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) << 10
    return None


def _drop_capabilities() -> bool:
    """Give up every capability (a root node must not raise its rlimits back, load modules...).

    The bounding set goes first (dropping it needs CAP_SETPCAP), so that even an exec of a
    root-owned binary cannot regain anything.
    """
    try:
        for cap in range(64):
            try:
                _prctl(PR_CAPBSET_DROP, cap)
            except OSError as exc:
                if exc.errno == errno.EINVAL:  # past the kernel's last capability
                    break
                if exc.errno != errno.EPERM:  # EPERM: not privileged, nothing to drop
                    raise
        _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
        header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
        data = (_CapData * 2)()
        if _libc.capset(ctypes.byref(header), data) != 0:
            return False
    except OSError:
        return False
    return True


def may_access(path: str, plan: SandboxPlan, *, write: bool = False) -> bool:
    """Whether a node under ``plan`` may read (or write) ``path``, as its Landlock ruleset will
    see it: beneath a granted path, symlinks resolved. Used by the host to check a config
    before anything starts; computed with the host's Python paths (the node's own
    environment, when it has one, differs only in what it may read and execute)."""
    wanted = FS_WRITE_FILE if write else FS_READ_FILE
    real = os.path.realpath(path)
    for root, rights in _landlock_paths(plan):
        if rights & wanted and _beneath(real, os.path.realpath(root)):
            return True
    return False


_QUOTED_PATH = re.compile(r"""['"](/[^'"]+)['"]""")


def denied_path(error: BaseException, plan: SandboxPlan) -> tuple[str, str] | None:
    """``(path, grant)`` when ``error`` is this sandbox refusing a path: the path, and the
    grant that would allow it (``fs_write``, or ``fs_read or fs_write`` when the path may not
    even be read); else None.

    An errno EACCES/EPERM with a file name anywhere in the chain, or — for libraries that
    keep no errno, like libsndfile's "Error opening '/x.wav': System error." — a quoted
    absolute path in the message, counts when the sandbox does not grant that path.
    """
    for exc in _exception_chain(error):
        candidates: list[str] = []
        if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM):
            candidates += [str(f) for f in (exc.filename, exc.filename2) if f]
        candidates += _QUOTED_PATH.findall(str(exc))
        for path in candidates:
            if may_access(path, plan, write=True):
                continue
            # An error rarely says whether the file was opened to read or to write.
            return path, "fs_write" if may_access(path, plan) else "fs_read or fs_write"
    return None


def _beneath(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _landlock_paths(plan: SandboxPlan) -> list[tuple[str, int]]:
    """(path, rights) pairs for the ruleset, most general first."""
    python = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    # '' and the working directory are on sys.path under `python -m`; they may be anything
    # (a home directory), so they are not granted. The host runs nodes with cwd=tmp_dir.
    cwd = os.getcwd()
    python.update(p for p in sys.path if p and os.path.abspath(p) != cwd)
    # An editable install serves nodehost from the source tree through an import hook, not a
    # sys.path entry: grant the package directory itself (not the whole checkout).
    python.add(os.path.dirname(os.path.abspath(nodehost.__file__)))
    rules: list[tuple[str, int]] = [(p, _FS_READ_EXEC) for p in sorted(python)]
    # System libraries and the few /etc files the C library reads (not /etc as a whole).
    rules += [(p, _FS_READ_EXEC) for p in ("/usr", "/lib", "/lib64", "/bin", "/sbin")]
    rules += [(p, _FS_READ) for p in ("/etc/ld.so.cache", "/etc/localtime")]
    if plan.network:
        rules += [
            (p, _FS_READ)
            for p in ("/etc/ssl", "/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf",
                      "/etc/gai.conf", "/etc/host.conf", "/etc/services", "/etc/protocols")
        ]
    # /proc/self resolves to /proc/<own pid> when the rule is made: the node reads its own
    # process files, never another process's (the host's environ). CPU and memory sizes are
    # what numerical libraries size their thread pools and caches by.
    rules += [(p, _FS_READ) for p in ("/proc/self", "/proc/cpuinfo", "/proc/meminfo",
                                      "/sys/devices/system/cpu")]
    rules += [(p, _FS_READ) for p in ("/dev/zero", "/dev/urandom", "/dev/random")]
    rules.append(("/dev/null", _FS_READ | FS_WRITE_FILE))
    rules += [(p, _FS_READ_EXEC) for p in plan.plugin_paths]
    rules += [(p, _FS_READ) for p in plan.fs_read]
    rules += [(p, _FS_WRITE) for p in (*ICEORYX2_PATHS, plan.tmp_dir, *plan.fs_write)]
    return rules


def _apply_landlock(plan: SandboxPlan) -> list[str]:
    abi = _landlock_abi()
    if abi < 1:
        return []
    handled_fs = _fs_rights_for_abi(abi)
    handled_net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 and not plan.network else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    attr = _RulesetAttr(handled_fs, handled_net, scoped)
    ruleset = _syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr),
                       ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint32(0))
    try:
        for path, rights in _landlock_paths(plan):
            _add_path_rule(ruleset, path, rights & handled_fs)
        _syscall(SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0))
    finally:
        os.close(ruleset)
    layers = ["landlock_fs"]
    if handled_net:
        layers.append("landlock_net")
    if scoped:
        layers += ["landlock_scope_signal", "landlock_scope_abstract_unix"]
    return layers


def _add_path_rule(ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # absent or not traversable: nothing to grant
    try:
        if not os.path.isdir(f"/proc/self/fd/{fd}"):
            rights &= _FS_FILE_RIGHTS
        rule = _PathBeneathAttr(rights, fd)
        _syscall(SYS_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset),
                 ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH), ctypes.byref(rule), ctypes.c_uint32(0))
    finally:
        os.close(fd)


# --- seccomp ----------------------------------------------------------------------------------

AF_UNIX = 1
CLONE_THREAD = 0x00010000
# Reading or writing another process's memory or file descriptors (the host's secrets).
_CROSS_PROCESS_SYSCALLS = ("ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd")
# io_uring can create sockets and connect without passing through the socket() filter.
_IO_URING_SYSCALLS = ("io_uring_setup", "io_uring_enter", "io_uring_register")


def _apply_seccomp(seccomp: Any, plan: SandboxPlan) -> list[str]:
    eperm = seccomp.ERRNO(errno.EPERM)
    filt = seccomp.SyscallFilter(seccomp.ALLOW)
    layers = ["seccomp_ptrace"]
    _deny(filt, eperm, _CROSS_PROCESS_SYSCALLS)
    if not plan.network:
        not_unix = seccomp.Arg(0, seccomp.NE, AF_UNIX)
        filt.add_rule(eperm, "socket", not_unix)
        filt.add_rule(eperm, "socketpair", not_unix)
        _deny(filt, eperm, _IO_URING_SYSCALLS)
        layers.append("seccomp_net")
    if not plan.allow_subprocesses:
        # Threads are clone(CLONE_THREAD|...); a process is clone without it, fork or vfork.
        # clone3 keeps its flags in memory a filter cannot read: ENOSYS makes glibc fall back
        # to clone, where the flags are checked.
        _deny(filt, eperm, ("fork", "vfork"))
        filt.add_rule(eperm, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, CLONE_THREAD, 0))
        _deny(filt, seccomp.ERRNO(errno.ENOSYS), ("clone3",))
        layers.append("seccomp_fork")
    try:
        # TSYNC: the filter binds every thread, including ones started before apply.
        filt.set_attr(seccomp.Attr.CTL_TSYNC, 1)
        filt.load()
    except OSError:
        return []
    return layers


def _deny(filt: Any, action: int, names: Iterable[str]) -> None:
    for name in names:
        with contextlib.suppress(OSError, ValueError):  # no such syscall on this architecture
            filt.add_rule(action, name)
