//! Workloads whose behaviour the privileged tests control. Each waits for a line on
//! stdin before starting, so the test can attach its probes first.
//!
//!   vigil-workload sleep COUNT MILLIS   COUNT nanosleep(MILLIS ms) calls
//!   vigil-workload getppid COUNT        COUNT getppid() calls
//!   vigil-workload spin MILLIS          burn one CPU for MILLIS ms
//!   vigil-workload hold-memory MB MILLIS  touch MB MiB of memory, hold it MILLIS ms
//!   vigil-workload exec COUNT PATH      COUNT children that exec PATH (two at a time)
use std::{io::BufRead as _, time::Duration};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| -> u64 {
        args.get(i).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            eprintln!("usage: vigil-workload sleep COUNT MILLIS | getppid COUNT | spin MILLIS | hold-memory MB MILLIS | exec COUNT PATH");
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
        Some("exec") => {
            let count = num(1);
            let path = args.get(2).cloned().unwrap_or_else(|| "/bin/true".into());
            let workers: Vec<_> = (0..2)
                .map(|w| {
                    let path = path.clone();
                    std::thread::spawn(move || {
                        for _ in (w..count).step_by(2) {
                            let status = std::process::Command::new(&path)
                                .status()
                                .unwrap_or_else(|e| panic!("exec {path}: {e}"));
                            assert!(status.success(), "{path}: {status}");
                        }
                    })
                })
                .collect();
            for w in workers {
                w.join().expect("exec worker");
            }
        }
        _ => {
            eprintln!("usage: vigil-workload sleep COUNT MILLIS | getppid COUNT | spin MILLIS | hold-memory MB MILLIS | exec COUNT PATH");
            std::process::exit(64)
        }
    }
}
