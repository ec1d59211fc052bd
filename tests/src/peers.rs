//! Real peers the suites start on loopback: Debian's Alertmanager and Prometheus, and
//! a small HTTP server standing in for a notification receiver.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{daemons::wait_until, require_bin, KillOnDrop};

/// A notification receiver: each POST's JSON body, with when it came.
pub struct Receiver {
    pub url: String,
    got: mpsc::Receiver<(Instant, Value)>,
    pub seen: Vec<(Instant, Value)>,
}

impl Receiver {
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let (tx, got) = mpsc::channel();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                if let Ok(v) = serde_json::from_slice(&body) {
                    let _ = tx.send((Instant::now(), v));
                }
            }
        });
        Self {
            url,
            got,
            seen: Vec::new(),
        }
    }

    /// Waits for a payload with an alert carrying `labels` whose status is `status`;
    /// returns when it came.
    pub fn wait_for(&mut self, labels: &[(&str, &str)], status: &str) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((t, _)) = self.seen.iter().find(|(_, v)| has(v, labels, status)) {
                return *t;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.got.recv_timeout(left) {
                Ok(p) => self.seen.push(p),
                Err(_) => panic!(
                    "no {status} notification with {labels:?} within 60 s; got {:#?}",
                    self.seen
                ),
            }
        }
    }

    pub fn drain(&mut self) {
        self.seen.extend(self.got.try_iter());
    }
}

/// Whether a receiver payload (Alertmanager's webhook or the collector's) carries an
/// alert with `labels` and `status`.
pub fn has(v: &Value, labels: &[(&str, &str)], status: &str) -> bool {
    v["alerts"].as_array().is_some_and(|a| {
        a.iter().any(|a| {
            labels.iter().all(|(k, x)| a["labels"][*k] == *x)
                && (a["status"] == status || v["status"] == status && a["status"].is_null())
        })
    })
}

/// Debian's Alertmanager on loopback, routing everything to `webhook` at once.
pub struct Alertmanager {
    _child: KillOnDrop,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    pub fn start(webhook: &str) -> Self {
        require_bin("prometheus-alertmanager");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            format!(
                "route:\n  receiver: test\n  group_by: [alertname, host]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
                 receivers:\n  - name: test\n    webhook_configs:\n      - url: {webhook}\n        send_resolved: true\n"
            ),
        )
        .unwrap();
        let port = crate::free_port();
        let url = format!("http://127.0.0.1:{port}");
        let child = Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus-alertmanager");
        let child = KillOnDrop(child);
        wait_until("Alertmanager ready", Duration::from_secs(30), || {
            curl(&format!("{url}/-/ready")).is_some()
        });
        Self {
            _child: child,
            url,
            _dir: dir,
        }
    }

    pub fn get(&self, path: &str) -> Value {
        serde_json::from_str(&curl(&format!("{}{path}", self.url)).expect("Alertmanager answers"))
            .unwrap()
    }
}

/// Debian's Prometheus on loopback, scraping `targets` (job, host:port) every second.
pub struct Prometheus {
    _child: KillOnDrop,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(targets: &[(&str, &str)]) -> Self {
        require_bin("prometheus");
        let dir = tempfile::tempdir().unwrap();
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for (job, target) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
            ));
        }
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = crate::free_port();
        let url = format!("http://127.0.0.1:{port}");
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus");
        let child = KillOnDrop(child);
        wait_until("Prometheus ready", Duration::from_secs(60), || {
            curl(&format!("{url}/-/ready")).is_some()
        });
        Self {
            _child: child,
            url,
            _dir: dir,
        }
    }

    /// An instant query's answer (Null when Prometheus did not answer).
    pub fn query(&self, q: &str) -> Value {
        let out = Command::new("curl")
            .args([
                "-sf",
                "--max-time",
                "10",
                "-G",
                &format!("{}/api/v1/query", self.url),
                "--data-urlencode",
            ])
            .arg(format!("query={q}"))
            .output()
            .expect("curl");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// The first result's value of an instant query.
    pub fn scalar(&self, q: &str) -> Option<f64> {
        self.query(q)["data"]["result"][0]["value"][1]
            .as_str()?
            .parse()
            .ok()
    }
}

/// GET with curl: the body on a 2xx answer.
pub fn curl(url: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "5", url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
