//! The embedded store: a SQLite file (or memory) holding what must survive
//! a restart — comparison results and examples, who is primary, and the
//! history of promotions. Only background tasks and the admin API touch it;
//! no request ever waits on disk.
//!
//! With `store: postgres://…` the same API is served by a PostgreSQL
//! database shared by a fleet of replicas ([`postgres`], [`fleet`]).

pub mod fleet;
pub mod postgres;

use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use serde::{de::DeserializeOwned, Serialize};

use crate::config::StoreLocation;

/// A store failure, naming what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: cannot open: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("store: {what}: {source}")]
    Sql {
        what: &'static str,
        source: rusqlite::Error,
    },
    #[error("store (PostgreSQL): {what}: {message}")]
    Postgres { what: &'static str, message: String },
    #[error("store: {what}: {source}")]
    Json {
        what: &'static str,
        source: serde_json::Error,
    },
}

/// How long a write waits for another connection's lock on the same file
/// before failing with "database is locked".
pub const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The store. Cheap operations, called from background tasks and the admin API.
pub struct Store {
    conn: parking_lot::Mutex<Connection>,
    location: StoreLocation,
    /// The shared backend, when `store:` is a PostgreSQL URL (`conn` is
    /// then an unused in-memory database).
    pg: Option<postgres::PgStore>,
    /// This replica's fleet membership (PostgreSQL only), once joined.
    fleet: std::sync::OnceLock<fleet::Fleet>,
    /// This replica's id.
    replica: String,
    /// The registry as last read (shown while the database is unreachable).
    last_replicas: parking_lot::Mutex<Vec<fleet::ReplicaRow>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("location", &self.location)
            .finish()
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    at INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_subject ON events(kind, subject, id);
";

impl Store {
    /// Opens (creating if needed) the store.
    pub fn open(location: &StoreLocation) -> Result<Store, StoreError> {
        let pg = match location {
            StoreLocation::Postgres(url) => Some(postgres::PgStore::open(url)?),
            _ => None,
        };
        let conn = match location {
            StoreLocation::File(p) => Connection::open(p),
            StoreLocation::Memory | StoreLocation::Postgres(_) => Connection::open_in_memory(),
        }
        .map_err(|source| StoreError::Open {
            path: describe(location),
            source,
        })?;
        // The busy timeout first: switching to WAL itself takes a lock.
        conn.busy_timeout(BUSY_TIMEOUT)
            .and_then(|()| {
                conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
            })
            .map_err(|source| StoreError::Open {
                path: describe(location),
                source,
            })?;
        conn.execute_batch(SCHEMA)
            .map_err(|source| StoreError::Open {
                path: describe(location),
                source,
            })?;
        Ok(Store {
            conn: parking_lot::Mutex::new(conn),
            location: location.clone(),
            pg,
            fleet: std::sync::OnceLock::new(),
            replica: fleet::replica_id(),
            last_replicas: parking_lot::Mutex::new(Vec::new()),
        })
    }

    /// Whether the store is shared by a fleet (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        self.pg.is_some()
    }

    /// This replica's id (host or pod name and process id).
    pub fn replica_id(&self) -> &str {
        &self.replica
    }

