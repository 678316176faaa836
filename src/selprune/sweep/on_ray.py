"""`selprune sweep GRID.toml --ray [ADDRESS]`: each run of the sweep as a task on Ray, which places the runs
on the machines of a cluster, one run per worker, each with the CPUs and GPUs the sweep asks for.

The selprune process (Ray's driver) does what a sweep does without Ray: it decides what is left, then writes
the timings and the one summary. A task runs one run in its folder and resumes it from how far the folder got,
so a task that Ray runs again after its worker died (RETRIES) continues where the dead one stopped. Every
machine needs selprune installed and the folder the sweep was started in at the same path (shared storage),
since the grid's paths and the sweep's folder are read from there.
"""

from __future__ import annotations

import math
import os
import platform
import socket
from dataclasses import dataclass

from ..errors import OutOfMemory, UserError
from .kinds import Done, Pending, finish

LOCAL = "local"  # Ray's address for "start a local instance of my own"
CONNECT_S = 10  # seconds to wait for a cluster's head to answer
RETRIES = 3  # times a run whose worker died (killed, out of memory, its machine lost) is run again
INSTALL = ('selprune sweep --ray needs the ray package, which is not installed: pip install -e ".[ray]" '
           "in selprune's folder (the same Ray version on every machine of the cluster)")


def _ray():
    try:
        import ray
    except ImportError:
        raise UserError(INSTALL) from None
    return ray


@dataclass(frozen=True)
class Cluster:
    """Where the runs go: a Ray cluster's head (HOST:PORT, or "auto" for the one this machine belongs to), or
    LOCAL, a Ray instance started here for the sweep; and what each run asks Ray for."""

    address: str = LOCAL
    cpus: float = 1.0
    gpus: float = 0.0

    def __post_init__(self):
        if not (math.isfinite(self.cpus) and self.cpus > 0):
            raise UserError(f"--ray-cpus {self.cpus:g}: give the CPUs a run needs, a number above 0, e.g. 4")
        if not (math.isfinite(self.gpus) and self.gpus >= 0):
            raise UserError(f"--ray-gpus {self.gpus:g}: give the GPUs a run needs, 0 or more, e.g. 1")

    def describe(self) -> str:
        where = "a local instance" if self.address == LOCAL else self.address
        gpus = f" and {self.gpus:g} GPU(s)" if self.gpus else ""
        return f"{where}, {self.cpus:g} CPU(s){gpus} a run"

    def run(self, todo: list[Pending], quiet: bool):
        """Send every run to Ray, then yield (run, Done or the error it failed with) as each ends. A Ray already
        initialised in this process is used as it is; one started here is shut down at the end."""
        if not todo:
            return
        ray = _ray()
        started = not ray.is_initialized()
        if started:
            self._connect(ray)
        tasks = {}
        try:
            self._check_fits(ray)
            remote = ray.remote(run_on_worker).options(num_cpus=self.cpus, num_gpus=self.gpus,
                                                       max_retries=RETRIES)
            for pending in todo:
                print(f"{pending.prefix}: sent to Ray, {pending.doing()}", flush=True)
                tasks[remote.remote(pending.run, quiet, os.getcwd())] = pending
            while tasks:
                (ended,), _ = ray.wait(list(tasks), num_returns=1)
                yield tasks.pop(ended), _outcome(ray, ended)
        finally:
            for task in tasks:  # the sweep stopped (a bug, Ctrl-C): its other runs stop too, resumable
                ray.cancel(task, force=True)
            if started:
                ray.shutdown()

    def _connect(self, ray) -> None:
        host, _, port = self.address.rpartition(":")
        if host and port.isdigit():  # Ray would retry an address where nothing listens for minutes
            try:
                socket.create_connection((host, int(port)), timeout=CONNECT_S).close()
            except OSError as exc:
                self._unreachable(exc.strerror or "no answer")
        try:
            ray.init(address=self.address, include_dashboard=False if self.address == LOCAL else None)
        except ConnectionError as exc:
            self._unreachable(str(exc).splitlines()[0])

    def _unreachable(self, why: str):
        raise UserError(f"cannot reach a Ray cluster at {self.address} ({why}): start it with `ray start --head` "
                        "on its head machine and give that machine's HOST:6379, or leave the address out for a "
                        "local instance; a cluster with token authentication (Ray's default since 2.59) also "
                        "needs RAY_AUTH_MODE=token and its token here (README: Sweeps on a Ray cluster)") from None

    def _check_fits(self, ray) -> None:
        """Refuse runs that no machine of the cluster could take (Ray would wait for one for ever)."""
        machines = [node["Resources"] for node in ray.nodes() if node["Alive"]]
        if not any(m.get("CPU", 0) >= self.cpus and m.get("GPU", 0) >= self.gpus for m in machines):
            largest = max(machines, key=lambda m: (m.get("GPU", 0), m.get("CPU", 0)), default={})
            raise UserError(f"no machine of the Ray cluster has the {self.cpus:g} CPU(s) and {self.gpus:g} "
                            f"GPU(s) a run asks for (the largest has {largest.get('CPU', 0):g} and "
                            f"{largest.get('GPU', 0):g}): lower --ray-cpus or --ray-gpus, or add such a machine")


def run_on_worker(run, quiet: bool, folder: str) -> Done | Exception:
    """A Ray task: one run, from the folder the sweep was started in, resumed if its folder got partway."""
    try:
        os.chdir(folder)
    except OSError:
        return UserError(f"{folder}, where the sweep was started, is not on {platform.node()}: put the sweep on "
                         "storage that every machine of the cluster mounts at the same path")
    return finish(run, quiet)


def _outcome(ray, task) -> Done | Exception:
    """What a task returned; a worker that died more often than Ray retries it fails the run, not the sweep. An
    error the run raised and did not return (a bug, a full disk) stops the sweep, as without Ray."""
    try:
        return ray.get(task)
    except ray.exceptions.RayTaskError:
        raise
    except ray.exceptions.OutOfMemoryError:
        return OutOfMemory("Ray stopped its worker, as its machine was running out of memory: ask for more of a "
                           "machine per run with --ray-cpus, or lower --batch-size")
    except ray.exceptions.RayError as exc:
        cause = str(exc).strip().splitlines()[0]
        return OSError(f"its Ray worker died on each of {RETRIES + 1} tries ({cause}); see the Ray logs of its "
                       "machine (/tmp/ray/session_latest/logs)")
