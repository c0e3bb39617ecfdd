//! The shared store: a PostgreSQL database that every replica of a fleet
//! uses (`store: postgres://…`). The same `kv` and `events` tables as the
//! SQLite store, plus what a fleet shares: each replica's comparison tally
//! (`tallies`, one row per replica, overwritten whole so a retry never
//! counts twice), the replica registry (`replicas`) and the version of the
//! promotion state (`fleet_state`, bumped and announced with `NOTIFY` by
//! every switch).
//!
//! The driver is async (tokio-postgres with a deadpool pool) and runs on
//! the store's own small runtime, so the store's synchronous API can be
//! called from any thread, and nothing the proxy's runtime does waits on
//! the database. Every operation is bounded by [`OP_TIMEOUT`].

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::config::SslMode;

use super::StoreError;

/// The longest one store operation may take, connection included.
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);

/// The channel promotion switches are announced on.
pub const SWITCH_CHANNEL: &str = "shadowgate_switch";

/// Advisory-lock keys (one namespace for shadowgate).
pub const MIGRATION_LOCK: i64 = 0x5348_4144_0001;
pub const LEADER_LOCK: i64 = 0x5348_4144_0002;

/// Numbered migrations; `schema_version` holds how many have run.
const MIGRATIONS: &[&str] = &[
    // 1: the store's tables, the fleet's tallies, registry and switch version.
    "CREATE TABLE kv (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        updated_at BIGINT NOT NULL
     );
     CREATE TABLE events (
        id BIGSERIAL PRIMARY KEY,
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        at BIGINT NOT NULL,
        body TEXT NOT NULL
     );
     CREATE INDEX events_by_subject ON events(kind, subject, id);
     CREATE TABLE tallies (
        replica TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        updated_at BIGINT NOT NULL
     );
     CREATE TABLE replicas (
        id TEXT PRIMARY KEY,
        admin TEXT NOT NULL,
        version TEXT NOT NULL,
        started_at BIGINT NOT NULL,
        last_seen_ms BIGINT NOT NULL
     );
     CREATE TABLE fleet_state (
        id INTEGER PRIMARY KEY,
        version BIGINT NOT NULL
     );
     INSERT INTO fleet_state(id, version) VALUES (1, 0);",
    // 2: each replica's window summaries (gates judge the whole fleet).
    "CREATE TABLE windows (
        replica TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        updated_ms BIGINT NOT NULL
     );",
];

/// The TLS a connection uses, from the URL's `sslmode`.
#[derive(Clone)]
pub(super) enum Tls {
    None,
    Rustls(tokio_postgres_rustls::MakeRustlsConnect),
}

impl Tls {
    fn for_config(config: &tokio_postgres::Config) -> Tls {
        if config.get_ssl_mode() == SslMode::Disable {
            return Tls::None;
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        match rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
        {
            Ok(b) => Tls::Rustls(tokio_postgres_rustls::MakeRustlsConnect::new(
                b.with_root_certificates(roots).with_no_client_auth(),
            )),
            Err(_) => Tls::None,
        }
    }
}

/// The PostgreSQL backend.
pub struct PgStore {
    runtime: Option<tokio::runtime::Runtime>,
    pool: Pool,
    pub(super) config: tokio_postgres::Config,
    pub(super) tls: Tls,
    /// false while the database cannot be reached.
    pub(super) healthy: Arc<AtomicBool>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn pg_err(what: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Postgres {
        what,
        message: e.to_string(),
    }
}

impl PgStore {
    /// Connects, creates or migrates the schema (under an advisory lock, so
    /// replicas starting together do not race) and returns the store.
    pub fn open(url: &str) -> Result<PgStore, StoreError> {
        let mut config =
            crate::config::postgres_config(url).map_err(|e| pg_err("read the URL", e))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(2));
        }
        if config.get_application_name().is_none() {
            config.application_name("shadowgate");
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("store-pg")
            .enable_all()
            .build()
            .map_err(|e| pg_err("start the store's runtime", e))?;
        let tls = Tls::for_config(&config);
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &tls {
            Tls::None => {
                Manager::from_config(config.clone(), tokio_postgres::NoTls, manager_config)
            }
            Tls::Rustls(t) => Manager::from_config(config.clone(), t.clone(), manager_config),
        };
        let pool = {
            let _entered = runtime.enter();
            Pool::builder(manager)
                .max_size(4)
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .wait_timeout(Some(OP_TIMEOUT))
                .create_timeout(Some(OP_TIMEOUT))
                .recycle_timeout(Some(OP_TIMEOUT))
                .build()
                .map_err(|e| pg_err("build the pool", e))?
        };
        let store = PgStore {
            runtime: Some(runtime),
            pool,
            config,
            tls,
            healthy: Arc::new(AtomicBool::new(true)),
        };
        let pool = store.pool.clone();
        store.call("migrate the schema", async move {
            let mut client = pool.get().await.map_err(|e| pg_err("connect", e))?;
            migrate(&mut client).await
        })?;
        Ok(store)
    }

