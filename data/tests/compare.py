"""Compares a Zarr v3 store written by berth-data with what xarray reads from the sources.

Usage: compare.py STORE MODE SOURCE...
  MODE single: xr.open_dataset(SOURCE)
       merge:  xr.merge([xr.open_dataset(s) for s in SOURCES], combine_attrs="override")
       concat=DIM: xr.concat([xr.open_dataset(s) for s in SOURCES], dim=DIM,
                              data_vars="minimal", coords="minimal", compat="override")
       zarr:   xr.open_zarr(SOURCE) (a Zarr v2 or v3 store)
Exits 0 if xr.testing.assert_identical holds (values, dtypes, dims, coordinates, attributes,
decoded times, masked missing values), 1 with the difference otherwise.
"""
import sys
import warnings

import xarray as xr

warnings.simplefilter("ignore", RuntimeWarning)


def main():
    store, mode, sources = sys.argv[1], sys.argv[2], sys.argv[3:]
    # Our stores carry consolidated metadata: open them as a user would; xarray's warning
    # about missing consolidated metadata is an error.
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*[Cc]onsolidated.*")
        ours = xr.open_zarr(store, decode_times=True).load()
    import zarr
    g = zarr.open_group(store, mode="r")
    if g.metadata.zarr_format != 3:
        print(f"store is Zarr v{g.metadata.zarr_format}, expected v3", file=sys.stderr)
        return 1
    close = mode == "single-close"
    if mode in ("single", "single-close"):
        ref = xr.open_dataset(sources[0], decode_times=True).load()
    elif mode == "merge":
        ref = xr.merge([xr.open_dataset(s, decode_times=True).load() for s in sources],
                       combine_attrs="override")
    elif mode.startswith("concat="):
        dim = mode.split("=", 1)[1]
        ref = xr.concat([xr.open_dataset(s, decode_times=True).load() for s in sources], dim=dim,
                        data_vars="minimal", coords="minimal", compat="override",
                        combine_attrs="override")
    elif mode == "zarr":
        ref = xr.open_zarr(sources[0], consolidated=False, decode_times=True).load()
    else:
        print(f"unknown mode {mode}", file=sys.stderr)
        return 2
    try:
        if close:
            # JSON attributes carry no float32 type: xarray decodes data packed with float32
            # scale_factor/add_offset to float64 from Zarr (float32 from NetCDF). Same values
            # to float32 precision, same attributes, coordinates and dims.
            for name, v in ref.data_vars.items():
                if v.dtype == "float32" and ours[name].dtype == "float64":
                    ref[name] = v.astype("float64")
            xr.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
            from xarray.core.utils import dict_equiv
            for name, v in ref.variables.items():
                assert dict_equiv(ours[name].attrs, v.attrs), f"attributes of {name}"
            assert dict_equiv(ours.attrs, ref.attrs), "global attributes"
            print(f"equal to float32 precision: {store}")
            return 0
        xr.testing.assert_identical(ours, ref)
    except AssertionError as e:
        print(f"NOT IDENTICAL: {store} vs {mode} {sources}\n{e}", file=sys.stderr)
        print(f"ours:\n{ours}\nreference:\n{ref}", file=sys.stderr)
        return 1
    # assert_identical does not compare dtypes of coordinates' encodings; check data dtypes.
    for name, v in ref.variables.items():
        if ours[name].dtype != v.dtype:
            print(f"dtype of {name}: {ours[name].dtype} != {v.dtype}", file=sys.stderr)
            return 1
    print(f"identical: {store}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
