//! Numeric element types and the CF/xarray attribute conventions for Zarr v3.

use serde_json::{Map, Value};

/// A fixed-size numeric element type: the NetCDF numeric types, written with their Zarr v3
/// core data type names (Zarr v3 spec, "Data types").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dtype {
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F32,
    F64,
}

impl Dtype {
    /// Zarr v3 data type name.
    pub(crate) fn zarr_name(self) -> &'static str {
        match self {
            Dtype::I8 => "int8",
            Dtype::U8 => "uint8",
            Dtype::I16 => "int16",
            Dtype::U16 => "uint16",
            Dtype::I32 => "int32",
            Dtype::U32 => "uint32",
            Dtype::I64 => "int64",
            Dtype::U64 => "uint64",
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
        }
    }

    pub(crate) fn from_zarr_name(name: &str) -> Option<Dtype> {
        Some(match name {
            "int8" => Dtype::I8,
            "uint8" => Dtype::U8,
            "int16" => Dtype::I16,
            "uint16" => Dtype::U16,
            "int32" => Dtype::I32,
            "uint32" => Dtype::U32,
            "int64" => Dtype::I64,
            "uint64" => Dtype::U64,
            "float32" => Dtype::F32,
            "float64" => Dtype::F64,
            _ => return None,
        })
    }

    /// From a Zarr v2 (NumPy) dtype string such as `<f8`, `|i1`, `>i2`.
    pub(crate) fn from_v2_dtype(s: &str) -> Option<Dtype> {
        let body = s.trim_start_matches(['<', '>', '|', '=']);
        Some(match body {
            "i1" => Dtype::I8,
            "u1" => Dtype::U8,
            "i2" => Dtype::I16,
            "u2" => Dtype::U16,
            "i4" => Dtype::I32,
            "u4" => Dtype::U32,
            "i8" => Dtype::I64,
            "u8" => Dtype::U64,
            "f4" => Dtype::F32,
            "f8" => Dtype::F64,
            _ => return None,
        })
    }

    pub(crate) fn from_netcdf(t: &netcdf::types::NcVariableType) -> Option<Dtype> {
        use netcdf::types::{FloatType, IntType, NcVariableType};
        Some(match t {
            NcVariableType::Int(i) => match i {
                IntType::I8 => Dtype::I8,
                IntType::U8 => Dtype::U8,
                IntType::I16 => Dtype::I16,
                IntType::U16 => Dtype::U16,
                IntType::I32 => Dtype::I32,
                IntType::U32 => Dtype::U32,
                IntType::I64 => Dtype::I64,
                IntType::U64 => Dtype::U64,
            },
            NcVariableType::Float(FloatType::F32) => Dtype::F32,
            NcVariableType::Float(FloatType::F64) => Dtype::F64,
            _ => return None,
        })
    }

    /// Size of one element, bytes.
    pub(crate) fn size(self) -> usize {
        match self {
            Dtype::I8 | Dtype::U8 => 1,
            Dtype::I16 | Dtype::U16 => 2,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 4,
            Dtype::I64 | Dtype::U64 | Dtype::F64 => 8,
        }
    }

    pub(crate) fn is_float(self) -> bool {
        matches!(self, Dtype::F32 | Dtype::F64)
    }

    /// Native-endian element bytes as `f64` (64-bit integers beyond 2^53 lose precision; used
    /// for statistics and pictures only).
    pub(crate) fn to_f64(self, bytes: &[u8]) -> Vec<f64> {
        macro_rules! conv {
            ($t:ty) => {
                bytes
                    .chunks_exact(std::mem::size_of::<$t>())
                    .map(|c| <$t>::from_ne_bytes(c.try_into().expect("chunk size")) as f64)
                    .collect()
            };
        }
        match self {
            Dtype::I8 => conv!(i8),
            Dtype::U8 => conv!(u8),
            Dtype::I16 => conv!(i16),
            Dtype::U16 => conv!(u16),
            Dtype::I32 => conv!(i32),
            Dtype::U32 => conv!(u32),
            Dtype::I64 => conv!(i64),
            Dtype::U64 => conv!(u64),
            Dtype::F32 => conv!(f32),
            Dtype::F64 => conv!(f64),
        }
    }

    /// The Zarr v3 `fill_value` for this type when the source declares none: NaN for floats
    /// (as zarr-python and xarray write it), 0 for integers.
    pub(crate) fn default_fill(self) -> Value {
        if self.is_float() {
            Value::String("NaN".into())
        } else {
            Value::from(0)
        }
    }
}

