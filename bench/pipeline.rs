//! The CPU of mqtt2es's own per-reading work, without sockets or threads: the shipped pipelines
//! (decode, stages) and the bulk encoding of the result, timed over many telemetry readings.
//! Run on demand: `cargo run --release --example bench-pipeline [readings]`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use mqtt2es::pipeline::{DecodeLimits, IndexPolicy, Pipelines};
use mqtt2es::reading::Assigned;
use mqtt2es::record::{Ack, Message, QoS};
use mqtt2es::sink::{Routed, bulk};

/// Counts allocations, to print how many each reading costs.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn main() {
    let readings: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("a number of readings"))
        .unwrap_or(1_000_000);
    let pipelines = Pipelines::load_dir(
        std::path::Path::new("pipelines"),
        &IndexPolicy::default(),
        &DecodeLimits::default(),
    )
    .expect("the shipped pipelines load");
    let messages: Vec<Message> = (0..1000)
        .map(|i| {
            let assigned = Assigned::now();
            Message {
                topic: format!("sensors/bench/pub{}/telemetry", i % 4),
                // The reading of bench/publish.rs (what `bench/fast` sends), `ts` a plausible
                // device time in epoch milliseconds.
                payload: Arc::from(
                    format!(
                        concat!(
                            r#"{{"ts":{},"temp_c":21.{},"humidity":48.2,"pressure_hpa":1013.2,"#,
                            r#""battery":0.93,"rssi_dbm":-61,"seq":{},"status":"ok","#,
                            r#""firmware":"pi-therm 2.4.1","location":{{"room":"lab","floor":2}}}}"#
                        ),
                        chrono::Utc::now().timestamp_millis(),
                        i % 10,
                        i
                    )
                    .into_bytes(),
                ),
                qos: QoS::AtMostOnce,
                retain: false,
                reading: assigned.reading,
                received_at: assigned.received_at,
                user_properties: Vec::new(),
            }
        })
        .collect();
    let prefixes = vec!["mqtt2es-telemetry-".to_owned()];
    let (mut process_ns, mut encode_ns, mut bytes) = (0u128, 0u128, 0usize);
    let allocations_before = ALLOCATIONS.load(Ordering::Relaxed);
    for n in 0..readings {
        let message = messages[n % messages.len()].clone();
        let start = Instant::now();
        let processed = pipelines.process(&message);
        let mid = Instant::now();
        let prepared = bulk::prepare(
            Routed {
                message,
                processed,
                ack: Ack::none(),
            },
            "mqtt2es-dead-letter",
            10 << 20,
            &prefixes,
        );
        let end = Instant::now();
        if let bulk::Prepared::Send(item) = &prepared {
            bytes += item.bytes();
        }
        drop(prepared);
        process_ns += (mid - start).as_nanos();
        encode_ns += (end - mid).as_nanos();
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - allocations_before;
    let per = |ns: u128| ns as f64 / readings as f64 / 1000.0;
    println!(
        "{readings} readings: pipeline {:.2} µs, encode {:.2} µs, {} bytes of NDJSON and {:.1} \
         allocations each (glibc malloc here, counted; mqtt2es itself uses mimalloc)",
        per(process_ns),
        per(encode_ns),
        bytes / readings,
        allocations as f64 / readings as f64
    );
}
