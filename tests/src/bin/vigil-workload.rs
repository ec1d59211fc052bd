//! Workloads whose behaviour the privileged tests control. Each waits for a line on
//! stdin before starting, so the test can attach its probes first.
//!
//!   vigil-workload sleep COUNT MILLIS   COUNT nanosleep(MILLIS ms) calls
//!   vigil-workload getppid COUNT        COUNT getppid() calls
//!   vigil-workload spin MILLIS          burn one CPU for MILLIS ms
//!   vigil-workload hold-memory MB MILLIS  touch MB MiB of memory, hold it MILLIS ms
use std::{io::BufRead as _, time::Duration};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| -> u64 {
        args.get(i).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            eprintln!("usage: vigil-workload sleep COUNT MILLIS | getppid COUNT | spin MILLIS | hold-memory MB MILLIS");
            std::process::exit(64)
        })
    };
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    match args.first().map(String::as_str) {
        Some("sleep") => {
            let (count, ms) = (num(1), num(2));
            for _ in 0..count {
                std::thread::sleep(Duration::from_millis(ms));
            }
        }
        Some("getppid") => {
            for _ in 0..num(1) {
                // SAFETY: no arguments, no side effects.
                unsafe { libc::syscall(libc::SYS_getppid) };
            }
        }
        Some("spin") => {
            let end = std::time::Instant::now() + Duration::from_millis(num(1));
            let mut x = 0u64;
            while std::time::Instant::now() < end {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        Some("hold-memory") => {
            let mut block = vec![0u8; (num(1) as usize) << 20];
            // Touch every page so it is resident, not just reserved.
            for i in (0..block.len()).step_by(4096) {
                block[i] = 1;
            }
            std::thread::sleep(Duration::from_millis(num(2)));
            std::hint::black_box(&block);
        }
        _ => {
            eprintln!("usage: vigil-workload sleep COUNT MILLIS | getppid COUNT | spin MILLIS | hold-memory MB MILLIS");
            std::process::exit(64)
        }
    }
}
