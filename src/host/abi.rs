//! The raw proxy-wasm ABI 0.2.1 imports from the host (`env` module), each wrapped in a function
//! that returns the host's status instead of panicking.
//!
//! The SDK's `proxy_wasm::hostcalls` functions `panic!` on any status they do not expect, and a
//! panic aborts the Wasm VM for every request on the worker. This module owns the
//! `extern "C"` declarations, the (de)serialization of header maps and property paths, and the
//! ownership of buffers the host returns: the host allocates them through the module's exported
//! `proxy_on_memory_allocate` (from the SDK, a boxed `[u8]` of exactly the requested size), so
//! they are taken back with `Vec::from_raw_parts(ptr, len, len)`, as the SDK does.
//!
//! Every import is declared returning `u32`, not the SDK's `Status` enum: a host status outside
//! that enum (the ABI also has `BadExpression`, `InvalidMemoryAccess`, `Unimplemented`, ...)
//! would be undefined behaviour as an enum, and here maps to [`Status::InternalFailure`].
//!
//! Presence: a call the host answers `Ok` yields `Some` (an empty value comes back as a null
//! pointer and becomes `Some(vec![])`); only `NotFound` yields `None`.

use crate::header_map::{self, serialize_path, HeaderMap};
pub use proxy_wasm::types::Status;
use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, StreamType};
use std::ptr::{null, null_mut};

/// How many times each host function is called (only in a build with the `host-call-stats`
/// feature, which `make bench` uses to print host calls per request; a no-op otherwise).
pub mod tally {
    #[derive(Clone, Copy)]
    pub enum HostFn {
        Log,
        GetLogLevel,
        GetCurrentTimeNs,
        SetTickPeriodMs,
        GetMap,
        GetMapValue,
        SetMapValue,
        GetBuffer,
        SetBuffer,
        GetProperty,
        SetProperty,
        SendLocalResponse,
        CloseStream,
        ContinueStream,
        SetEffectiveContext,
        GetSharedData,
        SetSharedData,
        DefineMetric,
        IncrementMetric,
        RecordMetric,
        CallForeignFunction,
        RandomGet,
        DispatchHttpCall,
    }

    #[cfg(feature = "host-call-stats")]
    pub const NAMES: [&str; 23] = [
        "log",
        "get_log_level",
        "get_current_time_ns",
        "set_tick_period_ms",
        "get_map",
        "get_map_value",
        "set_map_value",
        "get_buffer",
        "set_buffer",
        "get_property",
        "set_property",
        "send_local_response",
        "close_stream",
        "continue_stream",
        "set_effective_context",
        "get_shared_data",
        "set_shared_data",
        "define_metric",
        "increment_metric",
        "record_metric",
        "call_foreign_function",
        "random_get",
        "dispatch_http_call",
    ];

    #[cfg(feature = "host-call-stats")]
    thread_local! {
        static COUNTS: std::cell::RefCell<[u64; 23]> = const { std::cell::RefCell::new([0; 23]) };
    }

    #[inline(always)]
    pub fn count(_f: HostFn) {
        #[cfg(feature = "host-call-stats")]
        COUNTS.with(|c| {
            if let Some(n) = c.borrow_mut().get_mut(_f as usize) {
                *n += 1;
            }
        });
    }

    /// The counts since the last call (by [`NAMES`] index), reset.
    #[cfg(feature = "host-call-stats")]
    pub fn take() -> [u64; 23] {
        COUNTS.with(|c| std::mem::take(&mut *c.borrow_mut()))
    }
}

/// The result of a host call: the host's status on failure.
pub type Result<T> = std::result::Result<T, Status>;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;

    fn proxy_get_log_level(return_level: *mut u32) -> u32;

    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;

    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;

    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;

    fn proxy_set_buffer_bytes(
        buffer_type: u32,
        start: usize,
        size: usize,
        buffer_data: *const u8,
        buffer_size: usize,
    ) -> u32;

    fn proxy_get_header_map_pairs(map_type: u32, return_map_data: *mut *mut u8, return_map_size: *mut usize) -> u32;

    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;

    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;

    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;

    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;

    fn proxy_set_property(path_data: *const u8, path_size: usize, value_data: *const u8, value_size: usize) -> u32;

    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;

    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;

    fn proxy_close_stream(stream_type: u32) -> u32;

    fn proxy_continue_stream(stream_type: u32) -> u32;

    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;

    fn proxy_set_effective_context(context_id: u32) -> u32;

    fn proxy_call_foreign_function(
        function_name_data: *const u8,
        function_name_size: usize,
        arguments_data: *const u8,
        arguments_size: usize,
        results_data: *mut *mut u8,
        results_size: *mut usize,
    ) -> u32;

    fn proxy_define_metric(metric_type: u32, name_data: *const u8, name_size: usize, return_id: *mut u32) -> u32;

    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;

    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
}

