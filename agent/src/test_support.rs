//! What the in-process tests share: a real collector on 127.0.0.1:0.
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// `collector::serve` on an ephemeral loopback port, its store in `dir`.
pub struct Collector {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), vigil_collector::ServeError>>,
}

impl Collector {
    pub async fn start(dir: &Path) -> (SocketAddr, Self) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(vigil_collector::serve(
            listener,
            vigil_collector::CollectorConfig {
                data_dir: dir.to_path_buf(),
                retention: Duration::from_secs(86_400),
                limits: vigil_collector::Limits::default(),
                tls: None,
                fleet_token_file: None,
                metrics_listen: None,
                remote_write: Vec::new(),
                postgres: None,
                alerting: Default::default(),
                slo_dir: dir.join("slo.d"),
            },
            async {
                let _ = stopped.await;
            },
        ));
        (addr, Self { stop, task })
    }

    /// Stops it and waits until it has (its store is then complete on disk).
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}
