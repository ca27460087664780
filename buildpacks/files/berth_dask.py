"""berth's session hook for Dask, loaded by `_berth_dask.pth` in the kernel environment.

In a berth session `DASK_SCHEDULER_ADDRESS` points at the session's cluster, so `Client()`
with no arguments connects to it. Notebooks written for a laptop start with
`Client(n_workers=4)`: distributed refuses local-cluster arguments when a scheduler address is
configured ("Unexpected keyword arguments"). This hook lets such a call start the local
cluster it asks for, in the kernel, and says so in one line. Nothing is imported until the
notebook imports `distributed.client` itself.
"""

import importlib.abc
import importlib.util
import inspect
import os
import sys

_NOTE = (
    "berth: Client({args}) starts a local Dask cluster in this kernel, as asked; "
    "Client() with no arguments uses this session's cluster ({address})"
)


def _patch(module):
    client = getattr(module, "Client", None)
    if client is None or getattr(client, "_berth_patched", False):
        return
    original = client.__init__
    named = set(inspect.signature(original).parameters)

    def __init__(self, address=None, *args, **kwargs):
        extra = sorted(k for k in kwargs if k not in named)
        if address is None and extra and "scheduler_file" not in kwargs:
            import dask

            configured = dask.config.get("scheduler-address", None)
            if configured:
                print(
                    _NOTE.format(args=", ".join(f"{k}=…" for k in extra), address=configured),
                    file=sys.stderr,
                )
                with dask.config.set({"scheduler-address": None}):
                    return original(self, None, *args, **kwargs)
        return original(self, address, *args, **kwargs)

    __init__.__wrapped__ = original
    __init__.__doc__ = original.__doc__
    client.__init__ = __init__
    client._berth_patched = True


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "distributed.client":
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            pass
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def run(module):
            exec_module(module)
            try:
                _patch(module)
            except Exception:  # never break the import of distributed itself
                pass

        loader.exec_module = run
        return spec


if os.environ.get("DASK_SCHEDULER_ADDRESS") and "distributed.client" not in sys.modules:
    sys.meta_path.insert(0, _Finder())
