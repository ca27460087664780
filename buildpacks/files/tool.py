"""berth's build-time helper, run with the image's system Python (`python3 /opt/berth/tool.py`).

Commands:
  record OUT            write the packages of the kernel, server and dashboard environments as
                        JSON to OUT (the format is berth_builder::record::Packages)
  prune-dashboard       remove from the dashboard folder every distribution the kernel
                        environment has too, so the scheduler sees one version of each
  jupyter PREFIX        write berth's Jupyter server configuration into PREFIX
  offline-clean         after an offline build: remove the uv_cache.json uv writes into the
                        metadata of distributions installed from local files (the wheelhouse),
                        and its line in their RECORD, so their metadata is what an install
                        from an index writes
  run FILE -- CMD...    run CMD; when it fails, print one line `berth-error: FILE: <reason>`
                        from its output (the package and the cause), then exit with its status
"""

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata

KERNEL = "/srv/venv"
SERVER = "/srv/server"
DASHBOARD = "/srv/dashboard"
JUPYTER_DATA = "/srv/berth/jupyter"


def normalize(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def site_packages(prefix):
    found = sorted(glob.glob(os.path.join(prefix, "lib", "python*", "site-packages")))
    return found[:1]


def dists(paths):
    out = {}
    for d in metadata.distributions(path=paths):
        name = d.metadata["Name"]
        if not name:
            continue
        key = normalize(name)
        if key in out:
            continue
        entry = {"name": key, "version": d.version}
        record = d.read_text("RECORD")
        if record is not None:
            # The digest of the installed files list; RECORD holds each file's own sha256.
            entry["sha256"] = hashlib.sha256(record.encode()).hexdigest()
        installer = (d.read_text("INSTALLER") or "").strip()
        if installer:
            entry["installer"] = installer
        direct = d.read_text("direct_url.json")
        if direct:
            try:
                url = json.loads(direct)
                entry["direct_url"] = url.get("url")
                if url.get("dir_info", {}).get("editable"):
                    entry["editable"] = True
            except ValueError:
                pass
        out[key] = entry
    return [out[k] for k in sorted(out)]


def record(path):
    python = subprocess.run(
        [os.path.join(KERNEL, "bin", "python"), "-c", "import platform; print(platform.python_version())"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    doc = {"format": 1, "python": python, "kernel": dists(site_packages(KERNEL))}
    server = site_packages(SERVER)
    doc["server"] = dists(server) if server else None
    doc["dashboard"] = dists([DASHBOARD]) if os.path.isdir(DASHBOARD) else None
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.write("\n")


def offline_clean():
    prefixes = site_packages(KERNEL) + site_packages(SERVER) + [DASHBOARD]
    for prefix in prefixes:
        for info in sorted(glob.glob(os.path.join(prefix, "*.dist-info"))):
            cache = os.path.join(info, "uv_cache.json")
            if not os.path.isfile(cache):
                continue
            os.remove(cache)
            record_file = os.path.join(info, "RECORD")
            if os.path.isfile(record_file):
                entry = os.path.basename(info) + "/uv_cache.json,"
                with open(record_file) as f:
                    lines = f.readlines()
                with open(record_file, "w") as f:
                    f.writelines(l for l in lines if not l.startswith(entry))


def _top_levels(d):
    return {str(f).split("/")[0] for f in (d.files or []) if not str(f).startswith("..")}


def prune_dashboard():
    if not os.path.isdir(DASHBOARD):
        return
    kernel = {d["name"] for d in dists(site_packages(KERNEL))}
    drop, keep = [], []
    for d in metadata.distributions(path=[DASHBOARD]):
        (drop if normalize(d.metadata["Name"] or "") in kernel else keep).append(d)
    kept = set()
    for d in keep:
        kept |= _top_levels(d)
    for d in drop:
        for top in _top_levels(d) - kept:
            p = os.path.normpath(os.path.join(DASHBOARD, top))
            if not p.startswith(DASHBOARD + os.sep) or top == "bin":
                continue
            if os.path.isdir(p):
                shutil.rmtree(p, ignore_errors=True)
            elif os.path.isfile(p):
                os.remove(p)
        for f in d.files or []:
            p = os.path.normpath(os.path.join(DASHBOARD, str(f)))
            if p.startswith(DASHBOARD + os.sep) and os.path.isfile(p):
                os.remove(p)
    # Folders left empty by the removal.
    for root, dirs, files in os.walk(DASHBOARD, topdown=False):
        if root != DASHBOARD and not os.listdir(root):
            os.rmdir(root)


def jupyter(prefix):
    conf = os.path.join(prefix, "etc", "jupyter")
    os.makedirs(conf, exist_ok=True)
    # A Python configuration file: traitlets reads jupyter_server_config.py (and .json) from
    # each configuration folder; the .d folders only enable extensions.
    with open(os.path.join(conf, "jupyter_server_config.py"), "w") as f:
        f.write(SERVER_CONFIG)
    settings = os.path.join(prefix, "share", "jupyter", "lab", "settings")
    os.makedirs(settings, exist_ok=True)
    with open(os.path.join(settings, "overrides.json"), "w") as f:
        json.dump({"dask-labextension:plugin": {"browserDashboardCheck": True}}, f, indent=1)


SERVER_CONFIG = """# Written by berth.
import json
import os

# The session's dashboard through Jupyter's own proxy, with Jupyter's token:
# {base_url}proxy/scheduler:8787/status (jupyter-server-proxy).
c.ServerProxy.host_allowlist = ["localhost", "127.0.0.1", "scheduler"]
# The python3 kernel is berth's spec (the kernel environment), never the server's own
# interpreter.
c.KernelSpecManager.ensure_native_kernel = False

# The Dask JupyterLab extension opens the session's dashboard: its URL depends on the
# session's base URL, which the launcher passes as BERTH_DASHBOARD_URL; written as the user's
# default once (a user's own choice stays).
_url = os.environ.get("BERTH_DASHBOARD_URL")
if _url:
    _dir = os.path.expanduser("~/.jupyter/lab/user-settings/dask-labextension")
    _file = os.path.join(_dir, "plugin.jupyterlab-settings")
    if not os.path.exists(_file):
        try:
            os.makedirs(_dir, exist_ok=True)
            with open(_file, "w") as _f:
                json.dump({"defaultURL": _url, "browserDashboardCheck": True}, _f)
        except OSError:
            pass
"""


def summary(lines):
    """The cause of a failed install, as one line: uv's error and its `Caused by` chain."""
    text = [re.sub(r"\x1b\[[0-9;]*m", "", l).rstrip() for l in lines]
    start = None
    for i, l in enumerate(text):
        s = l.strip()
        if s.startswith("error:") or s.startswith("×") or s.startswith("ERROR:"):
            start = i
            break
    picked = text[start:] if start is not None else text[-3:]
    parts = []
    for l in picked:
        s = re.sub(r"^[\s│├╰─▶×]+", "", l).strip()
        s = re.sub(r"^(error|Caused by|ERROR):\s*", "", s)
        s = s.rstrip(":").strip()
        if not s or s.startswith("help:") or s.startswith("hint:"):
            continue
        if s not in parts:
            parts.append(s)
    out = ": ".join(parts)
    return out if len(out) <= 400 else out[:399] + "…"


def offline_cause(text):
    """In an offline build (BERTH_OFFLINE set), the distribution the sources folder lacks, as
    `NAME[==VERSION] is not in the offline wheelhouse`; None for other failures."""
    joined = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", l).strip() for l in text)
    m = re.search(r"Because ([A-Za-z0-9._-]+) was not found in the (?:cache|provided package locations)", joined)
    if m:
        name = m.group(1)
        pin = re.search(r"you require " + re.escape(name) + r"(==[^\s,]+)", joined)
        return name + (pin.group(1) if pin else "") + " is not in the offline wheelhouse"
    m = re.search(r"No matching distribution found for ([^\s]+)", joined)
    if m:
        return m.group(1) + " is not in the offline wheelhouse"
    return None


def run(file, cmd):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail = []
    for line in proc.stdout:
        sys.stdout.write(line)
        tail.append(line)
        if len(tail) > 200:
            tail.pop(0)
    code = proc.wait()
    if code != 0:
        sys.stdout.flush()
        cause = offline_cause(tail) if os.environ.get("BERTH_OFFLINE") else None
        print(f"berth-error: {file}: {cause or summary(tail)}", flush=True)
    return code


def main(argv):
    if argv[:1] == ["record"] and len(argv) == 2:
        record(argv[1])
    elif argv == ["offline-clean"]:
        offline_clean()
    elif argv == ["prune-dashboard"]:
        prune_dashboard()
    elif argv[:1] == ["jupyter"] and len(argv) == 2:
        jupyter(argv[1])
    elif argv[:1] == ["run"] and len(argv) > 3 and argv[2] == "--":
        return run(argv[1], argv[3:])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