// ---------------------------------------------------------------------------------------------
// Logging and time
// ---------------------------------------------------------------------------------------------

/// Writes `message` to the host log at `level` (the `log` crate's macros go through the SDK).
pub fn log(level: LogLevel, message: &str) -> Result<()> {
    tally::count(tally::HostFn::Log);
    // SAFETY: pointer and length of a live string; the host copies it during the call.
    check(unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) })
}

/// The host's log level for this plugin (0 trace ... 5 critical).
pub fn get_log_level() -> Result<u32> {
    tally::count(tally::HostFn::GetLogLevel);
    let mut level: u32 = 0;
    // SAFETY: `level` is a live, writable u32 for the duration of the call.
    check(unsafe { proxy_get_log_level(&mut level) })?;
    Ok(level)
}

/// Nanoseconds since the Unix epoch, from the host clock.
pub fn get_current_time_ns() -> Result<u64> {
    tally::count(tally::HostFn::GetCurrentTimeNs);
    let mut ns: u64 = 0;
    // SAFETY: `ns` is a live, writable u64 for the duration of the call.
    check(unsafe { proxy_get_current_time_nanoseconds(&mut ns) })?;
    Ok(ns)
}

/// Sets the root context's tick period in milliseconds (0 stops the ticks).
pub fn set_tick_period_ms(ms: u32) -> Result<()> {
    tally::count(tally::HostFn::SetTickPeriodMs);
    // SAFETY: plain value argument.
    check(unsafe { proxy_set_tick_period_milliseconds(ms) })
}

// ---------------------------------------------------------------------------------------------
// Header maps
// ---------------------------------------------------------------------------------------------

/// All pairs of a header map in one host call; keys lossily UTF-8, values as bytes.
pub fn get_map(map: MapType) -> Result<HeaderMap> {
    tally::count(tally::HostFn::GetMap);
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: `data` and `size` are live, writable out-parameters for the duration of the call.
    check(unsafe { proxy_get_header_map_pairs(map as u32, &mut data, &mut size) })?;
    // SAFETY: on Ok the host filled `data`/`size` with null or a buffer it allocated through
    // `proxy_on_memory_allocate(size)`, which this module now owns.
    let serialized = unsafe { take_host_buffer(data, size) };
    HeaderMap::parse(serialized).map_err(|_| Status::ParseFailure)
}

/// The value of header `key`; `None` when the map has no such header.
pub fn get_map_value(map: MapType, key: &str) -> Result<Option<Vec<u8>>> {
    tally::count(tally::HostFn::GetMapValue);
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: `key` is a live string the host reads during the call; `data` and `size` are live,
    // writable out-parameters.
    let code = unsafe { proxy_get_header_map_value(map as u32, key.as_ptr(), key.len(), &mut data, &mut size) };
    // SAFETY: as in `get_map`: on Ok `data` is null or a host allocation of `size` bytes.
    optional(code, || unsafe { take_host_buffer(data, size) })
}

/// Sets header `key` to `value` (replacing all its values), or removes it when `value` is `None`.
pub fn set_map_value(map: MapType, key: &str, value: Option<&[u8]>) -> Result<()> {
    tally::count(tally::HostFn::SetMapValue);
    let code = match value {
        // SAFETY: pointers and lengths of live slices; the host copies them during the call.
        Some(v) => unsafe { proxy_replace_header_map_value(map as u32, key.as_ptr(), key.len(), v.as_ptr(), v.len()) },
        // SAFETY: pointer and length of a live string; the host copies it during the call.
        None => unsafe { proxy_remove_header_map_value(map as u32, key.as_ptr(), key.len()) },
    };
    check(code)
}

// ---------------------------------------------------------------------------------------------
// Buffers
// ---------------------------------------------------------------------------------------------

/// Up to `max_size` bytes of a buffer from `start`; `None` when the host has no such buffer.
pub fn get_buffer(buffer_type: BufferType, start: usize, max_size: usize) -> Result<Option<Vec<u8>>> {
    tally::count(tally::HostFn::GetBuffer);
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: `data` and `size` are live, writable out-parameters for the duration of the call.
    let code = unsafe { proxy_get_buffer_bytes(buffer_type as u32, start, max_size, &mut data, &mut size) };
    // SAFETY: as in `get_map`: on Ok `data` is null or a host allocation of `size` bytes.
    optional(code, || unsafe { take_host_buffer(data, size) })
}

