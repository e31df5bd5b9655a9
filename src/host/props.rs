//! Reading Envoy properties and headers through the raw ABI (never the SDK's panicking getters).

use super::abi;
use proxy_wasm::types::MapType;

pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    abi::get_property(path).ok().flatten().filter(|b| !b.is_empty())
}

pub fn property_string(path: &[&str]) -> Option<String> {
    property(path).and_then(|b| String::from_utf8(b).ok())
}

/// An integer property (8 bytes, little-endian).
pub fn property_u64(path: &[&str]) -> Option<u64> {
    let b = property(path)?;
    let arr: [u8; 8] = b.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(arr))
}

/// The response headers, read in one host call, and a lookup into them.
pub fn response_headers() -> impl Fn(&str) -> Option<String> {
    let map = abi::get_map(MapType::HttpResponseHeaders).unwrap_or_default();
    move |name: &str| map.get(name).map(str::to_string)
}

pub fn response_header(name: &str) -> Option<String> {
    abi::get_map_value(MapType::HttpResponseHeaders, name).ok().flatten().and_then(|v| String::from_utf8(v).ok())
}

pub fn set_header(map: MapType, name: &str, value: Option<&str>) {
    let _ = abi::set_map_value(map, name, value.map(str::as_bytes));
}
