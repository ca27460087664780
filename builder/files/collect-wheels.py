"""berth's wheel collector, run by berth_builder::sources in a container of an environment image
with the environment's own Python (so pip picks the files whose tags fit it).

usage: python collect-wheels.py OUT REQS...

Each REQS file holds one `name==version` per line, each name once (pip refuses two versions
of one name in one call). Each is downloaded without its dependencies (a wheel,
else the sdist) into OUT/wheels; then, for every sdist, its build requirements (from its
pyproject.toml, else setuptools and wheel) with their dependencies, whose file names are listed
in OUT/build-deps/<sdist file name>.txt. A failure prints one line `berth-error: <cause>`.
"""

import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

PIP = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-cache-dir",
       "--progress-bar", "off"]
SDIST = (".tar.gz", ".zip", ".tar.bz2", ".tgz")


def pip(args):
    proc = subprocess.run(PIP + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        errors = [l.strip() for l in proc.stdout.splitlines() if l.startswith("ERROR:")]
        cause = errors[-1][len("ERROR:"):].strip() if errors else "pip download failed"
        print(f"berth-error: {cause}", flush=True)
        sys.exit(1)


def pyproject_text(path):
    """The text of the shallowest pyproject.toml in an sdist, or None."""
    names = []
    if path.endswith(".zip"):
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith("pyproject.toml")]
            if names:
                return z.read(min(names, key=lambda n: n.count("/"))).decode("utf-8", "replace")
        return None
    with tarfile.open(path) as t:
        members = [m for m in t.getmembers() if m.isfile() and m.name.endswith("pyproject.toml")]
        if not members:
            return None
        f = t.extractfile(min(members, key=lambda m: m.name.count("/")))
        return f.read().decode("utf-8", "replace") if f else None


def build_requires(path):
    default = ["setuptools>=40.8.0", "wheel"]
    text = pyproject_text(path)
    if text is None:
        return default
    try:
        import tomllib
        system = tomllib.loads(text).get("build-system", {})
        return list(system.get("requires", default)) if system else default
    except ImportError:
        m = re.search(r"\[build-system\][^\[]*?requires\s*=\s*\[(.*?)\]", text, re.S)
        if not m:
            return default
        return re.findall(r"[\"']([^\"']+)[\"']", m.group(1))
    except ValueError:
        return default


def main(out, reqs):
    wheels = os.path.join(out, "wheels")
    deps = os.path.join(out, "build-deps")
    os.makedirs(wheels, exist_ok=True)
    os.makedirs(deps, exist_ok=True)
    for r in reqs:
        pip(["--no-deps", "-d", wheels, "-r", r])
    for name in sorted(os.listdir(wheels)):
        if not name.endswith(SDIST):
            continue
        requires = build_requires(os.path.join(wheels, name))
        tmp = os.path.join(out, "tmp-build")
        os.makedirs(tmp, exist_ok=True)
        if requires:
            pip(["-d", tmp] + requires)
        files = sorted(os.listdir(tmp))
        for f in files:
            shutil.move(os.path.join(tmp, f), os.path.join(wheels, f))
        os.rmdir(tmp)
        with open(os.path.join(deps, name + ".txt"), "w") as f:
            f.write("".join(x + "\n" for x in files))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
