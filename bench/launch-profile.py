"""Where a cached `berth launch` spends its time (bench/launch's breakdown; prints figures).

Runs `berth launch SOURCE --workers 2` RUNS times with the launcher's debug log and reads, for
each run: the moments of the launch's phases (stamped as the lines arrive), the CPU seconds of
each container at the moment the session is ready (the engine's stats API, as `docker stats`
reads it), of the engine's daemons (dockerd, containerd), of berth itself, and of the whole host
(/proc/stat, which includes the containers' runtimes and the kernel's share). Medians printed.

Usage: python3 bench/launch-profile.py BERTH SOURCE RUNS
"""
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse

berth, source, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
TICK = os.sysconf("SC_CLK_TCK")
PHASES = [
    ("creating network", "network"),
    ("jupyter container started", "jupyter container started"),
    ("containers started", "cluster containers started"),
    ("jupyter answers", "Jupyter answers (first probe that got 200)"),
    ("session ready", "scheduler sees 2 workers: ready"),
]


def engine_get(path):
    s = socket.socket(socket.AF_UNIX)
    s.connect("/var/run/docker.sock")
    s.sendall(f"GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    return json.loads(data.split(b"\r\n\r\n", 1)[1])


def proc_cpu(name):
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            comm = open(f"/proc/{pid}/comm").read().strip()
            if comm == name:
                f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
                total += int(f[11]) + int(f[12])
        except OSError:
            pass
    return total / TICK


def host_busy():
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (sum(f) - f[3] - f[4]) / TICK  # all but idle and iowait


def once():
    daemons0 = {d: proc_cpu(d) for d in ("dockerd", "containerd")}
    busy0 = host_busy()
    t0 = time.monotonic()
    p = subprocess.Popen(
        [berth, "launch", source, "--workers", "2", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "BERTH_LOG": "berth_launcher=debug", "NO_COLOR": "1"},
        text=True,
    )
    at = {}
    for line in p.stderr:
        for needle, _ in PHASES:
            if needle in line and needle not in at:
                at[needle] = time.monotonic() - t0
    out = p.stdout.read()
    p.wait()
    total = time.monotonic() - t0
    busy = host_busy() - busy0
    daemons = {d: proc_cpu(d) - daemons0[d] for d in daemons0}
    session = json.loads(out)["session"]
    cpu = {}
    filters = urllib.parse.quote(json.dumps({"label": [f"berth.session={session}"]}))
    for c in engine_get(f"/containers/json?all=1&filters={filters}"):
        name = c["Names"][0].lstrip("/").replace(f"berth-{session}-", "")
        stats = engine_get(f"/containers/{c['Id']}/stats?stream=false&one-shot=true")
        cpu[re.sub(r"-\d+$", "", name)] = cpu.get(re.sub(r"-\d+$", "", name), 0) + stats[
            "cpu_stats"
        ]["cpu_usage"]["total_usage"] / 1e9
    subprocess.run([berth, "stop", session], capture_output=True)
    return at, total, cpu, daemons, busy


results = [once() for _ in range(runs)]
med = lambda xs: statistics.median(xs) if xs else float("nan")
print(f"\nwhere a cached launch goes (median of {runs}; seconds since berth started)")
for needle, label in PHASES:
    print(f"  {label:<52} {med([r[0][needle] for r in results if needle in r[0]]):6.2f}")
print(f"  {'berth exits':<52} {med([r[1] for r in results]):6.2f}")
print("CPU seconds until ready")
for role in ("session", "scheduler", "worker"):
    label = {"session": "Jupyter (its container)", "scheduler": "scheduler", "worker": "2 workers"}[role]
    print(f"  {label:<52} {med([r[2].get(role, 0) for r in results]):6.2f}")
for d in ("dockerd", "containerd"):
    print(f"  {d:<52} {med([r[3][d] for r in results]):6.2f}")
usage = os.times()
print(f"  {'berth (all runs, per run)':<52} {(usage.children_user + usage.children_system) / runs:6.2f}")
print(f"  {'whole host, launch start to berth exit':<52} {med([r[4] for r in results]):6.2f}")