    /// `ok`, or `degraded` while the shared database cannot be reached.
    pub fn health(&self) -> &'static str {
        match &self.pg {
            Some(pg) if !pg.healthy() => "degraded",
            _ => "ok",
        }
    }

    /// Registers this replica in the fleet (PostgreSQL only; no-op otherwise).
    pub fn join_fleet(&self, admin: String, heartbeat: std::time::Duration) {
        let Some(pg) = &self.pg else { return };
        let info = fleet::ReplicaInfo {
            id: self.replica.clone(),
            admin,
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        if let Some(f) = fleet::join(pg, info, heartbeat) {
            let _ = self.fleet.set(f);
        }
    }

    /// The fleet membership, when shared and joined.
    pub fn fleet(&self) -> Option<&fleet::Fleet> {
        self.fleet.get()
    }

    /// Whether this replica may run `mode: auto`: always with a local
    /// store; with a shared one only while it holds the leader lock.
    pub fn may_judge(&self) -> bool {
        match (&self.pg, self.fleet.get()) {
            (None, _) => true,
            (Some(_), Some(f)) => f.is_leader(),
            (Some(_), None) => false,
        }
    }

    /// The registered replicas (empty with a local store); while the
    /// database cannot be reached, the list as last read.
    pub fn replicas(&self) -> Vec<fleet::ReplicaRow> {
        let (Some(pg), Some(f)) = (&self.pg, self.fleet.get()) else {
            return Vec::new();
        };
        match pg.replicas(f.heartbeat) {
            Ok(rows) => {
                *self.last_replicas.lock() = rows.clone();
                rows
            }
            Err(_) => self.last_replicas.lock().clone(),
        }
    }

    /// The shared promotion-state version (0 with a local store).
    pub fn switch_version(&self) -> Result<u64, StoreError> {
        match &self.pg {
            Some(pg) => pg.switch_version(),
            None => Ok(0),
        }
    }

    /// Records one switch: `value` stored under `key` (or removed), an event
    /// appended, and (shared store) the state version bumped and announced,
    /// refused with `Ok(Err(current))` when the version is no longer
    /// `expected`.
    pub fn record_switch<T: Serialize, E: Serialize>(
        &self,
        key: &str,
        value: Option<&T>,
        event: (&str, &str, &E, usize),
        expected: Option<u64>,
    ) -> Result<Result<u64, u64>, StoreError> {
        let Some(pg) = &self.pg else {
            match value {
                Some(v) => self.put(key, v)?,
                None => self.delete(key)?,
            }
            self.append_event(event.0, event.1, event.2, event.3)?;
            return Ok(Ok(0));
        };
        let value = value.map(encode).transpose()?;
        pg.record_switch(
            key,
            value,
            (event.0, event.1, encode(event.2)?, event.3),
            expected,
        )
    }

    /// Writes this replica's cumulative tally under its id (shared store).
    pub fn put_replica_state<T: Serialize>(&self, value: &T) -> Result<(), StoreError> {
        match &self.pg {
            Some(pg) => pg.put_tally(&self.replica, encode(value)?),
            None => Ok(()),
        }
    }

    /// Writes this replica's window summaries (shared store; no-op otherwise).
    pub fn put_replica_windows<T: Serialize>(&self, value: &T) -> Result<(), StoreError> {
        match &self.pg {
            Some(pg) => pg.put_windows(&self.replica, encode(value)?),
            None => Ok(()),
        }
    }

    /// The other live replicas' window summaries (written within 3
    /// heartbeats); empty with a local store.
    pub fn other_replica_windows<T: DeserializeOwned>(&self) -> Result<Vec<T>, StoreError> {
        let (Some(pg), Some(f)) = (&self.pg, self.fleet.get()) else {
            return Ok(Vec::new());
        };
        pg.windows(
            &self.replica,
            (f.heartbeat * fleet::MISSED_HEARTBEATS).max(std::time::Duration::from_secs(3)),
        )?
        .into_iter()
        .map(|(_, text)| decode(&text))
        .collect()
    }

    /// Every replica's stored tally, by replica id (shared store; empty otherwise).
    pub fn replica_states<T: DeserializeOwned>(&self) -> Result<Vec<(String, T)>, StoreError> {
        let Some(pg) = &self.pg else {
            return Ok(Vec::new());
        };
        pg.tallies()?
            .into_iter()
            .map(|(id, text)| Ok((id, decode(&text)?)))
            .collect()
    }

    pub fn location(&self) -> &StoreLocation {
        &self.location
    }

    /// Writes a JSON value under `key`.
    pub fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        let text = encode(value)?;
        if let Some(pg) = &self.pg {
            return pg.put_text(key, text);
        }
        self.conn
            .lock()
            .execute(
                "INSERT INTO kv(key, value, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                params![key, text, now_secs()],
            )
            .map_err(|source| StoreError::Sql { what: "put", source })?;
        Ok(())
    }

    /// Reads the JSON value under `key`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        if let Some(pg) = &self.pg {
            return pg.get_text(key)?.map(|t| decode(&t)).transpose();
        }
        let text: Option<String> = self
            .conn
            .lock()
            .query_row("SELECT value FROM kv WHERE key = ?1", params![key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|source| StoreError::Sql {
                what: "get",
                source,
            })?;
        text.map(|t| {
            serde_json::from_str(&t).map_err(|source| StoreError::Json {
                what: "decode",
                source,
            })
        })
        .transpose()
    }

    /// Removes `key`.
    pub fn delete(&self, key: &str) -> Result<(), StoreError> {
        if let Some(pg) = &self.pg {
            return pg.delete(key);
        }
        self.conn
            .lock()
            .execute("DELETE FROM kv WHERE key = ?1", params![key])
            .map_err(|source| StoreError::Sql {
                what: "delete",
                source,
            })?;
        Ok(())
    }

    /// Keys starting with `prefix`.
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        if let Some(pg) = &self.pg {
            return pg.keys(prefix);
        }
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare("SELECT key FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key")
            .map_err(|source| StoreError::Sql {
                what: "keys",
                source,
            })?;
        let upper = format!("{prefix}\u{10ffff}");
        let rows = stmt
            .query_map(params![prefix, upper], |r| r.get::<_, String>(0))
            .map_err(|source| StoreError::Sql {
                what: "keys",
                source,
            })?;
        rows.collect::<Result<_, _>>()
            .map_err(|source| StoreError::Sql {
                what: "keys",
                source,
            })
    }

    /// Appends an event (e.g. a promotion) about `subject`; keeps the newest `keep`.
    pub fn append_event<T: Serialize>(
        &self,
        kind: &str,
        subject: &str,
        body: &T,
        keep: usize,
    ) -> Result<(), StoreError> {
        let text = encode(body)?;
        if let Some(pg) = &self.pg {
            return pg.append_event_text(kind, subject, text, keep);
        }
        let conn = self.conn.lock();
        conn.execute(
            "INSERT INTO events(kind, subject, at, body) VALUES (?1, ?2, ?3, ?4)",
            params![kind, subject, now_secs(), text],
        )
        .map_err(|source| StoreError::Sql {
            what: "append event",
            source,
        })?;
        conn.execute(
            "DELETE FROM events WHERE kind = ?1 AND subject = ?2 AND id NOT IN
               (SELECT id FROM events WHERE kind = ?1 AND subject = ?2 ORDER BY id DESC LIMIT ?3)",
            params![kind, subject, keep as i64],
        )
        .map_err(|source| StoreError::Sql {
            what: "trim events",
            source,
        })?;
        Ok(())
    }

    /// Events about `subject`, oldest first.
    pub fn events<T: DeserializeOwned>(
        &self,
        kind: &str,
        subject: &str,
    ) -> Result<Vec<T>, StoreError> {
        if let Some(pg) = &self.pg {
            return pg
                .events_text(kind, subject)?
                .iter()
                .map(|t| decode(t))
                .collect();
        }
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare("SELECT body FROM events WHERE kind = ?1 AND subject = ?2 ORDER BY id")
            .map_err(|source| StoreError::Sql {
                what: "events",
                source,
            })?;
        let rows = stmt
            .query_map(params![kind, subject], |r| r.get::<_, String>(0))
            .map_err(|source| StoreError::Sql {
                what: "events",
                source,
            })?;
        let mut out = Vec::new();
        for row in rows {
            let text = row.map_err(|source| StoreError::Sql {
                what: "events",
                source,
            })?;
            out.push(
                serde_json::from_str(&text).map_err(|source| StoreError::Json {
                    what: "decode event",
                    source,
                })?,
            );
        }
        Ok(out)
    }
}