/// A float as a Zarr v3 `fill_value` JSON value (Zarr v3 spec, "fill_value": NaN and the
/// infinities are the strings `"NaN"`, `"Infinity"`, `"-Infinity"`).
pub(crate) fn float_fill_json(v: f64) -> Value {
    if v.is_nan() {
        Value::String("NaN".into())
    } else if v == f64::INFINITY {
        Value::String("Infinity".into())
    } else if v == f64::NEG_INFINITY {
        Value::String("-Infinity".into())
    } else {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .unwrap_or(Value::Null)
    }
}

/// The value of a `_FillValue` attribute as xarray writes it into Zarr v3 array attributes
/// (xarray `backends/zarr.py`, `FillValueCoder.encode`): for a float type, the standard
/// base64 of the value as a little-endian IEEE 754 double (also for float32); for an integer
/// type, the integer.
pub(crate) fn encode_fill_attr(dtype: Dtype, v: f64, int: Option<i128>) -> Value {
    if dtype.is_float() {
        Value::String(base64_encode(&v.to_le_bytes()))
    } else {
        match int {
            Some(i) if i >= 0 => Value::from(i as u64),
            Some(i) => Value::from(i as i64),
            None => Value::from(v as i64),
        }
    }
}

/// The decoded number of a `_FillValue` attribute of a Zarr v3 array written in xarray's
/// convention (see [`encode_fill_attr`]); plain numbers are accepted too.
pub(crate) fn decode_fill_attr(v: &Value) -> Option<f64> {
    match v {
        Value::String(s) => {
            let b = base64_decode(s)?;
            let arr: [u8; 8] = b.as_slice().try_into().ok()?;
            Some(f64::from_le_bytes(arr))
        }
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

/// A JSON fill value (Zarr `fill_value` or number) as f64.
pub(crate) fn json_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648 §4).
pub(crate) fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(B64[(n >> 18) as usize & 63] as char);
        out.push(B64[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            B64[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            B64[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// Inverse of [`base64_encode`]; `None` on malformed input.
pub(crate) fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for ch in s.bytes() {
        let v = B64.iter().position(|&b| b == ch)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// A float attribute value as JSON. Non-finite values, which JSON cannot hold, become the
/// strings `"NaN"`, `"Infinity"`, `"-Infinity"` (as in Zarr v3 fill values).
fn float_json(v: f64) -> Value {
    float_fill_json(v)
}

/// A NetCDF attribute value as JSON: scalars as numbers or strings, vectors as arrays.
/// Float32 values are written as the exact double of the float, so NumPy compares equal.
pub(crate) fn netcdf_attr_json(v: &netcdf::AttributeValue) -> Value {
    use netcdf::AttributeValue as A;
    fn arr<T: Copy>(xs: &[T], f: impl Fn(T) -> Value) -> Value {
        Value::Array(xs.iter().map(|&x| f(x)).collect())
    }
    match v {
        A::Uchar(x) => Value::from(*x),
        A::Uchars(x) => arr(x, Value::from),
        A::Schar(x) => Value::from(*x),
        A::Schars(x) => arr(x, Value::from),
        A::Ushort(x) => Value::from(*x),
        A::Ushorts(x) => arr(x, Value::from),
        A::Short(x) => Value::from(*x),
        A::Shorts(x) => arr(x, Value::from),
        A::Uint(x) => Value::from(*x),
        A::Uints(x) => arr(x, Value::from),
        A::Int(x) => Value::from(*x),
        A::Ints(x) => arr(x, Value::from),
        A::Ulonglong(x) => Value::from(*x),
        A::Ulonglongs(x) => arr(x, Value::from),
        A::Longlong(x) => Value::from(*x),
        A::Longlongs(x) => arr(x, Value::from),
        A::Float(x) => float_json(f64::from(*x)),
        A::Floats(x) => arr(x, |v| float_json(f64::from(v))),
        A::Double(x) => float_json(*x),
        A::Doubles(x) => arr(x, float_json),
        A::Str(s) => Value::String(s.clone()),
        A::Strs(s) => Value::Array(s.iter().cloned().map(Value::String).collect()),
    }
}

/// The first number of a NetCDF attribute value (for `_FillValue`), as f64 and, for integer
/// values, exactly.
pub(crate) fn netcdf_attr_number(v: &netcdf::AttributeValue) -> Option<(f64, Option<i128>)> {
    use netcdf::AttributeValue as A;
    let int = |i: i128| Some((i as f64, Some(i)));
    match v {
        A::Uchar(x) => int(i128::from(*x)),
        A::Uchars(x) => int(i128::from(*x.first()?)),
        A::Schar(x) => int(i128::from(*x)),
        A::Schars(x) => int(i128::from(*x.first()?)),
        A::Ushort(x) => int(i128::from(*x)),
        A::Ushorts(x) => int(i128::from(*x.first()?)),
        A::Short(x) => int(i128::from(*x)),
        A::Shorts(x) => int(i128::from(*x.first()?)),
        A::Uint(x) => int(i128::from(*x)),
        A::Uints(x) => int(i128::from(*x.first()?)),
        A::Int(x) => int(i128::from(*x)),
        A::Ints(x) => int(i128::from(*x.first()?)),
        A::Ulonglong(x) => int(i128::from(*x)),
        A::Ulonglongs(x) => int(i128::from(*x.first()?)),
        A::Longlong(x) => int(i128::from(*x)),
        A::Longlongs(x) => int(i128::from(*x.first()?)),
        A::Float(x) => Some((f64::from(*x), None)),
        A::Floats(x) => Some((f64::from(*x.first()?), None)),
        A::Double(x) => Some((*x, None)),
        A::Doubles(x) => Some((*x.first()?, None)),
        A::Str(_) | A::Strs(_) => None,
    }
}

/// Numbers in an attribute value (a number or an array of numbers), e.g. `missing_value`.
pub(crate) fn attr_numbers(v: Option<&Value>) -> Vec<f64> {
    match v {
        Some(Value::Array(a)) => a.iter().filter_map(json_number).collect(),
        Some(v) => json_number(v).into_iter().collect(),
        None => Vec::new(),
    }
}

/// The CF decoding of a variable's attributes: values to mask and the packing.
/// CF conventions §2.5.1 (missing data: `_FillValue`, `missing_value`) and §8.1 (packed data:
/// `scale_factor`, `add_offset`).
#[derive(Debug, Clone)]
pub(crate) struct CfDecode {
    pub(crate) mask: Vec<f64>,
    pub(crate) scale: f64,
    pub(crate) offset: f64,
}

impl CfDecode {
    pub(crate) fn from_attrs(attrs: &Map<String, Value>) -> CfDecode {
        let mut mask: Vec<f64> = attrs
            .get("_FillValue")
            .and_then(decode_fill_attr)
            .into_iter()
            .collect();
        mask.extend(attr_numbers(attrs.get("missing_value")));
        let scale = attr_numbers(attrs.get("scale_factor"))
            .first()
            .copied()
            .unwrap_or(1.0);
        let offset = attr_numbers(attrs.get("add_offset"))
            .first()
            .copied()
            .unwrap_or(0.0);
        CfDecode {
            mask,
            scale,
            offset,
        }
    }

    /// The decoded value, or `None` if it is missing (NaN or a mask value).
    pub(crate) fn decode(&self, raw: f64) -> Option<f64> {
        if raw.is_nan() || self.mask.contains(&raw) {
            None
        } else {
            Some(raw * self.scale + self.offset)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_python() {
        // base64.standard_b64encode(struct.pack("<d", float("nan"))) == b"AAAAAAAA+H8="
        assert_eq!(base64_encode(&f64::NAN.to_le_bytes()), "AAAAAAAA+H8=");
        assert_eq!(
            base64_decode("AAAAAAAA+H8=").unwrap(),
            f64::NAN.to_le_bytes()
        );
        for s in [&b""[..], b"a", b"ab", b"abc", b"abcd"] {
            assert_eq!(base64_decode(&base64_encode(s)).unwrap(), s);
        }
        assert_eq!(base64_encode(b"ab"), "YWI=");
    }
}
