"""A one-node SLURM cluster on this machine, for the tests and by hand.

    python -m tests.slurm_cluster up /tmp/ifcn-slurm     # prints: export SLURM_CONF=… PATH=…
    python -m tests.slurm_cluster down /tmp/ifcn-slurm   # (make slurm-up / make slurm-down)

munged, slurmctld and slurmd run in the foreground as children of the process that starts them,
from one folder that holds everything they read and write (slurm.conf, the munge key and
socket, state, spool, job scripts, logs), on free ports: a machine that is itself a SLURM node,
or runs another such cluster, is not disturbed. The node is this machine, named localhost,
with its CPUs and memory as `slurmd -C` reports them, in one default partition; no cgroups
(proctrack/linuxproc, task/none), no accounting database (squeue answers for finished jobs:
MinJobAge=600).
The Snakemake jobstep executor (snakemake-executor-plugin-slurm-jobstep 0.6.1) removes every
SLURM_* variable but the job's id from the environment of the srun it starts inside each job,
SLURM_CONF included, so that srun looks for /etc/slurm/slurm.conf; a real cluster keeps its
config there, this one must not touch it: `env()` puts first on PATH a folder whose `srun` sets
SLURM_CONF again when it is missing.

Stopping cancels the jobs, waits for them to end, stops the daemons by their PIDs and removes
the folder. Under pytest the daemons are also bound to the test process (PR_SET_PDEATHSIG), so
that even a killed test run leaves none behind; its folder is removed by the next start.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = "slurm-wlm munge"
COMMANDS = (
    "munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo",
)  # fmt: skip
# The node's name: what `scontrol show hostnames` gives a job (MASTER_ADDR of the srun recipe)
# must resolve, and a CI container's host name need not.
NODE = "localhost"
PARTITION = "debug"
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL"}
PREFIX = "ifcn-slurm-"  # of the temporary folders of the tests' clusters
# SIGTERM to a job's processes, then this long before SIGKILL (SLURM's default): what a
# preempted or cancelled job has to checkpoint in.
KILL_WAIT = 30
PR_SET_PDEATHSIG = 1


def missing_commands() -> list[str]:
    """The commands of the OS packages (slurm-wlm, munge) that this machine lacks."""
    return [name for name in COMMANDS if shutil.which(name) is None]


@dataclass
class Cluster:
    folder: Path
    node: str
    cpus: int
    memory_mb: int
    partition: str = PARTITION
    pids: dict[str, int] = field(default_factory=dict)
    processes: list[subprocess.Popen] = field(default_factory=list, repr=False)

    @property
    def conf(self) -> Path:
        return self.folder / "slurm.conf"

    def env(self, environ: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
        """``environ`` (this process's by default) pointed at this cluster, without the
        variables of any job that this process itself may run in."""
        env = {
            key: value
            for key, value in (os.environ if environ is None else environ).items()
            if not key.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))
        }
        env.update(SLURM_CONF=str(self.conf), **extra)
        env["PATH"] = f"{self.folder / 'bin'}{os.pathsep}{env.get('PATH', os.defpath)}"
        return env

    def command(self, *args: str, timeout: float = 60) -> str:
        """Run a SLURM client command (scontrol, squeue, scancel …) on this cluster."""
        done = subprocess.run(args, env=self.env(), capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld knows, finished ones included (MinJobAge), as `scontrol show
        job` fields ([] before the first job)."""
        text = self.command("scontrol", "show", "job", "--oneliner")
        return [_fields(line) for line in text.splitlines() if line.startswith("JobId=")]

    def wait(self, job_id: str, timeout: float = 300) -> dict[str, str]:
        """The fields of job ``job_id`` once it has ended (polled every 0.2 s; `sbatch --wait`
        polls at growing intervals, up to half a minute)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = next(j for j in self.jobs() if j["JobId"] == job_id)
            if job["JobState"] in ENDED:
                return job
            time.sleep(0.2)
        raise TimeoutError(f"job {job_id} still {job['JobState']} after {timeout} s")

    def node_state(self) -> str:
        return self.command("sinfo", "--noheader", "--nodes", self.node, "--format", "%T").strip()


def _fields(line: str) -> dict[str, str]:
    """`Key=value Key=value …` of scontrol's one-line output (values may hold spaces only in
    the last fields, which are not needed)."""
    return dict(re.findall(r"(\S+?)=(\S*)", line))


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _hardware() -> tuple[int, int]:
    """CPUs and memory (MB) of this machine as slurmd counts them (what the node registers)."""
    text = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    values = _fields(text.splitlines()[0])
    return int(values["CPUs"]), int(values["RealMemory"])


def write_config(folder: Path, node: str, cpus: int, memory_mb: int) -> Path:
    controller = socket.gethostname().split(".")[0]  # slurmctld must find itself by this name
    ctld_port, slurmd_port = _free_ports(2)
    user = _user()
    text = f"""\
