"""Reads berth's /data over HTTP with readers nobody here wrote: xarray + zarr-python (fsspec's
HTTP file system) and pystac. Usage: data_readers.py BASE_URL NAME=FILE.nc ...
Exits non-zero (with the reason) when anything differs from xarray's reading of the NetCDF."""
import sys
import warnings

import numpy as np
import pystac
import xarray as xr
from pystac.extensions.datacube import DatacubeExtension

warnings.simplefilter("error")  # e.g. zarr's "consolidated metadata" warnings are failures
base = sys.argv[1]
sets = dict(a.split("=", 1) for a in sys.argv[2:])

for name, nc in sets.items():
    ref = xr.open_dataset(nc).load()
    # Without consolidated metadata: zarr-python lists the store's directories over HTTP.
    ds = xr.open_zarr(f"{base}/data/zarr/{name}", consolidated=False).load()
    xr.testing.assert_identical(ds, ref)
    # With it (the root zarr.json carries it inline): the default.
    ds = xr.open_zarr(f"{base}/data/zarr/{name}").load()
    xr.testing.assert_identical(ds, ref)
    print(f"{name}: open_zarr over HTTP identical to open_dataset")

cat = pystac.Catalog.from_file(f"{base}/data/catalog.json")
collections = {c.id: c for c in cat.get_children()}
assert set(collections) == set(sets), (sorted(collections), sorted(sets))
for name, nc in sets.items():
    ref = xr.open_dataset(nc).load()
    coll = collections[name]
    assert isinstance(coll, pystac.Collection), type(coll)
    assert DatacubeExtension.has_extension(coll), coll.stac_extensions
    cube = DatacubeExtension.ext(coll)
    dims = cube.dimensions
    assert set(dims) == set(ref.sizes), (sorted(dims), sorted(ref.sizes))
    for d, dim in dims.items():
        if d in ref.coords and ref[d].dtype.kind == "f":
            lo, hi = float(ref[d].min()), float(ref[d].max())
            assert dim.extent == [lo, hi] or np.allclose(dim.extent, [lo, hi]), (d, dim.extent, lo, hi)
    lat = [d for d, v in dims.items() if v.dim_type == "spatial" and v.to_dict().get("axis") == "y"]
    lon = [d for d, v in dims.items() if v.dim_type == "spatial" and v.to_dict().get("axis") == "x"]
    assert lat == ["latitude"] and lon == ["longitude"], (lat, lon)
    times = [d for d, v in dims.items() if v.dim_type == "temporal"]
    assert times == ["time"], times
    t0 = np.datetime_as_string(ref.time.values.min(), unit="s") + "Z"
    t1 = np.datetime_as_string(ref.time.values.max(), unit="s") + "Z"
    assert dims["time"].extent == [t0, t1], (dims["time"].extent, t0, t1)
    interval = coll.extent.temporal.intervals[0]
    assert [i.strftime("%Y-%m-%dT%H:%M:%SZ") for i in interval] == [t0, t1], interval
    bbox = coll.extent.spatial.bboxes[0]
    assert bbox[1] == float(ref.latitude.min()) and bbox[3] == float(ref.latitude.max()), bbox
    variables = cube.variables
    expected = {v for v in ref.variables if v not in ref.sizes}
    assert set(variables) == expected, (sorted(variables), sorted(expected))
    for v, var in variables.items():
        assert var.dimensions == list(ref[v].dims), (v, var.dimensions, ref[v].dims)
        if v in ref.data_vars and "units" in ref[v].attrs:
            assert var.unit == ref[v].attrs["units"], (v, var.unit)
    for v, var in variables.items():
        bounds_of = [c for c in ref.variables if ref[c].attrs.get("bounds") == v]
        # Non-dimension coordinates and cell bounds are auxiliary, the rest data.
        want = "auxiliary" if v in ref.coords or bounds_of else "data"
        assert var.var_type == want, (v, var.var_type, want)
    asset = coll.assets["zarr"]
    assert asset.media_type == "application/vnd+zarr" and asset.roles == ["data"], asset.to_dict()
    ds = xr.open_zarr(asset.href).load()
    xr.testing.assert_identical(ds, ref)
    print(f"{name}: STAC collection matches; asset {asset.href} opens identical")
print("ok")
