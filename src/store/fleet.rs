//! A fleet of replicas on one PostgreSQL store: each replica registers and
//! sends a heartbeat, follows the shared promotion state (`LISTEN` on the
//! switch channel, polling as the fallback), and competes for the leader
//! lock (`pg_try_advisory_lock` on a session of its own: when the leader's
//! process or connection dies, the lock frees and another replica takes it).
//!
//! Everything here runs on the store's own runtime; the rest of the process
//! reads atomics and a watch channel.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio_postgres::AsyncMessage;

use super::postgres::{PgStore, Tls, DB_NOW_MS, LEADER_LOCK, SWITCH_CHANNEL};
use super::StoreError;

/// A replica is listed as gone after this many missed heartbeats.
pub const MISSED_HEARTBEATS: u32 = 3;

/// How often a replica re-reads the switch version when no notification came.
const POLL: Duration = Duration::from_secs(1);

/// How often a replica tries to become the leader.
const LEADER_POLL: Duration = Duration::from_secs(1);

/// Who this replica is.
#[derive(Debug, Clone)]
pub struct ReplicaInfo {
    pub id: String,
    pub admin: String,
    pub version: String,
}

/// The id of this process: the pod's (host's) name and the process id.
pub fn replica_id() -> String {
    let host = std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "shadowgate".into());
    format!("{host}-{}", std::process::id())
}

/// One registered replica, as `/api/v1/fleet` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReplicaRow {
    pub id: String,
    pub admin: String,
    pub version: String,
    /// Milliseconds since its last heartbeat (by the database's clock).
    pub last_seen_ms_ago: i64,
    /// false after 3 missed heartbeats.
    pub alive: bool,
}

/// The fleet side of a PostgreSQL store.
#[derive(Debug)]
pub struct Fleet {
    pub me: String,
    pub heartbeat: Duration,
    leader: Arc<AtomicBool>,
    version: watch::Receiver<u64>,
}

impl Fleet {
    /// Whether this replica holds the leader lock now.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Acquire)
    }

    /// The shared promotion-state version, as last read or announced.
    pub fn versions(&self) -> watch::Receiver<u64> {
        self.version.clone()
    }
}

/// Registers this replica and starts its heartbeat, the switch follower
/// and the leader election on the store's runtime.
pub(super) fn join(pg: &PgStore, info: ReplicaInfo, heartbeat: Duration) -> Option<Fleet> {
    let handle = pg.handle()?;
    let leader = Arc::new(AtomicBool::new(false));
    let initial = pg.switch_version().unwrap_or(0);
    let (version_tx, version) = watch::channel(initial);
    handle.spawn(heartbeats(
        pg.pool(),
        info.clone(),
        heartbeat,
        pg.healthy.clone(),
    ));
    handle.spawn(follow(pg.config.clone(), pg.tls.clone(), version_tx));
    handle.spawn(lead(pg.config.clone(), pg.tls.clone(), leader.clone()));
    Some(Fleet {
        me: info.id,
        heartbeat,
        leader,
        version,
    })
}

async fn heartbeats(
    pool: deadpool_postgres::Pool,
    info: ReplicaInfo,
    every: Duration,
    healthy: Arc<AtomicBool>,
) {
    let sql = format!(
        "INSERT INTO replicas(id, admin, version, started_at, last_seen_ms)
         VALUES ($1, $2, $3, {DB_NOW_MS}, {DB_NOW_MS})
         ON CONFLICT(id) DO UPDATE SET admin = excluded.admin, version = excluded.version,
           last_seen_ms = excluded.last_seen_ms"
    );
    let prune = format!("DELETE FROM replicas WHERE last_seen_ms < {DB_NOW_MS} - 3600000");
    let mut beats = 0u64;
    loop {
        let beat = async {
            let c = pool.get().await.map_err(|e| e.to_string())?;
            c.execute(&sql, &[&info.id, &info.admin, &info.version])
                .await
                .map_err(|e| e.to_string())?;
            if beats.is_multiple_of(600) {
                let _ = c.execute(&prune, &[]).await;
            }
            Ok::<_, String>(())
        };
        let ok = matches!(
            tokio::time::timeout(super::postgres::OP_TIMEOUT, beat).await,
            Ok(Ok(()))
        );
        let was = healthy.swap(ok, Ordering::AcqRel);
        if was != ok {
            if ok {
                tracing::warn!("store: PostgreSQL reachable again");
            } else {
                tracing::error!("store: PostgreSQL unreachable; serving on the last known state");
            }
        }
        beats += 1;
        tokio::time::sleep(every).await;
    }
}

