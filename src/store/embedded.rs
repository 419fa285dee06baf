//! The embedded store: a redb database in the data folder, so `cargo run` needs nothing
//! installed. Each write is one durable (fsynced) transaction: a visit answered 200
//! survives `kill -9`. The file is locked by the process that opens it, so this store
//! serves exactly one replica; a stack of replicas needs Redis.
//!
//! Writes go to one thread that owns the write path. It takes every write request waiting
//! when a commit ends and makes them one transaction (group commit), so the disk sees one
//! fsync however many batches arrived meanwhile, and no commit waits on the async runtime's
//! scheduler to be handed the next one. While visits arrive together, the thread looks for
//! the next request for a moment after each commit instead of going to sleep at once.

use std::{
    num::NonZero,
    path::Path,
    sync::{Arc, mpsc},
    thread,
    time::{Duration, Instant},
};

use metrics::histogram;
use tokio::sync::oneshot;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{ReplicaStats, Snapshot, StoreError, StoreErrorKind};

/// One table, so that a commit touches as few pages as possible: `(key, "")` holds the
/// total under the counter key, `(key, replica)` that replica's share.
const COUNTS: TableDefinition<(&str, &str), u64> = TableDefinition::new("counts");
const TOTAL: &str = "";

const FILE_NAME: &str = "stackdemo.redb";

/// How long the writer thread looks for the next request after a commit before it goes
/// to sleep, while visits arrive together. Sleeping and being woken costs a trip through
/// the scheduler that, under load, holds up the next commit for longer than this. With the
/// spin, visits/s with this store under load rose by 2–14 % (`bench/README.md`).
const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(100);

pub struct EmbeddedStore {
    db: Arc<Database>,
    /// Taken and dropped first on drop, which ends the writer thread; then it is joined,
    /// so that the database file is closed when the store is gone.
    writer: Option<mpsc::Sender<Write>>,
    writer_thread: Option<thread::JoinHandle<()>>,
    counter_key: Arc<str>,
    replica: Arc<str>,
    version: String,
}

impl EmbeddedStore {
    /// Opens (or creates) the database in `dir`. Fails when the folder cannot be used or
    /// another process holds the database.
    pub fn open(
        dir: &Path,
        counter_key: &str,
        replica: &str,
        version: &str,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::new(
                StoreErrorKind::Failed,
                format!("cannot create {}: {e}", dir.display()),
            )
        })?;
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|e| {
            StoreError::new(
                StoreErrorKind::Failed,
                format!("cannot open {}: {e}", path.display()),
            )
        })?;
        // Create the tables up front so that readers never meet a missing table.
        let txn = db.begin_write().map_err(failed)?;
        txn.open_table(COUNTS).map_err(failed)?;
        txn.commit().map_err(failed)?;
        let db = Arc::new(db);
        let (writer, requests) = mpsc::channel();
        let writer_db = db.clone();
        let key: Arc<str> = counter_key.into();
        let share: Arc<str> = replica.into();
        let writer_thread = thread::Builder::new()
            .name("stackdemo-writer".into())
            .spawn(move || write_loop(&writer_db, &key, &share, &requests, spin_limit()))
            .map_err(failed)?;
        Ok(Self {
            db,
            writer: Some(writer),
            writer_thread: Some(writer_thread),
            counter_key: counter_key.into(),
            replica: replica.into(),
            version: version.to_owned(),
        })
    }

    pub async fn add_visits(&self, count: u64) -> Result<u64, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .as_ref()
            .ok_or_else(|| StoreError::new(StoreErrorKind::Failed, "the store is closed"))?
            .send(Write { count, reply })
            .map_err(|_| StoreError::new(StoreErrorKind::Failed, "the writer thread ended"))?;
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::new(
                StoreErrorKind::Failed,
                "the writer thread ended",
            ))
        })
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let db = self.db.clone();
        blocking(move || db.begin_read().map(drop).map_err(failed)).await
    }

    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let db = self.db.clone();
        let key = self.counter_key.clone();
        let replica = self.replica.clone();
        let version = self.version.clone();
        blocking(move || {
            let txn = db.begin_read().map_err(failed)?;
            let counts = txn.open_table(COUNTS).map_err(failed)?;
            let mut total = 0;
            let mut replicas = Vec::new();
            let mut seen_self = false;
            for entry in counts.range((&*key, TOTAL)..).map_err(failed)? {
                let (k, visits) = entry.map_err(failed)?;
                let (owner, name) = k.value();
                if owner != &*key {
                    break;
                }
                if name == TOTAL {
                    total = visits.value();
                    continue;
                }
                let name = name.to_owned();
                let is_self = name == *replica;
                seen_self |= is_self;
                replicas.push(ReplicaStats {
                    alive: is_self,
                    version: is_self.then(|| version.clone()),
                    name,
                    visits: visits.value(),
                });
            }
            if !seen_self {
                replicas.push(ReplicaStats {
                    name: replica.to_string(),
                    visits: 0,
                    alive: true,
                    version: Some(version),
                });
                replicas.sort_by(|a, b| a.name.cmp(&b.name));
            }
            Ok(Snapshot { total, replicas })
        })
        .await
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        drop(self.writer.take());
        if let Some(thread) = self.writer_thread.take() {
            let _ = thread.join();
        }
    }
}

