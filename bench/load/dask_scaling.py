#!/usr/bin/python3
"""Scale-out with Dask (issue #21, docs/performance.md "Dask"): encrypt_npy of ROWS vectors of
d = 384 through one worker on one node, through two workers on two nodes (one token shared through
p11-kit server, as tests/python/test_dask.py sets up), and through a plain loop over the same
partitions in one process with the Python client: the peer that Dask's overhead is measured
against. Rounds alternate the three; each prints vectors/s and the CPU seconds spent by the
daemons, the workers (client and Dask in one process), the scheduler and the plain loop.

    bench/load/dask_scaling.py VECSEALD [ROUNDS] [ROWS] [ROWS_PER_PARTITION]

ROWS_PER_PARTITION defaults to encrypt_npy's own default, 20 000.
"""
import os
import resource
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
CLIENT = os.path.join(ROOT, "clients", "python")
sys.path.insert(0, CLIENT)
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))

import numpy as np  # noqa: E402
import shared_hsm  # noqa: E402

DIM = 384


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_ticks():
    """(busy, iowait, all) ticks of every CPU since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    busy = user + nice + system + irq + softirq + steal
    return busy, iowait, busy + idle + iowait


def measure(label, run, daemons, workers, scheduler):
    others = workers + scheduler
    before = {p: cpu_seconds(p) for p in daemons + others}
    own = own_cpu()
    machine = machine_ticks()
    start = time.perf_counter()
    run()
    wall = time.perf_counter() - start
    busy, iowait, total = (after - then for after, then in zip(machine_ticks(), machine))
    daemon_cpu = sum(cpu_seconds(p) - before[p] for p in daemons)
    worker_cpu = sum(cpu_seconds(p) - before[p] for p in workers)
    scheduler_cpu = sum(cpu_seconds(p) - before[p] for p in scheduler)
    return {"label": label, "wall": wall, "daemons": daemon_cpu, "workers": worker_cpu,
            "scheduler": scheduler_cpu,
            "self": own_cpu() - own, "busy": busy / total, "iowait": iowait / total}


def main():
    vecseald = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    rows = int(sys.argv[3]) if len(sys.argv) > 3 else 200_000
    partition = int(sys.argv[4]) if len(sys.argv) > 4 else 20_000
    import vecseal
    import vecseal.dask
    from vecseal.partitions import encrypt_partition

    rng = np.random.default_rng(5)
    data = rng.standard_normal((rows, DIM)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    results = []
    with shared_hsm.SharedHsm(vecseald) as hsm, tempfile.TemporaryDirectory() as work:
        a, b = hsm.start_node("a"), hsm.start_node("b")
        with vecseal.Client(a.socket) as admin:
            admin.create_key("bench", 0.5, dimension=DIM)
        source = os.path.join(work, "in.npy")
        np.save(source, data)
        one = shared_hsm.DaskWorkers(os.path.join(hsm.root), [a], CLIENT)
        client_one = one.client(1)
        two_dir = os.path.join(hsm.root, "two")
        os.makedirs(two_dir)
        two = shared_hsm.DaskWorkers(two_dir, [a, b], CLIENT)
        client_two = two.client(2)
        daemons = [a.process.pid, b.process.pid]
        try:
            def plain():
                # Written as encrypt_npy's tasks write: a pwrite of each partition's rows at
                # their offset, the file synced once at the end.
                target = os.path.join(work, "plain.npy")
                np.lib.format.open_memmap(target, mode="w+", dtype=np.float32,
                                          shape=data.shape).flush()
                offset = np.load(target, mmap_mode="r").offset
                source_rows = np.load(source, mmap_mode="r")
                for start in range(0, rows, partition):
                    sealed = encrypt_partition(source_rows[start:start + partition], "bench",
                                               socket_path=a.socket)
                    vecseal.dask._write_at(target, offset + start * DIM * 4, sealed)
                with open(target, "rb+") as written:
                    os.fsync(written.fileno())

            def dask_job(client, name):
                def job():
                    vecseal.dask.encrypt_npy(source, os.path.join(work, name), "bench",
                                             rows_per_partition=partition, client=client)
                return job

            for round_ in range(rounds):
                for label, run, cluster in (
                        ("plain loop, node a", plain, None),
                        ("dask, 1 worker on node a", dask_job(client_one, "one.npy"), one),
                        ("dask, 2 workers on nodes a and b", dask_job(client_two, "two.npy"), two)):
                    pids = [p.pid for p in cluster.processes] if cluster else []
                    result = measure(label, run, daemons, pids[1:], pids[:1])
                    result["round"] = round_ + 1
                    results.append(result)
                    print(f"round {round_ + 1} {label}: {rows / result['wall']:,.0f} vectors/s; "
                          f"CPU s: daemons {result['daemons']:.2f}, workers "
                          f"{result['workers']:.2f}, scheduler {result['scheduler']:.2f}, "
                          f"this process {result['self']:.2f}; "
                          f"machine busy {result['busy']:.0%}, iowait {result['iowait']:.0%}",
                          flush=True)
        finally:
            client_one.close()
            client_two.close()
            one.close()
            two.close()
    print("\nmedians over rounds:")
    by_label = {}
    for r in results:
        by_label.setdefault(r["label"], []).append(r)
    medians = {}
    for label, runs in by_label.items():
        medians[label] = statistics.median(rows / r["wall"] for r in runs)
        print(f"  {label}: {medians[label]:,.0f} vectors/s; CPU s per 100k vectors: daemons "
              f"{statistics.median(r['daemons'] for r in runs) * 1e5 / rows:.2f}, "
              f"workers {statistics.median(r['workers'] for r in runs) * 1e5 / rows:.2f}, "
              f"scheduler {statistics.median(r['scheduler'] for r in runs) * 1e5 / rows:.2f}, "
              f"this process {statistics.median(r['self'] for r in runs) * 1e5 / rows:.2f}; "
              f"machine busy {statistics.median(r['busy'] for r in runs):.0%}, "
              f"iowait {statistics.median(r['iowait'] for r in runs):.0%}")
    labels = list(by_label)
    print(f"  dask 1 worker / plain loop: {medians[labels[1]] / medians[labels[0]]:.2f}")
    print(f"  dask 2 workers / 1 worker:  {medians[labels[2]] / medians[labels[1]]:.2f}")


if __name__ == "__main__":
    main()
