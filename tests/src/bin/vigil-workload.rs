//! Workloads whose behaviour the privileged tests control. Each waits for a line on
//! stdin before starting, so the test can attach its probes first.
//!
//!   vigil-workload sleep COUNT MILLIS   COUNT nanosleep(MILLIS ms) calls
//!   vigil-workload fdatasync COUNT BYTES FILE  COUNT times: write BYTES to FILE (from its
//!                                       start; 0 writes nothing), then fdatasync it
//!   vigil-workload getppid COUNT        COUNT getppid() calls
//!   vigil-workload spin MILLIS          burn one CPU for MILLIS ms
//!   vigil-workload hold-memory MB MILLIS  touch MB MiB of memory, hold it MILLIS ms
//!   vigil-workload exec COUNT PATH      COUNT children that exec PATH (two at a time)
//!   vigil-workload memfd-exec PATH      run PATH's bytes from a memfd (fexecve)
//!   vigil-workload unlinked-exec PATH   copy PATH, open it, delete it, run it by fd
//!   vigil-workload ptrace-attach        attach with ptrace to a child of its own
//!   vigil-workload setuid-root          setuid(0); exit 0 if that worked (run set-uid root)
//!   vigil-workload finit-module         call finit_module on /dev/null (fails; it is the call that counts)
//!   vigil-workload connect PORT         TCP connect to 127.0.0.1:PORT (refused is fine)
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
        Some("fdatasync") => {
            use std::{io::Write as _, os::unix::fs::FileExt as _};
            let (count, bytes) = (num(1), num(2) as usize);
            let path = args
                .get(3)
                .cloned()
                .unwrap_or_else(|| "fdatasync.data".into());
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("{path}: {e}"));
            let block = vec![0x5au8; bytes];
            for _ in 0..count {
                if bytes > 0 {
                    file.write_all_at(&block, 0).expect("write");
                }
                file.sync_data().expect("fdatasync");
            }
            let _ = file.flush();
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
        Some("memfd-exec") | Some("unlinked-exec") => {
            let path = args.get(1).cloned().unwrap_or_else(|| "/bin/true".into());
            let bytes = std::fs::read(&path).expect("read the program");
            let fd = if args[0] == "memfd-exec" {
                let name = std::ffi::CString::new("vigil-test").unwrap();
                // SAFETY: valid C string; returns a new fd or -1.
                let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
                assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
                // SAFETY: fd is ours; the buffer is valid for its length.
                let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
                assert_eq!(n as usize, bytes.len());
                fd
            } else {
                let copy =
                    std::env::temp_dir().join(format!("vigil-unlinked-{}", std::process::id()));
                std::fs::write(&copy, &bytes).expect("copy");
                std::fs::set_permissions(
                    &copy,
                    std::os::unix::fs::PermissionsExt::from_mode(0o755),
                )
                .unwrap();
                let c = std::ffi::CString::new(copy.to_str().unwrap()).unwrap();
                // SAFETY: valid C string.
                let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
                assert!(fd >= 0);
                std::fs::remove_file(&copy).expect("unlink");
                fd
            };
            let argv0 = std::ffi::CString::new(path).unwrap();
            let argv = [argv0.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            // SAFETY: NULL-terminated argv/envp of valid C strings; only returns on error.
            unsafe { libc::fexecve(fd, argv.as_ptr(), envp.as_ptr()) };
            panic!("fexecve: {}", std::io::Error::last_os_error());
        }
        Some("ptrace-attach") => {
            let mut child = std::process::Command::new("/bin/sleep")
                .arg("5")
                .spawn()
                .expect("sleep");
            let pid = child.id() as libc::pid_t;
            // Attach to a process that is up and running (as an injector would).
            std::thread::sleep(Duration::from_millis(100));
            // SAFETY: plain ptrace calls on our own child.
            unsafe {
                let r = libc::ptrace(libc::PTRACE_ATTACH, pid, 0, 0);
                println!("ptrace attach {pid}: {r}");
                let mut status = 0;
                libc::waitpid(pid, &mut status, 0);
                libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        Some("setuid-root") => {
            // SAFETY: plain syscall.
            let r = unsafe { libc::setuid(0) };
            std::process::exit(if r == 0 { 0 } else { 1 });
        }
        Some("finit-module") => {
            let f = std::fs::File::open("/dev/null").expect("/dev/null");
            let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
            // SAFETY: plain syscall; the kernel refuses /dev/null (or has no modules).
            let r = unsafe { libc::syscall(libc::SYS_finit_module, fd, c"".as_ptr(), 0) };
            println!("finit_module: {r} {}", std::io::Error::last_os_error());
        }
        Some("connect") => {
            let port = num(1) as u16;
            let r = std::net::TcpStream::connect(("127.0.0.1", port));
            println!("connect {port}: {}", r.is_ok());
        }
        _ => {
            eprintln!("usage: vigil-workload sleep COUNT MILLIS | getppid COUNT | spin MILLIS | hold-memory MB MILLIS | exec COUNT PATH");
            std::process::exit(64)
        }
    }
}
