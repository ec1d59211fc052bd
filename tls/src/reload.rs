//! Material that follows its files: checked every second, rebuilt when the bytes
//! change. A file that is half written, unreadable or bad is refused with a log line
//! and a counter, and what was loaded before stays in use; the next handshake uses
//! whatever is current, and connections already open are left alone.
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, RwLock, Weak,
};
use std::time::Duration;

use sha2::Digest as _;

use crate::{
    config::TlsFiles,
    material::{self, Material, TlsError},
};

/// How often the files are looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

type Build<T> = Box<dyn Fn(&Material) -> Result<T, TlsError> + Send + Sync>;

/// The config built from the files as they were last seen good.
pub struct Reloading<T> {
    files: TlsFiles,
    what: &'static str,
    build: Build<T>,
    current: RwLock<Result<Arc<T>, String>>,
    /// Digest of the contents last looked at (good or not).
    seen: std::sync::Mutex<[u8; 32]>,
    /// Loads after the first that took effect.
    pub reloads: AtomicU64,
    /// Loads refused (the material before stays in use).
    pub failures: AtomicU64,
}

fn digest(contents: &material::Contents) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    for (path, r) in contents {
        h.update(path.as_os_str().as_encoded_bytes());
        match r {
            Ok(b) => {
                h.update([1]);
                h.update((b.len() as u64).to_le_bytes());
                h.update(b);
            }
            Err(e) => {
                h.update([0]);
                h.update(e.as_bytes());
            }
        }
    }
    h.finalize().into()
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Loads the files now (a failure is kept as the current error, and counted) and,
    /// on a tokio runtime, looks at them again every [`CHECK_EVERY`] until dropped.
    pub fn new(
        files: TlsFiles,
        what: &'static str,
        build: impl Fn(&Material) -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Arc<Self> {
        let this = Arc::new(Self {
            files,
            what,
            build: Box::new(build),
            current: RwLock::new(Err("not loaded yet".into())),
            seen: std::sync::Mutex::new([0; 32]),
            reloads: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        });
        this.check(true);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&this);
            handle.spawn(watch(weak));
        }
        this
    }

    /// A value that does not follow files (a one-shot client's).
    pub fn fixed(value: T, what: &'static str) -> Arc<Self> {
        Arc::new(Self {
            files: TlsFiles {
                ca: Default::default(),
                cert: Default::default(),
                key: Default::default(),
            },
            what,
            build: Box::new(|_| Err(TlsError::Invalid("fixed material".into()))),
            current: RwLock::new(Ok(Arc::new(value))),
            seen: std::sync::Mutex::new([0; 32]),
            reloads: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    /// What the next handshake uses, or why there is nothing to use.
    pub fn current(&self) -> Result<Arc<T>, String> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Looks at the files; rebuilds if they changed. True if something new took effect.
    pub fn check(&self, first: bool) -> bool {
        let contents = material::read(&self.files);
        let d = digest(&contents);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if !first && *seen == d {
                return false;
            }
            *seen = d;
        }
        let built = Material::parse(&contents).and_then(|m| (self.build)(&m));
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        match built {
            Ok(t) => {
                *current = Ok(Arc::new(t));
                if !first {
                    self.reloads.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(what = self.what, cert = %self.files.cert.display(), "TLS material reloaded; new handshakes use it");
                }
                true
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let keeping = if current.is_ok() {
                    "keeping the material loaded before"
                } else {
                    "nothing loaded yet"
                };
                tracing::warn!(what = self.what, error = %e, "TLS material refused; {keeping}");
                if current.is_err() {
                    *current = Err(e.to_string());
                }
                false
            }
        }
    }
}

async fn watch<T: Send + Sync + 'static>(weak: Weak<Reloading<T>>) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(this) = weak.upgrade() else { return };
        // Small files, read off the event loop all the same (a hung NFS mount).
        let _ = tokio::task::spawn_blocking(move || this.check(false)).await;
    }
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("what", &self.what)
            .field("files", &self.files)
            .field("reloads", &self.reloads)
            .field("failures", &self.failures)
            .finish()
    }
}
