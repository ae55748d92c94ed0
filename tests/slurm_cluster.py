"""A real single-node SLURM cluster for the tests, on 127.0.0.1 only: munged, slurmctld and slurmd (Debian's munge
and slurm-wlm packages) with their own key, configuration, state and logs in a fresh folder, on ports reserved while
it runs (conftest.ReservedPorts); clients find it through SLURM_CONF. The node declares 8 CPUs whatever the
machine has, so that several runs share it."""

import getpass
import os
import shutil
import signal
import subprocess
import tempfile
import time

from conftest import ReservedPorts

SBIN = "/usr/sbin:/usr/bin:/sbin:/bin"
INSTALL = "apt-get install -y slurm-wlm munge"
CONF = """ClusterName=lmtests
SlurmctldHost=localhost(127.0.0.1)
SlurmUser={user}
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge/socket,cred_expire=5
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmdParameters=config_overrides
ReturnToService=2
NodeName=localhost NodeAddr=127.0.0.1 CPUs=8 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE
"""


def missing() -> list[str]:
    """The daemons and commands of the cluster that are not installed."""
    return [c for c in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "srun")
            if shutil.which(c, path=SBIN) is None]


class Cluster:
    """The running cluster: `env` (os.environ with SLURM_CONF), its folder, and `stop()`."""

    def __init__(self):
        self.folder = tempfile.mkdtemp(prefix="lm-slurm-")
        d = self.folder
        for sub in ("munge", "state", "spool"):
            os.makedirs(f"{d}/{sub}")
        os.chmod(d, 0o755)  # munged wants its socket's folders open to every user
        os.chmod(f"{d}/munge", 0o755)
        with open(f"{d}/munge/key", "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(f"{d}/munge/key", 0o400)
        conf = f"{d}/slurm.conf"
        self._ports = ReservedPorts(2)
        ctld_port, d_port = self._ports.numbers
        with open(conf, "w") as f:
            f.write(CONF.format(d=d, user=getpass.getuser(), ctld_port=ctld_port, d_port=d_port))
        self.env = {**os.environ, "SLURM_CONF": conf, "PATH": f"{os.environ.get('PATH', '')}:{SBIN}"}
        self._run("munged", f"--socket={d}/munge/socket", f"--key-file={d}/munge/key", f"--log-file={d}/munge/log",
                  f"--pid-file={d}/munge/pid", f"--seed-file={d}/munge/seed")
        self._run("slurmctld", "-f", conf)
        self._run("slurmd", "-f", conf, "-N", "localhost")
        deadline = time.time() + 60
        while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True,
                                           text=True).stdout:
            if time.time() > deadline:
                self.stop()
                raise RuntimeError(f"the test SLURM cluster did not come up; see the logs in {d}")
            time.sleep(0.2)

    def _run(self, *cmd: str) -> None:
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{cmd[0]} did not start: {done.stderr.strip()}")

    def stop(self) -> None:
        """Cancels what is left, stops the daemons, removes the folder and gives back the ports."""
        subprocess.run(["scancel", "--full", "--user", getpass.getuser()], env=self.env,
                       capture_output=True)
        pids = []
        for pid_file in ("slurmd.pid", "slurmctld.pid", "munge/pid"):
            try:
                pids.append(int(open(os.path.join(self.folder, pid_file)).read()))
                os.kill(pids[-1], signal.SIGTERM)
            except (OSError, ValueError):
                pass  # gone, or never started
        deadline = time.time() + 10
        while time.time() < deadline and any(os.path.exists(f"/proc/{pid}") for pid in pids):
            time.sleep(0.05)
        shutil.rmtree(self.folder, ignore_errors=True)
        self._ports.release()
