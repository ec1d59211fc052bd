//! Workloads whose behaviour the privileged tests control. Each waits for a line on
//! stdin before starting, so the test can attach its probes first.
//!
//!   vigil-workload sleep COUNT MILLIS   COUNT nanosleep(MILLIS ms) calls
//!   vigil-workload getppid COUNT        COUNT getppid() calls
use std::{io::BufRead as _, time::Duration};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| -> u64 {
        args.get(i).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            eprintln!("usage: vigil-workload sleep COUNT MILLIS | getppid COUNT");
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
        _ => {
            eprintln!("usage: vigil-workload sleep COUNT MILLIS | getppid COUNT");
            std::process::exit(64)
        }
    }
}
