//! The rolling error window: a ring of time buckets counting successes and failures, and its
//! compact binary encoding. Buckets are keyed by their absolute index (`now / bucket_ms`), so a
//! bucket that has fallen out of the window is recognised and reused without any clean-up pass.

/// One time bucket: its absolute index and the counts recorded in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bucket {
    pub index: u32,
    pub successes: u32,
    pub failures: u32,
}

/// Encoded size of one bucket.
pub const BUCKET_BYTES: usize = 12;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    bucket_ms: u32,
    buckets: Vec<Bucket>,
}

impl Window {
    /// A new, empty window of `count` buckets covering `window_ms` in total.
    pub fn new(window_ms: u64, count: u32) -> Self {
        let count = count.max(1);
        let bucket_ms = u32::try_from((window_ms / u64::from(count)).max(1)).unwrap_or(u32::MAX);
        Window { bucket_ms, buckets: vec![Bucket::default(); count as usize] }
    }

    /// Does this window have the given geometry? (After a config change it may not.)
    pub fn has_shape(&self, window_ms: u64, count: u32) -> bool {
        let other = Window::new(window_ms, count);
        self.bucket_ms == other.bucket_ms && self.buckets.len() == other.buckets.len()
    }

    fn index_at(&self, now_ms: u64) -> u32 {
        // Truncation is fine: with 1 ms buckets u32 wraps after 49 days, and only equality and
        // distance within one window matter (wrapping arithmetic below).
        (now_ms / u64::from(self.bucket_ms)) as u32
    }

    fn is_live(&self, b: &Bucket, now_index: u32) -> bool {
        let age = now_index.wrapping_sub(b.index);
        (age as usize) < self.buckets.len() && (b.successes | b.failures) != 0
    }

    /// Records one outcome at `now_ms`.
    pub fn record(&mut self, now_ms: u64, success: bool) {
        self.record_n(now_ms, success, 1);
    }

    /// Records `n` outcomes of one kind at `now_ms`.
    pub fn record_n(&mut self, now_ms: u64, success: bool, n: u32) {
        let idx = self.index_at(now_ms);
        let len = self.buckets.len();
        let Some(b) = self.buckets.get_mut(idx as usize % len) else { return };
        if b.index != idx {
            *b = Bucket { index: idx, successes: 0, failures: 0 };
        }
        if success {
            b.successes = b.successes.saturating_add(n);
        } else {
            b.failures = b.failures.saturating_add(n);
        }
    }

    /// (successes, failures) within the window ending at `now_ms`.
    pub fn totals(&self, now_ms: u64) -> (u32, u32) {
        let now_index = self.index_at(now_ms);
        self.buckets
            .iter()
            .filter(|b| self.is_live(b, now_index))
            .fold((0u32, 0u32), |(s, f), b| (s.saturating_add(b.successes), f.saturating_add(b.failures)))
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.buckets.iter_mut().for_each(|b| *b = Bucket::default());
    }

    /// Size of [`Window::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        6 + self.buckets.len() * BUCKET_BYTES
    }

    /// Appends the binary form: bucket_ms (u32 LE), count (u16 LE), then per bucket
    /// index, successes, failures (u32 LE each).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.bucket_ms.to_le_bytes());
        out.extend_from_slice(&(self.buckets.len() as u16).to_le_bytes());
        for b in &self.buckets {
            out.extend_from_slice(&b.index.to_le_bytes());
            out.extend_from_slice(&b.successes.to_le_bytes());
            out.extend_from_slice(&b.failures.to_le_bytes());
        }
    }

    /// Reads the binary form; returns the window and the bytes after it, or `None` if malformed.
    pub fn decode(bytes: &[u8]) -> Option<(Window, &[u8])> {
        let (bucket_ms, rest) = take_u32(bytes)?;
        let (count, mut rest) = take_u16(rest)?;
        if bucket_ms == 0 || count == 0 || count > 1024 {
            return None;
        }
        let mut buckets = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let (index, r) = take_u32(rest)?;
            let (successes, r) = take_u32(r)?;
            let (failures, r) = take_u32(r)?;
            buckets.push(Bucket { index, successes, failures });
            rest = r;
        }
        Some((Window { bucket_ms, buckets }, rest))
    }
}

pub(crate) fn take_u16(b: &[u8]) -> Option<(u16, &[u8])> {
    let (head, rest) = b.split_first_chunk::<2>()?;
    Some((u16::from_le_bytes(*head), rest))
}

pub(crate) fn take_u32(b: &[u8]) -> Option<(u32, &[u8])> {
    let (head, rest) = b.split_first_chunk::<4>()?;
    Some((u32::from_le_bytes(*head), rest))
}

pub(crate) fn take_u64(b: &[u8]) -> Option<(u64, &[u8])> {
    let (head, rest) = b.split_first_chunk::<8>()?;
    Some((u64::from_le_bytes(*head), rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_the_window_and_forgets_old_buckets() {
        let mut w = Window::new(10_000, 10); // 1 s buckets
        let t0 = 1_700_000_000_000;
        w.record(t0, true);
        w.record(t0 + 10, false);
        w.record(t0 + 3_000, false);
        assert_eq!(w.totals(t0 + 3_000), (1, 2));
        // 9.5 s later the first bucket is still inside a 10 s window...
        assert_eq!(w.totals(t0 + 9_500), (1, 2));
        // ...and falls out after 10 s.
        assert_eq!(w.totals(t0 + 10_500), (0, 1));
        assert_eq!(w.totals(t0 + 13_500), (0, 0));
        // A reused slot starts from zero.
        w.record(t0 + 20_000, true);
        assert_eq!(w.totals(t0 + 20_000), (1, 0));
    }

    #[test]
    fn encode_decode_roundtrip_and_size() {
        let mut w = Window::new(30_000, 10);
        for i in 0..50u64 {
            w.record(1_000_000 + i * 700, i % 3 == 0);
        }
        let mut buf = Vec::new();
        w.encode(&mut buf);
        assert_eq!(buf.len(), w.encoded_len());
        assert_eq!(buf.len(), 126);
        buf.extend_from_slice(b"tail");
        let (back, rest) = Window::decode(&buf).unwrap();
        assert_eq!(back, w);
        assert_eq!(rest, b"tail");
    }

    #[test]
    fn decode_rejects_truncated_or_absurd_input() {
        let mut buf = Vec::new();
        Window::new(30_000, 10).encode(&mut buf);
        for n in 0..buf.len() {
            assert!(Window::decode(&buf[..n]).is_none(), "len {n}");
        }
        assert!(Window::decode(&[0, 0, 0, 0, 1, 0]).is_none());
    }

    #[test]
    fn shape_check() {
        let w = Window::new(30_000, 10);
        assert!(w.has_shape(30_000, 10));
        assert!(!w.has_shape(30_000, 5));
        assert!(!w.has_shape(60_000, 10));
    }
}
