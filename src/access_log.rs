//! The access-log record as one value: a FlatBuffers table (schema `src/access_log.fbs`, its
//! reflection form `src/access_log.bfbs` declared to Envoy at configure), set once per request
//! as filter state `wasm.llm_failover`. Envoy's CEL reads its fields in place, so an access log
//! prints them with `%CEL(filter_state['wasm.llm_failover'].provider)%`, and a request makes
//! one `set_property` call instead of one per field.
//!
//! Every field is a string (numbers in decimal), absent when unknown (CEL then reads `""`).
//! Layout written: the root offset, the vtable (one slot per field id), the table (its vtable
//! offset, then one string offset per present field), then the strings (u32 length, bytes, NUL,
//! each 4-byte aligned).

use crate::telemetry::RequestRecord;

/// The reflection schema Envoy needs to read the record (`flatc --binary --schema`).
pub const SCHEMA: &[u8] = include_bytes!("access_log.bfbs");

/// Field ids, in the schema's order.
pub const FIELDS: [&str; 12] = [
    "provider",
    "model",
    "attempts",
    "tried",
    "outcome",
    "degraded_reason",
    "input_tokens",
    "output_tokens",
    "ttft_ms",
    "duration_ms",
    "continuation",
    "finished_by",
];

/// The arguments of Envoy's `declare_property` foreign function for the record: a serialized
/// `envoy.source.extensions.common.wasm.DeclarePropertyArguments` (name = 1, type = 3:
/// FlatBuffers = 2, schema = 4: [`SCHEMA`]; the life span left at its default, the filter
/// chain's, as for undeclared properties).
pub fn declaration(name: &str) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut v: usize) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    let mut out = Vec::with_capacity(name.len() + SCHEMA.len() + 12);
    out.push(0x0a);
    varint(&mut out, name.len());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&[0x18, 2, 0x22]);
    varint(&mut out, SCHEMA.len());
    out.extend_from_slice(SCHEMA);
    out
}

enum Value<'a> {
    Str(&'a str),
    Num(u64),
}

const VTABLE_AT: usize = 4;
const VTABLE_LEN: usize = 4 + 2 * FIELDS.len();
const TABLE_AT: usize = (VTABLE_AT + VTABLE_LEN + 3) & !3;

fn put(out: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = out.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

/// Decimal digits of `n` into `buf`, returning them.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        if let Some(d) = buf.get_mut(i) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    buf.get(i..).unwrap_or_default()
}