# A one-node test cluster (tests/slurm_cluster.py): everything lives in {folder}
ClusterName=ifcn-test
SlurmctldHost={controller}(127.0.0.1)
SlurmUser={user}
SlurmdUser={user}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge/munge.socket,cred_expire=5
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/log/slurmctld.log
SlurmdLogFile={folder}/log/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
# a pending job whose begin time has passed (a requeued one) waits for the next scheduling
# pass: every 2 s here, not every 30 to 60
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
MinJobAge=600
# jobs are not requeueable unless they ask (sbatch --requeue): the slurm profile must ask
JobRequeue=0
KillWait={KILL_WAIT}
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
    path = folder / "slurm.conf"
    path.write_text(text)
    return path


def _write_srun_wrapper(folder: Path) -> None:
    """bin/srun: the real srun with SLURM_CONF set to this cluster's when it is missing."""
    wrapper = folder / "bin" / "srun"
    wrapper.write_text(
        "#!/bin/sh\n"
        "# this test cluster's config for sruns whose environment lost SLURM_CONF\n"
        f'export SLURM_CONF="${{SLURM_CONF:-{folder}/slurm.conf}}"\n'
        f'exec {shutil.which("srun")} "$@"\n'
    )
    wrapper.chmod(0o755)


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def bind_to_parent(signum: int = signal.SIGTERM):
    """A preexec_fn: the child gets ``signum`` when the process that started it dies."""

    def bind() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum)

    return bind


def _start(cluster: Cluster, name: str, args: list[str], bound: bool) -> None:
    log = open(cluster.folder / "log" / f"{name}.out", "wb")  # noqa: SIM115 (the child keeps it)
    with log:
        process = subprocess.Popen(
            args,
            env=cluster.env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=bind_to_parent() if bound else None,
            start_new_session=not bound,
        )
    cluster.processes.append(process)
    cluster.pids[name] = process.pid
    (cluster.folder / "pids.json").write_text(json.dumps(cluster.pids))


def _log_tails(folder: Path) -> str:
    tails = []
    for path in sorted((folder / "log").glob("*")):
        lines = path.read_text(errors="replace").splitlines()[-8:]
        tails.append(f"--- {path.name}\n" + "\n".join(lines))
    return "\n".join(tails)


def _wait_until(condition, timeout: float, what: str, cluster: Cluster) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for name, pid in cluster.pids.items():
            if not alive(pid):
                raise RuntimeError(f"{name} exited while {what}:\n{_log_tails(cluster.folder)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out {what}:\n{_log_tails(cluster.folder)}")
        time.sleep(0.1)


def remove_stale_folders() -> None:
    """Remove the folders of test clusters whose daemons are all gone: a test run killed
    outright (SIGKILL, a CI timeout) takes its daemons along but cannot remove its folder."""
    for folder in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        try:
            pids = json.loads((folder / "pids.json").read_text()).values()
        except (OSError, ValueError, AttributeError):
            continue
        if not any(alive(pid) for pid in pids) and not stray_processes(folder):
            shutil.rmtree(folder, ignore_errors=True)


def start(folder: Path | None = None, bound: bool = True) -> Cluster:
    """Start the cluster in ``folder`` (a new temporary one by default); return once the node
    is idle. ``bound``: the daemons die with this process (tests); unbound they outlive it
    (`make slurm-up`). Anything started is stopped again if the start fails."""
    if folder is None:
        remove_stale_folders()
        folder = Path(tempfile.mkdtemp(prefix=PREFIX))
    else:
        folder.mkdir(parents=True)
    folder.chmod(0o755)  # munged wants its socket's folder searchable by every user
    for sub in ("munge", "state", "spool", "log", "bin"):
        (folder / sub).mkdir(mode=0o755)
    node = NODE
    cpus, memory_mb = _hardware()
    cluster = Cluster(folder, node, cpus, memory_mb)
    try:
        write_config(folder, node, cpus, memory_mb)
        _write_srun_wrapper(folder)
        key = folder / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        munge = [
            "munged", "--foreground", f"--key-file={key}",
            f"--socket={folder}/munge/munge.socket", f"--pid-file={folder}/munge/munged.pid",
            f"--seed-file={folder}/munge/munged.seed", f"--log-file={folder}/log/munged.log",
        ]  # fmt: skip
        _start(cluster, "munged", munge, bound)
        _wait_until(
            (folder / "munge" / "munge.socket").exists, 20, "waiting for munged's socket", cluster
        )
        _start(cluster, "slurmctld", ["slurmctld", "-D", "-f", str(cluster.conf)], bound)
        _start(cluster, "slurmd", ["slurmd", "-D", "-f", str(cluster.conf), "-N", node], bound)
        _wait_until(lambda: _node_idle(cluster), 60, f"waiting for node {node} to be idle", cluster)
    except BaseException:
        stop(cluster)
        raise
    return cluster


