//! A header map as the host hands it over (the proxy-wasm map serialization), read in place:
//! one buffer and one table of spans, instead of a `String` and a `Vec` per header (a request
//! from an SDK carries 15-20 headers, and every request reads its headers and its answer's).
//!
//! The serialization: count (u32 LE), then (key length, value length) per pair (u32 LE each),
//! then each key and each value followed by a NUL. [`serialize`] writes it (headers the filter
//! hands the host), and [`serialize_path`] a property path, as the SDK does.

/// Byte ranges of one pair in [`HeaderMap::buf`]: key start, key length, value start, value length.
type Span = [u32; 4];

#[derive(Debug, Clone, Default)]
pub struct HeaderMap {
    buf: Vec<u8>,
    spans: Vec<Span>,
}

/// Maps are equal when their pairs are, in order (however their buffers are laid out).
impl PartialEq for HeaderMap {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}
impl Eq for HeaderMap {}

/// The bytes do not hold the map their own lengths describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

fn read_u32(bytes: &[u8], at: usize) -> Result<usize, Malformed> {
    let b: [u8; 4] =
        bytes.get(at..at.checked_add(4).ok_or(Malformed)?).ok_or(Malformed)?.try_into().map_err(|_| Malformed)?;
    usize::try_from(u32::from_le_bytes(b)).map_err(|_| Malformed)
}

fn u32_of(n: usize) -> Result<u32, Malformed> {
    u32::try_from(n).map_err(|_| Malformed)
}

impl HeaderMap {
    /// Decodes the host's serialization (empty input is an empty map), keeping the buffer.
    pub fn parse(buf: Vec<u8>) -> Result<Self, Malformed> {
        if buf.is_empty() {
            return Ok(Self::default());
        }
        let count = read_u32(&buf, 0)?;
        // The length table must fit before anything is reserved for `count` pairs.
        let mut p = count.checked_mul(8).and_then(|n| n.checked_add(4)).ok_or(Malformed)?;
        if p > buf.len() {
            return Err(Malformed);
        }
        let mut spans = Vec::with_capacity(count);
        for n in 0..count {
            let entry = 4 + n * 8;
            let key_len = read_u32(&buf, entry)?;
            let value_len = read_u32(&buf, entry + 4)?;
            let key_end = p.checked_add(key_len).ok_or(Malformed)?;
            // Skip the key's NUL; the last value's NUL may be missing without harm.
            let value_at = key_end.checked_add(1).ok_or(Malformed)?;
            let value_end = value_at.checked_add(value_len).ok_or(Malformed)?;
            if value_end > buf.len() {
                return Err(Malformed);
            }
            spans.push([u32_of(p)?, u32_of(key_len)?, u32_of(value_at)?, u32_of(value_len)?]);
            p = value_end.saturating_add(1);
        }
        Ok(HeaderMap { buf, spans })
    }

    /// A map of these pairs (tests, and maps the filter builds itself).
    pub fn from_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Self {
        let mut buf = Vec::new();
        let mut spans = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            let (k, v) = (k.as_ref(), v.as_ref());
            let (Ok(ks), Ok(kl)) = (u32_of(buf.len()), u32_of(k.len())) else { break };
            buf.extend_from_slice(k);
            let (Ok(vs), Ok(vl)) = (u32_of(buf.len()), u32_of(v.len())) else { break };
            buf.extend_from_slice(v);
            spans.push([ks, kl, vs, vl]);
        }
        HeaderMap { buf, spans }
    }

    fn slice(&self, start: u32, len: u32) -> &[u8] {
        let start = start as usize;
        self.buf.get(start..start.saturating_add(len as usize)).unwrap_or_default()
    }

    /// The pairs in order: key and value bytes.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.spans.iter().map(|&[ks, kl, vs, vl]| (self.slice(ks, kl), self.slice(vs, vl)))
    }

    /// The first value of `name` as bytes.
    pub fn get_bytes(&self, name: &str) -> Option<&[u8]> {
        self.iter().find(|(k, _)| *k == name.as_bytes()).map(|(_, v)| v)
    }

    /// The first value of `name`, when it is UTF-8.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_bytes(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn has(&self, name: &str) -> bool {
        self.get_bytes(name).is_some()
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