/// The record as the FlatBuffers table Envoy reads.
pub fn encode(r: &RequestRecord) -> Vec<u8> {
    let values: [Option<Value<'_>>; 12] = [
        r.provider.as_deref().map(Value::Str),
        r.model.as_deref().map(Value::Str),
        (r.attempts > 0).then_some(Value::Num(u64::from(r.attempts))),
        r.tried.as_deref().map(Value::Str),
        r.outcome.map(Value::Str),
        r.degraded_reason.map(Value::Str),
        r.input_tokens.map(Value::Num),
        r.output_tokens.map(Value::Num),
        r.ttft_ms.map(Value::Num),
        r.duration_ms.map(Value::Num),
        r.continuation.as_deref().map(Value::Str),
        r.finished_by.as_deref().map(Value::Str),
    ];
    let present = values.iter().filter(|v| v.is_some()).count();
    let table_len = 4 + 4 * present;
    let mut out = vec![0u8; TABLE_AT + table_len];
    out.reserve(present * 24);
    put(&mut out, 0, &(TABLE_AT as u32).to_le_bytes());
    put(&mut out, VTABLE_AT, &(VTABLE_LEN as u16).to_le_bytes());
    put(&mut out, VTABLE_AT + 2, &(table_len as u16).to_le_bytes());
    put(&mut out, TABLE_AT, &((TABLE_AT - VTABLE_AT) as i32).to_le_bytes());
    let mut digits = [0u8; 20];
    let mut slot = 0;
    for (id, value) in values.iter().enumerate() {
        let Some(value) = value else { continue };
        let bytes = match value {
            Value::Str(s) => s.as_bytes(),
            Value::Num(n) => decimal(*n, &mut digits),
        };
        let field_at = TABLE_AT + 4 + 4 * slot;
        slot += 1;
        put(&mut out, VTABLE_AT + 4 + 2 * id, &((field_at - TABLE_AT) as u16).to_le_bytes());
        out.resize(out.len().next_multiple_of(4), 0);
        let string_at = out.len();
        put(&mut out, field_at, &((string_at - field_at) as u32).to_le_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing)]
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> usize {
        u16::from_le_bytes([b[at], b[at + 1]]) as usize
    }
    fn u32_at(b: &[u8], at: usize) -> usize {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize
    }

    /// Reads field `id` as a FlatBuffers reader does: root -> table -> vtable -> offset -> string.
    fn read(b: &[u8], id: usize) -> Option<String> {
        let table = u32_at(b, 0);
        let vtable = table - i32::from_le_bytes([b[table], b[table + 1], b[table + 2], b[table + 3]]) as usize;
        let vlen = u16_at(b, vtable);
        if 4 + 2 * id >= vlen {
            return None;
        }
        let off = u16_at(b, vtable + 4 + 2 * id);
        if off == 0 {
            return None;
        }
        let field = table + off;
        let s = field + u32_at(b, field);
        assert_eq!(s % 4, 0, "strings are 4-byte aligned");
        let len = u32_at(b, s);
        assert_eq!(b[s + 4 + len], 0, "strings end with a NUL");
        Some(String::from_utf8(b[s + 4..s + 4 + len].to_vec()).unwrap())
    }

    #[test]
    fn every_field_reads_back_by_its_id_and_absent_ones_are_absent() {
        let r = RequestRecord {
            provider: Some("fallback".into()),
            model: Some("claude-opus-4-6".into()),
            attempts: 2,
            tried: Some("primary:overloaded,fallback:success".into()),
            outcome: Some("success"),
            degraded_reason: None,
            input_tokens: Some(12),
            output_tokens: Some(0),
            ttft_ms: Some(u64::MAX),
            duration_ms: Some(1234),
            continuation: None,
            finished_by: Some("x".into()),
        };
        let b = encode(&r);
        let want = [
            Some("fallback".to_string()),
            Some("claude-opus-4-6".into()),
            Some("2".into()),
            Some("primary:overloaded,fallback:success".into()),
            Some("success".into()),
            None,
            Some("12".into()),
            Some("0".into()),
            Some(u64::MAX.to_string()),
            Some("1234".into()),
            None,
            Some("x".into()),
        ];
        for (id, w) in want.iter().enumerate() {
            assert_eq!(&read(&b, id), w, "field {}", FIELDS[id]);
        }
    }

    #[test]
    fn an_empty_record_is_a_valid_empty_table() {
        let b = encode(&RequestRecord::default());
        assert!((0..FIELDS.len()).all(|id| read(&b, id).is_none()));
        assert_eq!(u16_at(&b, VTABLE_AT + 2), 4, "table holds only its vtable offset");
    }

    #[test]
    fn the_declaration_is_the_proto() {
        let a = declaration("llm_failover");
        assert_eq!(&a[..14], b"\x0a\x0cllm_failover");
        let n = SCHEMA.len();
        assert!((128..1 << 14).contains(&n), "a two-byte varint below");
        assert_eq!(&a[14..19], &[0x18, 2, 0x22, (n as u8) | 0x80, (n >> 7) as u8]);
        assert_eq!(&a[19..], SCHEMA);
    }

    #[test]
    fn the_fields_are_the_schema_s_in_its_order() {
        let declared: Vec<&str> =
            include_str!("access_log.fbs").lines().filter_map(|l| l.trim().strip_suffix(": string;")).collect();
        assert_eq!(declared, FIELDS);
    }

    #[test]
    fn the_schema_names_the_fields() {
        assert!(SCHEMA.get(4..8) == Some(b"BFBS"), "a reflection schema");
        let text = String::from_utf8_lossy(SCHEMA);
        assert!(text.contains("llm_failover.Record"));
        for f in FIELDS {
            assert!(text.contains(f), "{f}");
        }
    }
}