def _node_idle(cluster: Cluster) -> bool:
    try:
        return cluster.node_state() == "idle"
    except (RuntimeError, subprocess.TimeoutExpired):
        return False


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def stray_processes(folder: Path) -> list[int]:
    """PIDs of the processes of the cluster in ``folder``'s jobs: slurmstepd and what it runs
    (their environment names the cluster's slurm.conf and, for job processes, a job id). Not
    a shell or a make that merely points at the cluster."""
    conf = f"SLURM_CONF={folder / 'slurm.conf'}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            name = (proc / "comm").read_bytes().strip()
        except OSError:
            continue
        job = any(value.startswith(b"SLURM_JOB_ID=") for value in environ)
        if conf in environ and (job or name == b"slurmstepd"):
            found.append(int(proc.name))
    return [pid for pid in found if alive(pid)]


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = [pid for pid in pids if alive(pid)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def stop(cluster: Cluster) -> None:
    """Cancel every job, stop the daemons (SIGTERM, then SIGKILL after 20 s), end what is left
    of the jobs and remove the folder."""
    folder = cluster.folder
    if cluster.pids.get("slurmctld") and alive(cluster.pids["slurmctld"]):
        try:
            ids = cluster.command("squeue", "--noheader", "--format", "%A").split()
            if ids:
                cluster.command("scancel", *ids)
                _wait_until_jobs_end(cluster, KILL_WAIT + 15)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"slurm test cluster: could not cancel its jobs: {exc}", file=sys.stderr)
    for name in ("slurmd", "slurmctld", "munged"):
        if name in cluster.pids:
            _signal(cluster.pids[name], signal.SIGTERM)
            if _wait_gone([cluster.pids[name]], 20):
                _signal(cluster.pids[name], signal.SIGKILL)
    for process in cluster.processes:
        process.wait()  # reap our children
    strays = stray_processes(folder)
    for pid in strays:
        _signal(pid, signal.SIGKILL)
    if _wait_gone(strays, 10):
        print(f"slurm test cluster: processes {strays} would not die", file=sys.stderr)
    shutil.rmtree(folder, ignore_errors=True)


def _wait_until_jobs_end(cluster: Cluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = cluster.command("squeue", "--noheader", "--format", "%T").split()
        if not states:
            return
        time.sleep(0.5)


def stop_folder(folder: Path) -> None:
    """Stop the cluster started (unbound) in ``folder``, from the PIDs it recorded."""
    pids = json.loads((folder / "pids.json").read_text())
    cpus, memory_mb = _hardware()
    cluster = Cluster(folder, NODE, cpus, memory_mb, pids=pids)
    stop(cluster)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("up", "down"):
        print("usage: python -m tests.slurm_cluster up|down FOLDER", file=sys.stderr)
        return 2
    action, folder = argv[0], Path(argv[1]).resolve()
    if action == "up":
        missing = missing_commands()
        if missing:
            print(f"needs {', '.join(missing)}: apt-get install {PACKAGES}", file=sys.stderr)
            return 1
        if folder.exists():
            print(f"{folder} exists: make slurm-down first (or remove it)", file=sys.stderr)
            return 1
        cluster = start(folder, bound=False)
        print(
            f"SLURM test cluster up: node {cluster.node} ({cluster.cpus} CPUs, "
            f"{cluster.memory_mb} MB), partition {cluster.partition}; daemons "
            + ", ".join(f"{name} {pid}" for name, pid in cluster.pids.items()),
            file=sys.stderr,
        )
        print(f"export SLURM_CONF={cluster.conf} PATH={folder / 'bin'}:$PATH")
        return 0
    if not (folder / "pids.json").is_file():
        print(f"no test cluster in {folder}", file=sys.stderr)
        return 1
    stop_folder(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