/// One request to add `count` visits; answered with the total after them.
struct Write {
    count: u64,
    reply: oneshot::Sender<Result<u64, StoreError>>,
}

/// The writer thread: until the store is dropped, commit everything waiting as one
/// transaction and answer each request with its own part of the new range.
fn write_loop(
    db: &Database,
    key: &str,
    replica: &str,
    requests: &mpsc::Receiver<Write>,
    spin_limit: Duration,
) {
    let mut spin = Duration::ZERO;
    while let Some(first) = next_write(requests, spin) {
        let mut writes = vec![first];
        writes.extend(requests.try_iter());
        let count: u64 = writes.iter().map(|w| w.count).sum();
        // A lone visit (a quiet service, or one client at a time) is not worth spinning for.
        spin = if count > 1 {
            spin_limit
        } else {
            Duration::ZERO
        };
        match commit(db, key, replica, count) {
            Ok(total) => {
                histogram!("stackdemo_embedded_commit_visits").record(count as f64);
                let mut end = total - count;
                for write in writes {
                    end += write.count;
                    let _ = write.reply.send(Ok(end));
                }
            }
            Err(error) => {
                for write in writes {
                    let _ = write.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// How long the writer may spin: not at all on a single CPU, where spinning would hold up
/// the thread that sends the next request.
fn spin_limit() -> Duration {
    match thread::available_parallelism().map_or(1, NonZero::get) {
        1 => Duration::ZERO,
        _ => SPIN_BEFORE_SLEEP,
    }
}

/// The next write request, looked for without sleeping for up to `spin`, then waited
/// for. `None` once the store has been dropped.
fn next_write(requests: &mpsc::Receiver<Write>, spin: Duration) -> Option<Write> {
    let start = Instant::now();
    while start.elapsed() < spin {
        match requests.try_recv() {
            Ok(write) => return Some(write),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) => std::hint::spin_loop(),
        }
    }
    requests.recv().ok()
}

/// Adds `count` to the total and to this replica's share in one durable transaction.
fn commit(db: &Database, key: &str, replica: &str, count: u64) -> Result<u64, StoreError> {
    let txn = db.begin_write().map_err(failed)?;
    let total = {
        let mut counts = txn.open_table(COUNTS).map_err(failed)?;
        let read = |counts: &redb::Table<(&str, &str), u64>, field: &str| {
            counts
                .get((key, field))
                .map(|v| v.map_or(0, |v| v.value()))
                .map_err(failed)
        };
        let total = read(&counts, TOTAL)?
            .checked_add(count)
            .ok_or_else(overflow)?;
        let mine = read(&counts, replica)?.saturating_add(count);
        counts.insert((key, TOTAL), total).map_err(failed)?;
        counts.insert((key, replica), mine).map_err(failed)?;
        total
    };
    // The default durability is Immediate: commit returns after the data is on disk.
    txn.commit().map_err(failed)?;
    Ok(total)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(StoreError::new(StoreErrorKind::Failed, e.to_string())))
}

fn failed(error: impl std::fmt::Display) -> StoreError {
    StoreError::new(StoreErrorKind::Failed, error.to_string())
}

fn overflow() -> StoreError {
    StoreError::new(StoreErrorKind::Failed, "the counter is at its maximum")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(sender: &mpsc::Sender<Write>, count: u64) {
        let (reply, _) = oneshot::channel();
        sender.send(Write { count, reply }).unwrap();
    }

    #[test]
    fn the_writer_gets_requests_in_order_whether_it_spins_or_sleeps_and_stops_with_the_store() {
        let (sender, requests) = mpsc::channel();
        send(&sender, 1);
        send(&sender, 2);
        assert_eq!(
            next_write(&requests, SPIN_BEFORE_SLEEP).map(|w| w.count),
            Some(1)
        );
        assert_eq!(
            next_write(&requests, Duration::ZERO).map(|w| w.count),
            Some(2)
        );

        // Sent from another thread: found while spinning, or after falling asleep.
        let late = thread::spawn(move || send(&sender, 3));
        assert_eq!(
            next_write(&requests, SPIN_BEFORE_SLEEP).map(|w| w.count),
            Some(3)
        );
        late.join().unwrap();

        // The sender is gone with that thread, as when the store is dropped.
        assert!(next_write(&requests, SPIN_BEFORE_SLEEP).is_none());
        assert!(next_write(&requests, Duration::ZERO).is_none());
    }
}