    pub(super) fn handle(&self) -> Option<tokio::runtime::Handle> {
        self.runtime.as_ref().map(|r| r.handle().clone())
    }

    pub(super) fn pool(&self) -> Pool {
        self.pool.clone()
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Runs `f` on the store's runtime and waits for it (at most
    /// [`OP_TIMEOUT`]); marks the store degraded when it fails.
    pub(super) fn call<T, F>(&self, what: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let Some(handle) = self.handle() else {
            return Err(pg_err(what, "the store is shut down"));
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        handle.spawn(async move {
            let r = match tokio::time::timeout(OP_TIMEOUT, f).await {
                Ok(r) => r,
                Err(_) => Err(pg_err(what, "timed out")),
            };
            let _ = tx.send(r);
        });
        let r = rx
            .recv_timeout(OP_TIMEOUT + Duration::from_secs(1))
            .unwrap_or_else(|_| Err(pg_err(what, "timed out")));
        self.healthy.store(r.is_ok(), Ordering::Release);
        r
    }

    /// A pooled client, then `f` with it.
    pub(super) fn with_client<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(deadpool_postgres::Object) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, tokio_postgres::Error>> + Send,
    {
        let pool = self.pool.clone();
        self.call(what, async move {
            let client = pool.get().await.map_err(|e| pg_err(what, e))?;
            f(client).await.map_err(|e| pg_err(what, e))
        })
    }
}

async fn migrate(client: &mut deadpool_postgres::Object) -> Result<(), StoreError> {
    let e = |what| move |err: tokio_postgres::Error| pg_err(what, err);
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(e("take the migration lock"))?;
    let result = run_migrations(client).await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result
}

async fn run_migrations(client: &mut deadpool_postgres::Object) -> Result<(), StoreError> {
    let e = |what| move |err: tokio_postgres::Error| pg_err(what, err);
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .await
        .map_err(e("create schema_version"))?;
    let row = client
        .query_opt("SELECT version FROM schema_version", &[])
        .await
        .map_err(e("read schema_version"))?;
    let current = row.map(|r| r.get::<_, i32>(0)).unwrap_or(0).max(0) as usize;
    if current > MIGRATIONS.len() {
        return Err(pg_err(
            "check the schema",
            format!(
                "the database has schema version {current}, newer than this shadowgate knows ({})",
                MIGRATIONS.len()
            ),
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let version = (i + 1) as i32;
        let tx = client.transaction().await.map_err(e("begin a migration"))?;
        tx.batch_execute(sql).await.map_err(e("migrate"))?;
        tx.execute("DELETE FROM schema_version", &[])
            .await
            .map_err(e("migrate"))?;
        tx.execute(
            "INSERT INTO schema_version(version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(e("migrate"))?;
        tx.commit().await.map_err(e("commit a migration"))?;
        tracing::info!(version, "store: schema migrated");
    }
    Ok(())
}

/// Milliseconds since the epoch, as the database's clock says.
pub(super) const DB_NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// The storage operations, as in the SQLite store.
impl PgStore {
    pub fn put_text(&self, key: &str, text: String) -> Result<(), StoreError> {
        let key = key.to_string();
        self.with_client("put", move |c| async move {
            c.execute(
                "INSERT INTO kv(key, value, updated_at) VALUES ($1, $2, extract(epoch from now())::bigint)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                &[&key, &text],
            )
            .await
            .map(|_| ())
        })
    }

    pub fn get_text(&self, key: &str) -> Result<Option<String>, StoreError> {
        let key = key.to_string();
        self.with_client("get", move |c| async move {
            let row = c
                .query_opt("SELECT value FROM kv WHERE key = $1", &[&key])
                .await?;
            Ok(row.map(|r| r.get::<_, String>(0)))
        })
    }

    pub fn delete(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_string();
        self.with_client("delete", move |c| async move {
            c.execute("DELETE FROM kv WHERE key = $1", &[&key])
                .await
                .map(|_| ())
        })
    }

    pub fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let prefix = prefix.to_string();
        self.with_client("keys", move |c| async move {
            let rows = c
                .query(
                    "SELECT key FROM kv WHERE left(key, length($1)) = $1 ORDER BY key",
                    &[&prefix],
                )
                .await?;
            Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
        })
    }

    pub fn append_event_text(
        &self,
        kind: &str,
        subject: &str,
        text: String,
        keep: usize,
    ) -> Result<(), StoreError> {
        let (kind, subject) = (kind.to_string(), subject.to_string());
        self.with_client("append event", move |mut c| async move {
            let tx = c.transaction().await?;
            insert_event(&tx, &kind, &subject, &text, keep).await?;
            tx.commit().await
        })
    }

    pub fn events_text(&self, kind: &str, subject: &str) -> Result<Vec<String>, StoreError> {
        let (kind, subject) = (kind.to_string(), subject.to_string());
        self.with_client("events", move |c| async move {
            let rows = c
                .query(
                    "SELECT body FROM events WHERE kind = $1 AND subject = $2 ORDER BY id",
                    &[&kind, &subject],
                )
                .await?;
            Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
        })
    }

    /// One switch: the value under `key` set (or removed), an event
    /// appended and the fleet's state version bumped and announced, in one
    /// transaction. Refused when the state changed since `expected` (another
    /// replica switched first): the caller's view is stale.
    pub fn record_switch(
        &self,
        key: &str,
        value: Option<String>,
        event: (&str, &str, String, usize),
        expected: Option<u64>,
    ) -> Result<Result<u64, u64>, StoreError> {
        let key = key.to_string();
        let (kind, subject, body, keep) =
            (event.0.to_string(), event.1.to_string(), event.2, event.3);
        self.with_client("record a switch", move |mut c| async move {
            let tx = c.transaction().await?;
            let current: i64 = tx
                .query_one(
                    "SELECT version FROM fleet_state WHERE id = 1 FOR UPDATE",
                    &[],
                )
                .await?
                .get(0);
            if expected.is_some_and(|v| v != current as u64) {
                return Ok(Err(current as u64));
            }
            match &value {
                Some(v) => tx.execute(
                    "INSERT INTO kv(key, value, updated_at) VALUES ($1, $2, extract(epoch from now())::bigint)
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                    &[&key, v],
                ).await?,
                None => tx.execute("DELETE FROM kv WHERE key = $1", &[&key]).await?,
            };
            insert_event(&tx, &kind, &subject, &body, keep).await?;
            let version: i64 = tx
                .query_one(
                    "UPDATE fleet_state SET version = version + 1 WHERE id = 1 RETURNING version",
                    &[],
                )
                .await?
                .get(0);
            tx.execute(
                "SELECT pg_notify($1, $2)",
                &[&SWITCH_CHANNEL, &version.to_string()],
            )
            .await?;
            tx.commit().await?;
            Ok(Ok(version as u64))
        })
    }

    /// The fleet's promotion-state version.
    pub fn switch_version(&self) -> Result<u64, StoreError> {
        self.with_client("read the switch version", |c| async move {
            let v: i64 = c
                .query_one("SELECT version FROM fleet_state WHERE id = 1", &[])
                .await?
                .get(0);
            Ok(v as u64)
        })
    }

    /// Overwrites this replica's cumulative tally (idempotent).
    pub fn put_tally(&self, replica: &str, text: String) -> Result<(), StoreError> {
        let replica = replica.to_string();
        self.with_client("store the tally", move |c| async move {
            c.execute(
                "INSERT INTO tallies(replica, state, updated_at) VALUES ($1, $2, extract(epoch from now())::bigint)
                 ON CONFLICT(replica) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                &[&replica, &text],
            )
            .await
            .map(|_| ())
        })
    }

    /// Every replica's tally, by replica.
    pub fn tallies(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.with_client("read the tallies", |c| async move {
            let rows = c
                .query("SELECT replica, state FROM tallies ORDER BY replica", &[])
                .await?;
            Ok(rows
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
                .collect())
        })
    }
}

impl PgStore {
    /// Overwrites this replica's window summaries.
    pub fn put_windows(&self, replica: &str, text: String) -> Result<(), StoreError> {
        let replica = replica.to_string();
        let sql = format!(
            "INSERT INTO windows(replica, state, updated_ms) VALUES ($1, $2, {DB_NOW_MS})
             ON CONFLICT(replica) DO UPDATE SET state = excluded.state, updated_ms = excluded.updated_ms"
        );
        self.with_client("store the window summaries", move |c| async move {
            c.execute(&sql, &[&replica, &text]).await.map(|_| ())
        })
    }

    /// The window summaries written within `fresh` by replicas other than `me`.
    pub fn windows(&self, me: &str, fresh: Duration) -> Result<Vec<(String, String)>, StoreError> {
        let me = me.to_string();
        let fresh = fresh.as_millis() as i64;
        let sql = format!(
            "SELECT replica, state FROM windows WHERE replica <> $1 AND updated_ms > {DB_NOW_MS} - $2"
        );
        self.with_client("read the window summaries", move |c| async move {
            let rows = c.query(&sql, &[&me, &fresh]).await?;
            Ok(rows
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
                .collect())
        })
    }
}

async fn insert_event(
    tx: &deadpool_postgres::Transaction<'_>,
    kind: &str,
    subject: &str,
    text: &str,
    keep: usize,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "INSERT INTO events(kind, subject, at, body) VALUES ($1, $2, extract(epoch from now())::bigint, $3)",
        &[&kind, &subject, &text],
    )
    .await?;
    tx.execute(
        "DELETE FROM events WHERE kind = $1 AND subject = $2 AND id NOT IN
           (SELECT id FROM events WHERE kind = $1 AND subject = $2 ORDER BY id DESC LIMIT $3)",
        &[&kind, &subject, &(keep as i64)],
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_chooses_the_connector() {
        let tls = |url: &str| Tls::for_config(&crate::config::postgres_config(url).unwrap());
        assert!(matches!(tls("postgres://a@h/d?sslmode=disable"), Tls::None));
        for mode in ["prefer", "require", "verify-ca", "verify-full"] {
            assert!(
                matches!(
                    tls(&format!("postgres://a@h/d?sslmode={mode}")),
                    Tls::Rustls(_)
                ),
                "{mode}"
            );
        }
        assert!(matches!(tls("postgresql://a@h/d"), Tls::Rustls(_)));
    }

    #[test]
    fn an_unreachable_database_fails_the_open_in_bounded_time() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let started = tokio::time::Instant::now();
        let err = PgStore::open(&format!(
            "postgres://sg:secret@127.0.0.1:{port}/db?sslmode=disable"
        ))
        .err()
        .expect("nothing listens there");
        assert!(started.elapsed() < OP_TIMEOUT + Duration::from_secs(2));
        let text = err.to_string();
        assert!(text.contains("PostgreSQL"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }
}