fn encode<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|source| StoreError::Json {
        what: "encode",
        source,
    })
}

fn decode<T: DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|source| StoreError::Json {
        what: "decode",
        source,
    })
}

fn describe(location: &StoreLocation) -> String {
    match location {
        StoreLocation::File(p) => p.display().to_string(),
        StoreLocation::Memory => "memory".into(),
        StoreLocation::Postgres(url) => redact_url(url),
    }
}

/// A PostgreSQL URL with its password hidden, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some((a, h)) => (a, h),
        None => return url.to_string(),
    };
    let user = auth.split(':').next().unwrap_or("");
    if auth.contains(':') {
        format!("{scheme}://{user}:***@{host}")
    } else {
        format!("{scheme}://{user}@{host}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_events_survive_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let loc = StoreLocation::File(dir.path().join("s.db"));
        {
            let s = Store::open(&loc).unwrap();
            s.put("promotion:shop", &serde_json::json!({"primary": "v2"}))
                .unwrap();
            s.put("tally", &vec![1, 2, 3]).unwrap();
            for i in 0..5 {
                s.append_event("promotion", "shop", &serde_json::json!({ "n": i }), 3)
                    .unwrap();
            }
        }
        let s = Store::open(&loc).unwrap();
        let v: serde_json::Value = s.get("promotion:shop").unwrap().unwrap();
        assert_eq!(v["primary"], "v2");
        assert_eq!(s.get::<Vec<i32>>("tally").unwrap(), Some(vec![1, 2, 3]));
        assert_eq!(
            s.keys("promotion:").unwrap(),
            vec!["promotion:shop".to_string()]
        );
        let events: Vec<serde_json::Value> = s.events("promotion", "shop").unwrap();
        assert_eq!(
            events
                .iter()
                .map(|e| e["n"].as_i64().unwrap())
                .collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        s.delete("tally").unwrap();
        assert_eq!(s.get::<Vec<i32>>("tally").unwrap(), None);
    }

    #[test]
    fn urls_are_shown_without_their_password() {
        assert_eq!(
            redact_url("postgres://sg:pw@db:5432/x?sslmode=require"),
            "postgres://sg:***@db:5432/x?sslmode=require"
        );
        assert_eq!(redact_url("postgresql://sg@db/x"), "postgresql://sg@db/x");
        assert_eq!(redact_url("postgres://db/x"), "postgres://db/x");
    }

    #[test]
    fn memory_store_keeps_nothing_on_disk() {
        let s = Store::open(&StoreLocation::Memory).unwrap();
        s.put("k", &1).unwrap();
        assert_eq!(s.get::<i32>("k").unwrap(), Some(1));
    }
}
