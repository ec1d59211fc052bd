//! Directories the rules watch that do not exist yet (a crontab directory made on the
//! first `crontab -e`, a journald drop-in directory): the nearest existing ancestor of
//! each is watched with inotify, so the kernel filters are rebuilt the moment one is
//! created, not at the next /proc rescan (60 s).
use std::{
    os::fd::{AsFd as _, AsRawFd, RawFd},
    path::{Path, PathBuf},
};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::unix::AsyncFd;

/// The inotify instance, as a raw fd for tokio.
struct Fd(Inotify);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

pub struct DirWaiter {
    fd: AsyncFd<Fd>,
    watching: Vec<(PathBuf, WatchDescriptor)>,
}

impl DirWaiter {
    pub fn new() -> std::io::Result<Self> {
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        // SAFETY: the fd is the Inotify's own, open until the AsyncFd (which owns the
        // Inotify) drops it; `as_raw_fd` always returns it.
        let fd = unsafe { AsyncFd::register_with_interest(Fd(ino), tokio::io::Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        Ok(Self {
            fd,
            watching: Vec::new(),
        })
    }

    /// Watches the nearest existing ancestor of each of `missing` (and stops watching
    /// the ones no longer needed). Returns how many could not be watched.
    pub fn watch(&mut self, missing: &[PathBuf]) -> usize {
        let mut want: Vec<PathBuf> = missing
            .iter()
            .filter_map(|m| {
                m.ancestors()
                    .skip(1)
                    .find(|a| a.is_dir())
                    .map(Path::to_path_buf)
            })
            .collect();
        want.sort();
        want.dedup();
        let ino = &self.fd.get_ref().0;
        self.watching.retain(|(p, wd)| {
            let keep = want.contains(p);
            if !keep {
                let _ = ino.rm_watch(*wd);
            }
            keep
        });
        let mut failed = 0;
        for p in want {
            if self.watching.iter().any(|(w, _)| *w == p) {
                continue;
            }
            match ino.add_watch(
                &p,
                AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_ONLYDIR,
            ) {
                Ok(wd) => self.watching.push((p, wd)),
                Err(_) => failed += 1,
            }
        }
        failed
    }

    /// Whether anything is watched (the loop waits on it only then).
    pub fn active(&self) -> bool {
        !self.watching.is_empty()
    }

    /// Waits until something was created in a watched directory (the events are read
    /// and dropped: the caller looks the directories up again).
    pub async fn created(&self) -> std::io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.get_inner().0.read_events() {
                Ok(events) if !events.is_empty() => return Ok(()),
                Ok(_) | Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                Err(e) => return Err(e.into()),
            }
        }
    }
}