/// A dedicated connection (not pooled), driven by its own task; with
/// `notify`, notifications are forwarded there.
async fn connect(
    config: &tokio_postgres::Config,
    tls: &Tls,
    notify: Option<mpsc::UnboundedSender<()>>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    match tls {
        Tls::None => {
            let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(drive(conn, notify));
            Ok(client)
        }
        Tls::Rustls(t) => {
            let (client, conn) = config.connect(t.clone()).await?;
            tokio::spawn(drive(conn, notify));
            Ok(client)
        }
    }
}

async fn drive<S, T>(
    mut conn: tokio_postgres::Connection<S, T>,
    notify: Option<mpsc::UnboundedSender<()>>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(_))) => {
                if let Some(n) = &notify {
                    let _ = n.send(());
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return,
        }
    }
}

/// Follows the shared switch version: `LISTEN`, and a read every second
/// (and after every notification); reconnects when the connection is lost.
async fn follow(config: tokio_postgres::Config, tls: Tls, version: watch::Sender<u64>) {
    loop {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let client = match connect(&config, &tls, Some(tx)).await {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        if client
            .batch_execute(&format!("LISTEN {SWITCH_CHANNEL}"))
            .await
            .is_err()
        {
            tokio::time::sleep(POLL).await;
            continue;
        }
        loop {
            let read = tokio::time::timeout(
                super::postgres::OP_TIMEOUT,
                client.query_one("SELECT version FROM fleet_state WHERE id = 1", &[]),
            )
            .await;
            match read {
                Ok(Ok(row)) => {
                    let v = row.get::<_, i64>(0) as u64;
                    version.send_if_modified(|old| std::mem::replace(old, v) != v);
                }
                _ => break,
            }
            tokio::select! {
                _ = rx.recv() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
        tokio::time::sleep(POLL / 2).await;
    }
}

/// Competes for the leader lock on a session of its own.
async fn lead(config: tokio_postgres::Config, tls: Tls, leader: Arc<AtomicBool>) {
    loop {
        let client = match connect(&config, &tls, None).await {
            Ok(c) => c,
            Err(_) => {
                leader.store(false, Ordering::Release);
                tokio::time::sleep(LEADER_POLL).await;
                continue;
            }
        };
        loop {
            let held = leader.load(Ordering::Acquire);
            let step = async {
                if held {
                    client.simple_query("SELECT 1").await.map(|_| true)
                } else {
                    client
                        .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
                        .await
                        .map(|r| r.get::<_, bool>(0))
                }
            };
            match tokio::time::timeout(super::postgres::OP_TIMEOUT, step).await {
                Ok(Ok(now)) => {
                    if now && !held {
                        tracing::warn!("fleet: this replica is the leader (judges `mode: auto`)");
                    }
                    leader.store(now, Ordering::Release);
                }
                _ => {
                    if held {
                        tracing::warn!("fleet: lost the leader lock's session");
                    }
                    leader.store(false, Ordering::Release);
                    break;
                }
            }
            tokio::time::sleep(LEADER_POLL).await;
        }
        tokio::time::sleep(LEADER_POLL).await;
    }
}

impl PgStore {
    /// The registered replicas, newest heartbeat first.
    pub fn replicas(&self, heartbeat: Duration) -> Result<Vec<ReplicaRow>, StoreError> {
        let gone_after = (heartbeat.as_millis() as i64) * i64::from(MISSED_HEARTBEATS);
        let sql = format!(
            "SELECT id, admin, version, {DB_NOW_MS} - last_seen_ms FROM replicas ORDER BY id"
        );
        self.with_client("list replicas", move |c| async move {
            let rows = c.query(&sql, &[]).await?;
            Ok(rows
                .iter()
                .map(|r| {
                    let ago: i64 = r.get(3);
                    ReplicaRow {
                        id: r.get(0),
                        admin: r.get(1),
                        version: r.get(2),
                        last_seen_ms_ago: ago,
                        alive: ago <= gone_after,
                    }
                })
                .collect())
        })
    }
}