/// Encodes pairs as a proxy-wasm map. `Malformed` if a length does not fit its u32.
pub fn serialize<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Result<Vec<u8>, Malformed> {
    let mut size: usize = 4;
    for (k, v) in pairs {
        size = size
            .checked_add(k.as_ref().len())
            .and_then(|s| s.checked_add(v.as_ref().len()))
            .and_then(|s| s.checked_add(10))
            .ok_or(Malformed)?;
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&u32_of(pairs.len())?.to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&u32_of(k.as_ref().len())?.to_le_bytes());
        out.extend_from_slice(&u32_of(v.as_ref().len())?.to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    Ok(out)
}

/// Encodes a property path as the SDK does: the segments joined by NUL (no trailing NUL), e.g.
/// `["request", "path"]` is `b"request\0path"`; an empty path is empty.
pub fn serialize_path(path: &[&str]) -> Vec<u8> {
    let size = path.iter().fold(0usize, |n, s| n.saturating_add(s.len()).saturating_add(1));
    let mut out = Vec::with_capacity(size);
    for (i, segment) in path.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(segment.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SDK's test map, in its serialized form.
    const MAP: &[(&str, &str)] =
        &[(":method", "GET"), (":path", "/bytes/1"), (":authority", "httpbin.org"), ("Powered-By", "proxy-wasm")];

    fn map_bytes() -> Vec<u8> {
        let mut v = vec![4, 0, 0, 0];
        v.extend_from_slice(&[7, 0, 0, 0, 3, 0, 0, 0]);
        v.extend_from_slice(&[5, 0, 0, 0, 8, 0, 0, 0]);
        v.extend_from_slice(&[10, 0, 0, 0, 11, 0, 0, 0]);
        v.extend_from_slice(&[10, 0, 0, 0, 10, 0, 0, 0]);
        v.extend_from_slice(b":method\0GET\0:path\0/bytes/1\0:authority\0httpbin.org\0Powered-By\0proxy-wasm\0");
        v
    }

    #[test]
    fn reads_the_sdk_serialization_in_place() {
        let m = HeaderMap::parse(map_bytes()).unwrap();
        let got: Vec<(&[u8], &[u8])> = m.iter().collect();
        let want: Vec<(&[u8], &[u8])> = MAP.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())).collect();
        assert_eq!(got, want);
        assert_eq!(m.get(":path"), Some("/bytes/1"));
        assert!(m.has(":authority") && !m.has("x-absent"));
        assert_eq!(m, HeaderMap::from_pairs(MAP).clone());
        assert_eq!(m.len(), 4);
        assert!(HeaderMap::parse(vec![]).unwrap().is_empty());
        assert!(HeaderMap::parse(vec![0, 0, 0, 0]).unwrap().is_empty());
    }

    #[test]
    fn serializes_like_the_sdk_and_reads_back_in_place() {
        assert_eq!(serialize(MAP), Ok(map_bytes()));
        let empty: &[(&str, &str)] = &[];
        assert_eq!(serialize(empty), Ok(vec![0, 0, 0, 0]));
        for i in 0..=255u8 {
            let pairs: Vec<(&str, Vec<u8>)> = vec![("c", vec![i]), ("", vec![]), ("k", vec![0, i, 0])];
            assert_eq!(HeaderMap::parse(serialize(&pairs).unwrap()).unwrap(), HeaderMap::from_pairs(&pairs));
        }
    }

    #[test]
    fn path_is_nul_separated() {
        assert_eq!(serialize_path(&[]), Vec::<u8>::new());
        assert_eq!(serialize_path(&["request"]), b"request".to_vec());
        assert_eq!(serialize_path(&["request", "path"]), b"request\0path".to_vec());
        assert_eq!(serialize_path(&["a", "", "b"]), b"a\0\0b".to_vec());
    }

    #[test]
    fn values_are_bytes_and_non_utf8_is_not_a_str() {
        let m = HeaderMap::from_pairs(&[(&b"k"[..], &[0xffu8, 0][..]), (&b""[..], &b""[..])]);
        assert_eq!(m.get_bytes("k"), Some(&[0xffu8, 0][..]));
        assert_eq!(m.get("k"), None);
        assert_eq!(m.get(""), Some(""));
    }

    #[test]
    fn malformed_is_refused_never_a_panic() {
        let good = map_bytes();
        // Every truncation that cuts into a key or value (or the table) fails.
        for cut in 1..good.len() - 1 {
            assert_eq!(HeaderMap::parse(good[..cut].to_vec()), Err(Malformed), "cut at {cut}");
        }
        // The last NUL may be missing.
        assert!(HeaderMap::parse(good[..good.len() - 1].to_vec()).is_ok());
        // A count whose table cannot fit, lengths that overflow.
        assert_eq!(HeaderMap::parse(vec![0xff, 0xff, 0xff, 0xff]), Err(Malformed));
        let mut huge = vec![1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        huge.extend_from_slice(b"k\0v\0");
        assert_eq!(HeaderMap::parse(huge), Err(Malformed));
    }
}