/// Replaces `size` bytes of a buffer from `start` with `value`.
pub fn set_buffer(buffer_type: BufferType, start: usize, size: usize, value: &[u8]) -> Result<()> {
    tally::count(tally::HostFn::SetBuffer);
    // SAFETY: pointer and length of a live slice; the host copies it during the call.
    check(unsafe { proxy_set_buffer_bytes(buffer_type as u32, start, size, value.as_ptr(), value.len()) })
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

/// The value of the property at `path`; `None` when the host has no such property.
pub fn get_property(path: &[&str]) -> Result<Option<Vec<u8>>> {
    tally::count(tally::HostFn::GetProperty);
    let serialized = serialize_path(path);
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: `serialized` is a live buffer the host reads during the call; `data` and `size`
    // are live, writable out-parameters.
    let code = unsafe { proxy_get_property(serialized.as_ptr(), serialized.len(), &mut data, &mut size) };
    // SAFETY: as in `get_map`: on Ok `data` is null or a host allocation of `size` bytes.
    optional(code, || unsafe { take_host_buffer(data, size) })
}

/// Sets the property at `path` to `value` (`None` passes no value, as the SDK does).
pub fn set_property(path: &[&str], value: Option<&[u8]>) -> Result<()> {
    tally::count(tally::HostFn::SetProperty);
    // A one-segment path is its own serialization: no copy.
    let serialized;
    let bytes: &[u8] = match path {
        [one] => one.as_bytes(),
        _ => {
            serialized = serialize_path(path);
            &serialized
        }
    };
    let (value_ptr, value_len) = value.map_or((null(), 0), |v| (v.as_ptr(), v.len()));
    // SAFETY: pointers and lengths of live buffers (or null with length 0); the host copies them.
    check(unsafe { proxy_set_property(bytes.as_ptr(), bytes.len(), value_ptr, value_len) })
}

// ---------------------------------------------------------------------------------------------
// Streams and contexts
// ---------------------------------------------------------------------------------------------

/// Sends a local reply instead of the upstream's (gRPC status -1: a plain HTTP reply).
pub fn send_local_response(status_code: u32, headers: &[(&str, &str)], body: &[u8], details: &str) -> Result<()> {
    tally::count(tally::HostFn::SendLocalResponse);
    let serialized = serialize_map(headers)?;
    let (details_ptr, details_len) = if details.is_empty() { (null(), 0) } else { (details.as_ptr(), details.len()) };
    // SAFETY: pointers and lengths of live buffers (or null with length 0); the host copies them.
    check(unsafe {
        proxy_send_local_response(
            status_code,
            details_ptr,
            details_len,
            body.as_ptr(),
            body.len(),
            serialized.as_ptr(),
            serialized.len(),
            -1,
        )
    })
}

/// Closes (resets) a stream.
pub fn close_stream(stream: StreamType) -> Result<()> {
    tally::count(tally::HostFn::CloseStream);
    // SAFETY: plain value argument.
    check(unsafe { proxy_close_stream(stream as u32) })
}

/// Resumes a paused stream.
pub fn continue_stream(stream: StreamType) -> Result<()> {
    tally::count(tally::HostFn::ContinueStream);
    // SAFETY: plain value argument.
    check(unsafe { proxy_continue_stream(stream as u32) })
}

/// Makes `context_id` the context later host calls act on (e.g. from the root's tick).
pub fn set_effective_context(context_id: u32) -> Result<()> {
    tally::count(tally::HostFn::SetEffectiveContext);
    // SAFETY: plain value argument.
    check(unsafe { proxy_set_effective_context(context_id) })
}

// ---------------------------------------------------------------------------------------------
// Shared data
// ---------------------------------------------------------------------------------------------

/// The shared value under `key` and its CAS token; `(None, None)` when there is none.
pub fn get_shared_data(key: &str) -> Result<(Option<Vec<u8>>, Option<u32>)> {
    tally::count(tally::HostFn::GetSharedData);
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    let mut cas: u32 = 0;
    // SAFETY: `key` is a live string the host reads during the call; `data`, `size` and `cas`
    // are live, writable out-parameters.
    let code = unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    match code {
        OK => {
            // SAFETY: as in `get_map`: on Ok `data` is null or a host allocation of `size` bytes.
            let value = unsafe { take_host_buffer(data, size) };
            Ok((Some(value), (cas != 0).then_some(cas)))
        }
        NOT_FOUND => Ok((None, None)),
        other => Err(status_from_code(other)),
    }
}

/// Stores `value` under `key`; with `cas`, only if unchanged since read (else `CasMismatch`).
pub fn set_shared_data(key: &str, value: &[u8], cas: Option<u32>) -> Result<()> {
    tally::count(tally::HostFn::SetSharedData);
    // SAFETY: pointers and lengths of live slices; the host copies them during the call.
    check(unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas.unwrap_or(0)) })
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// Defines (or finds) the metric `name` of `kind`; returns its id.
pub fn define_metric(kind: MetricType, name: &str) -> Result<u32> {
    tally::count(tally::HostFn::DefineMetric);
    let mut id: u32 = 0;
    // SAFETY: `name` is a live string the host reads during the call; `id` is a live, writable
    // out-parameter.
    check(unsafe { proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

/// Adds `offset` (may be negative, for gauges) to metric `id`.
pub fn increment_metric(id: u32, offset: i64) -> Result<()> {
    tally::count(tally::HostFn::IncrementMetric);
    // SAFETY: plain value arguments.
    check(unsafe { proxy_increment_metric(id, offset) })
}

/// Sets a gauge or records a histogram sample for metric `id`.
pub fn record_metric(id: u32, value: u64) -> Result<()> {
    tally::count(tally::HostFn::RecordMetric);
    // SAFETY: plain value arguments.
    check(unsafe { proxy_record_metric(id, value) })
}

// ---------------------------------------------------------------------------------------------
// Foreign functions and HTTP calls
// ---------------------------------------------------------------------------------------------

/// Calls the host's foreign function `name` (e.g. Envoy's `clear_route_cache`) with `args`.
pub fn call_foreign_function(name: &str, args: &[u8]) -> Result<Option<Vec<u8>>> {
    tally::count(tally::HostFn::CallForeignFunction);
    let (args_ptr, args_len) = if args.is_empty() { (null(), 0) } else { (args.as_ptr(), args.len()) };
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: `name` and `args` are live buffers (or null with length 0) the host reads during
    // the call; `data` and `size` are live, writable out-parameters.
    let code =
        unsafe { proxy_call_foreign_function(name.as_ptr(), name.len(), args_ptr, args_len, &mut data, &mut size) };
    match code {
        // SAFETY: as in `get_map`: on Ok `data` is null or a host allocation of `size` bytes.
        OK => Ok(Some(unsafe { take_host_buffer(data, size) })),
        // A missing function is an error here, not an absent value.
        other => Err(status_from_code(other)),
    }
}

// ---------------------------------------------------------------------------------------------
// Status codes and host buffers
// ---------------------------------------------------------------------------------------------

/// The ABI's `Ok` status code.
const OK: u32 = 0;
/// The ABI's `NotFound` status code.
const NOT_FOUND: u32 = 1;

/// The SDK `Status` for an ABI status code; codes the SDK has no variant for are `InternalFailure`.
fn status_from_code(code: u32) -> Status {
    match code {
        0 => Status::Ok,
        1 => Status::NotFound,
        2 => Status::BadArgument,
        3 => Status::SerializationFailure,
        4 => Status::ParseFailure,
        7 => Status::Empty,
        8 => Status::CasMismatch,
        _ => Status::InternalFailure,
    }
}

/// `Ok(())` for the ABI's Ok, else the status as an error.
fn check(code: u32) -> Result<()> {
    match code {
        OK => Ok(()),
        other => Err(status_from_code(other)),
    }
}

/// `Some(take())` for Ok, `None` for NotFound, else the status as an error.
fn optional(code: u32, take: impl FnOnce() -> Vec<u8>) -> Result<Option<Vec<u8>>> {
    match code {
        OK => Ok(Some(take())),
        NOT_FOUND => Ok(None),
        other => Err(status_from_code(other)),
    }
}

/// Takes ownership of a buffer the host returned (empty for a null pointer).
///
/// # Safety
/// `ptr` must be null, or a pointer the host obtained from this module's exported
/// `proxy_on_memory_allocate(len)` (a `[u8]` allocation of exactly `len` bytes) and handed over
/// to the module, not owned by anything else.
unsafe fn take_host_buffer(ptr: *mut u8, len: usize) -> Vec<u8> {
    if ptr.is_null() {
        return Vec::new();
    }
    // SAFETY: by the caller's contract `ptr` is a live allocation from the global allocator with
    // the layout of `[u8; len]`, fully written by the host, and owned by no one else.
    unsafe { Vec::from_raw_parts(ptr, len, len) }
}

// ---------------------------------------------------------------------------------------------
// Serialization: the pure encoders live in the core (`header_map`), tested natively.
// ---------------------------------------------------------------------------------------------

/// Encodes pairs as a proxy-wasm map; `BadArgument` if a length overflows.
fn serialize_map<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Result<Vec<u8>> {
    header_map::serialize(pairs).map_err(|_| Status::BadArgument)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_status_codes_are_internal_failure() {
        assert_eq!(check(0), Ok(()));
        assert_eq!(check(8), Err(Status::CasMismatch));
        for code in [5, 6, 9, 10, 11, 12, 99] {
            assert_eq!(check(code), Err(Status::InternalFailure));
        }
        assert_eq!(optional(1, Vec::new), Ok(None));
        assert_eq!(optional(0, Vec::new), Ok(Some(vec![])));
    }
}
