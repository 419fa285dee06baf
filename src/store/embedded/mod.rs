//! The embedded store: a redb database in the data folder, so `cargo run` needs nothing
//! installed. Each write is one durable (fsynced) transaction: a visit answered 200
//! survives `kill -9`. The file is locked by the process that opens it, so this store
//! serves exactly one replica; a stack of replicas needs Redis.
//!
//! Writes go to one thread that owns the write path. It takes every write request waiting
//! when a commit ends and makes them one transaction (group commit), so the disk sees one
//! fsync however many batches arrived meanwhile. While visits arrive together, the thread
//! looks for the next request for a moment after each commit instead of going to sleep.
//!
//! A write is either taken by the writer or called back by its caller, never both (the
//! hand-off is in `writer`): a caller that gives up before the writer took its write
//! leaves it uncommitted, and a caller whose write was taken waits for the commit, since a
//! commit under way cannot be called back: so a visit answered 503 is never committed,
//! unless the disk stalls past the time its visits must be answered by, when they are
//! answered as in doubt.
//!
//! When a write fails (a full disk, an I/O error, a panic inside redb on a damaged
//! file), the store reports not-ready and the writer opens the database again, until it
//! works: service resumes by itself once space is freed. A file that keeps failing as
//! damaged makes the store give up (`gave_up`), and the service exits so that the
//! orchestrator can replace it; on start, such a file is refused with a clear error.

mod backend;
mod file;
mod tables;
mod writer;

use std::{
    io,
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU8, AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use redb::{Database, ReadableDatabase};
use tokio::{
    sync::oneshot,
    time::{Instant, timeout_at},
};
use tokio_util::sync::CancellationToken;

use self::{
    backend::{Length, TrackedFile},
    file::FileId,
    tables::{COUNTS, TOTAL},
    writer::{CALLED_BACK, WAITING, Write, spin_limit, write_loop},
};
use super::{AdminError, Identity, Previous, ReplicaStats, Snapshot, StoreError, StoreErrorKind};
use crate::counters::{
    CounterName, CounterPolicy, CounterReading, Tally, TallyResult, export::CounterExport,
};

const FILE_NAME: &str = "stackdemo.redb";

/// How long reopening the database waits for reads still holding it (each holds it for
/// one read) before it gives up, to try again later.
const READERS_GONE_WITHIN: Duration = Duration::from_secs(1);

pub struct EmbeddedStore {
    inner: Arc<Inner>,
    /// Taken and dropped first on drop, which ends the writer thread; then it is joined,
    /// so that the database file is closed when the store is gone.
    writer: Option<mpsc::Sender<Write>>,
    writer_thread: Option<thread::JoinHandle<()>>,
    /// How long past its deadline a write whose commit is under way is waited for.
    commit_grace: Duration,
}

/// What the writer thread and the readers share.
struct Inner {
    path: PathBuf,
    /// `None` while the writer opens the database again.
    db: RwLock<Option<Arc<Database>>>,
    /// Which file the database has open, as the path named it then.
    file: Mutex<Option<FileId>>,
    /// A handle of its own on that file. After an I/O error the database refuses to read
    /// until it is opened again; if the file is gone from the path by then, its counts are
    /// read through this handle (`file::restore`).
    held: Mutex<Option<std::fs::File>>,
    /// Whether another process wrote to that file in place (`file::Writers`).
    writers: file::Writers,
    /// The last write's failure, until a write succeeds again.
    failing: Mutex<Option<StoreError>>,
    /// When the commit under way began.
    committing_since: Mutex<Option<Instant>>,
    identity: Identity,
    /// The tutorial's counter, the one named by the counter key.
    tutorial: CounterName,
    policy: CounterPolicy,
    /// The administrator's changes so far (`tables::SketchCache`).
    changes: AtomicU64,
    gave_up: CancellationToken,
    /// This process's locks on the data folder and on its path, held while it runs
    /// (`lock_folder`, `lock_path`).
    _folder: std::fs::File,
    _path: Vec<std::os::unix::net::UnixListener>,
    /// This process's lock on the file the database has open (`lock_file`).
    file_lock: Mutex<Option<std::os::unix::net::UnixListener>>,
}

impl EmbeddedStore {
    /// Opens (or creates) the database in `dir`. Fails when the folder cannot be used, the
    /// file is not a valid database, or another process holds it.
    /// A write taken for a commit is waited for until `commit_grace` past its deadline.
    pub fn open(
        dir: &Path,
        identity: &Identity,
        policy: CounterPolicy,
        commit_grace: Duration,
    ) -> Result<Self, StoreError> {
        if dir.exists() && !dir.is_dir() {
            return Err(StoreError::new(
                StoreErrorKind::Failed,
                format!("{} is not a folder", dir.display()),
            ));
        }
        if dir.is_symlink() && !dir.exists() {
            return Err(StoreError::new(
                StoreErrorKind::Failed,
                format!(
                    "{} is a symbolic link to {}, which does not exist",
                    dir.display(),
                    std::fs::read_link(dir).unwrap_or_default().display()
                ),
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::new(
                StoreErrorKind::Failed,
                format!("cannot create {}: {e}", dir.display()),
            )
        })?;
        let folder = lock_folder(dir)?;
        let path_lock = lock_path(dir)?;
        let path = dir.join(FILE_NAME);
        // Before the file is opened for writing, which the service that has it open
        // would take for another process writing to it.
        let mut file_lock = match FileId::at(&path).map_err(failed)? {
            Some(file) => Some(lock_file(dir, file)?),
            None => None,
        };
        let writers = file::Writers::new();
        let db = open_database(&path, true, writers.length())?;
        file::refuse_while_saved_counts_are_beside(&path, &db)?;
        let file = FileId::at(&path).map_err(failed)?;
        if file_lock.is_none()
            && let Some(file) = file
        {
            file_lock = Some(lock_file(dir, file)?);
        }
        let held = hold(&path);
        let inner = Arc::new(Inner {
            path,
            db: RwLock::new(Some(Arc::new(db))),
            file: Mutex::new(file),
            writers,
            held: Mutex::new(held),
            failing: Mutex::new(None),
            committing_since: Mutex::new(None),
            identity: identity.clone(),
            tutorial: identity.tutorial(),
            policy,
            changes: AtomicU64::new(0),
            gave_up: CancellationToken::new(),
            _folder: folder,
            _path: path_lock,
            file_lock: Mutex::new(file_lock),
        });
        let (writer, requests) = mpsc::channel();
        inner.writers.watch(&inner.path);
        let writer_inner = inner.clone();
        let writer_thread = thread::Builder::new()
            .name("stackdemo-writer".into())
            .spawn(move || write_loop(&writer_inner, &requests, spin_limit()))
            .map_err(failed)?;
        Ok(Self {
            inner,
            writer: Some(writer),
            writer_thread: Some(writer_thread),
            commit_grace,
        })
    }

    /// Counts every tally in one durable transaction and returns what became of each.
    /// While the store is failing (a full disk, its file gone), a write is refused at once
    /// with the reason, instead of waiting for a writer that is busy recovering.
    pub async fn add_visits(
        &self,
        tallies: &[Tally],
        answer_by: Instant,
    ) -> Result<Vec<TallyResult>, StoreError> {
        if let Some(error) = lock(&self.inner.failing).clone() {
            return Err(StoreError::new(error.kind(), error.detail()));
        }
        let (reply, mut answer) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(WAITING));
        self.writer
            .as_ref()
            .ok_or_else(|| StoreError::new(StoreErrorKind::Failed, "the store is closed"))?
            .send(Write {
                tallies: tallies.to_vec(),
                state: state.clone(),
                reply,
            })
            .map_err(|_| StoreError::new(StoreErrorKind::Failed, "the writer thread ended"))?;
        let writer_ended = || StoreError::new(StoreErrorKind::Failed, "the writer thread ended");
        match timeout_at(answer_by, &mut answer).await {
            Ok(result) => result.unwrap_or_else(|_| Err(writer_ended())),
            Err(_) => {
                if state
                    .compare_exchange(WAITING, CALLED_BACK, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return Err(StoreError::new(
                        StoreErrorKind::Timeout,
                        "the writer did not take the write in time; it was called back",
                    ));
                }
                // Taken: its commit is under way and cannot be called back. Waited for
                // while its visits can still be answered in time; then in doubt.
                match timeout_at(answer_by + self.commit_grace, answer).await {
                    Ok(result) => result.unwrap_or_else(|_| Err(writer_ended())),
                    Err(_) => Err(StoreError::new(
                        StoreErrorKind::Timeout,
                        "the commit under way did not end in time (a disk that stalls); it \
                         may yet be made",
                    )
                    .with_doubt()),
                }
            }
        }
    }

    /// Answers when a write could be made now: the database is open, the last write did
    /// not fail, the configured path names its file, no commit has been under way for
    /// longer than `slow`, and the tutorial's counter and this replica's share of it are
    /// below their limit (as the Redis store's probe checks).
    pub async fn ready(&self, slow: Duration) -> Result<(), StoreError> {
        if let Some(error) = lock(&self.inner.failing).clone() {
            return Err(error);
        }
        self.inner.check_file()?;
        if lock(&self.inner.committing_since).is_some_and(|since| since.elapsed() > slow) {
            return Err(StoreError::new(
                StoreErrorKind::Timeout,
                "a commit has been under way for longer than the store timeout",
            ));
        }
        let inner = self.inner.clone();
        blocking(move || {
            let txn = inner.database()?.begin_read().map_err(classify)?;
            let counts = txn.open_table(COUNTS).map_err(classify)?;
            let key = inner.identity.counter_key.as_str();
            let at_limit = |field: &str| -> Result<bool, StoreError> {
                let held = counts.get((key, field)).map_err(classify)?;
                Ok(held.is_some_and(|visits| visits.value() >= i64::MAX as u64))
            };
            if at_limit(TOTAL)? {
                return Err(StoreError::new(
                    StoreErrorKind::Limit,
                    "the total is at its maximum",
                ));
            }
            if at_limit(&inner.identity.replica)? {
                return Err(StoreError::new(
                    StoreErrorKind::ShareLimit,
                    "this replica's share is at its maximum",
                ));
            }
            Ok(())
        })
        .await
    }

    /// Resolves when the database keeps failing as damaged and the store has stopped
    /// trying: the process should exit so that it is replaced.
    pub async fn gave_up(&self) {
        self.inner.gave_up.cancelled().await;
    }

    /// A counter's total and its last `days` days; `None` when there is no such counter.
    pub async fn counter(
        &self,
        name: &CounterName,
        days: u32,
    ) -> Result<Option<CounterReading>, StoreError> {
        let inner = self.inner.clone();
        let name = name.clone();
        blocking(move || tables::read_counter(&*inner.database()?, &inner.tutorial, &name, days))
            .await
    }

    /// Sets a counter's total (the administrator's); the total before, if any.
    pub async fn set_total(
        &self,
        name: &CounterName,
        total: i64,
    ) -> Result<Option<i64>, AdminError> {
        let inner = self.inner.clone();
        let name = name.clone();
        self.admin(move || tables::set_total(&*inner.database()?, &inner.rules(), &name, total))
            .await
    }

    /// Deletes a counter with its history; whether there was one.
    pub async fn delete(&self, name: &CounterName) -> Result<Previous, StoreError> {
        let inner = self.inner.clone();
        let name = name.clone();
        self.admin(move || tables::delete(&*inner.database()?, &inner.rules(), &name))
            .await
    }

    /// Writes an exported counter (the administrator's).
    pub async fn import(
        &self,
        name: &CounterName,
        counter: CounterExport,
    ) -> Result<(), AdminError> {
        let inner = self.inner.clone();
        let name = name.clone();
        self.admin(move || tables::import(&*inner.database()?, &inner.rules(), &name, &counter))
            .await
    }

    /// Up to `limit` counters after `after`, in name order, with their totals.
    pub async fn list(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<(CounterName, i64)>, StoreError> {
        let inner = self.inner.clone();
        blocking(move || tables::list(&*inner.database()?, after.as_deref(), limit)).await
    }

    /// Everything a counter holds, for export.
    pub async fn export(&self, name: &CounterName) -> Result<Option<CounterExport>, StoreError> {
        let inner = self.inner.clone();
        let name = name.clone();
        blocking(move || tables::export(&*inner.database()?, &inner.tutorial, &name)).await
    }

    /// Runs an administrator's change on a blocking thread, refused while the store is
    /// failing.
    async fn admin<T: Send + 'static, E: From<StoreError> + Send + 'static>(
        &self,
        change: impl FnOnce() -> Result<T, E> + Send + 'static,
    ) -> Result<T, E> {
        if let Some(error) = lock(&self.inner.failing).clone() {
            return Err(StoreError::new(error.kind(), error.detail()).into());
        }
        self.inner.check_file()?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            inner.writers.own_write_with(&inner.path, || {
                catch_unwind(AssertUnwindSafe(change)).unwrap_or_else(|_| {
                    Err(StoreError::new(StoreErrorKind::Damaged, "panicked during a change").into())
                })
            })
        })
        .await
        .unwrap_or_else(|e| Err(StoreError::new(StoreErrorKind::Failed, e.to_string()).into()))
    }

    /// The total, for the count gauge.
    pub async fn total(&self) -> Result<i64, StoreError> {
        Ok(self.snapshot().await?.total)
    }

    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let inner = self.inner.clone();
        blocking(move || {
            let identity = &inner.identity;
            let txn = inner.database()?.begin_read().map_err(classify)?;
            let counts = txn.open_table(COUNTS).map_err(classify)?;
            let key = identity.counter_key.as_str();
            let mut total = 0;
            let mut replicas = Vec::new();
            for entry in counts.range((key, TOTAL)..).map_err(classify)? {
                let (k, visits) = entry.map_err(classify)?;
                let (owner, name) = k.value();
                if owner != key {
                    break;
                }
                let visits = to_i64(visits.value())?;
                if name == TOTAL {
                    total = visits;
                    continue;
                }
                replicas.push(ReplicaStats {
                    visits,
                    ..ReplicaStats::new(name.to_owned())
                });
            }
            if !replicas.iter().any(|r| r.name == identity.replica) {
                replicas.push(ReplicaStats::new(identity.replica.clone()));
                replicas.sort_by(|a, b| a.name.cmp(&b.name));
            }
            for replica in &mut replicas {
                if replica.name == identity.replica {
                    replica.alive = true;
                    replica.version = Some(identity.version.clone());
                }
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

impl Inner {
    fn rules(&self) -> tables::Rules<'_> {
        tables::Rules {
            identity: &self.identity,
            tutorial: &self.tutorial,
            policy: &self.policy,
            changes: &self.changes,
        }
    }

    fn database(&self) -> Result<Arc<Database>, StoreError> {
        self.db
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| {
                StoreError::new(StoreErrorKind::Failed, "the database is being opened again")
            })
    }

    /// Closes the database and opens it again: redb refuses every write after an I/O
    /// error until then. The database can only be closed once no read holds it; a read
    /// that still does after `READERS_GONE_WITHIN` (a disk that hangs) leaves it open,
    /// and the error says so.
    fn reopen(&self) -> Result<(), StoreError> {
        // Watched from after this process's own closes of the file, opened or not.
        self.writers.reopen_with(&self.path, || {
            self.close()?;
            let db = open_database(&self.path, false, self.writers.length())?;
            let file = FileId::at(&self.path).map_err(failed)?;
            if file != *lock(&self.file) {
                // Another file (the service's own counts written again, a copy put back):
                // locked as this one was, if no other process has it open.
                let dir = self.path.parent().unwrap_or(Path::new("."));
                *lock(&self.file_lock) = file.and_then(|file| lock_file(dir, file).ok());
            }
            *lock(&self.file) = file;
            *lock(&self.held) = hold(&self.path);
            *self.db.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(db));
            Ok(())
        })
    }

    /// Lets go of the open database without closing it, as the process ends: closing it
    /// writes to its file, which another process has written since (`file::Writers`).
    fn abandon(&self) {
        if let Some(db) = self.db.write().unwrap_or_else(|e| e.into_inner()).take() {
            std::mem::forget(db);
        }
    }

    /// Closes the open database, once the reads that hold it are done (at most
    /// `READERS_GONE_WITHIN`); `database()` then fails until it is opened again.
    fn close(&self) -> Result<(), StoreError> {
        let old = self.db.write().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut old) = old {
            let give_up_at = std::time::Instant::now() + READERS_GONE_WITHIN;
            while Arc::get_mut(&mut old).is_none() {
                if std::time::Instant::now() >= give_up_at {
                    *self.db.write().unwrap_or_else(|e| e.into_inner()) = Some(old);
                    return Err(StoreError::new(
                        StoreErrorKind::Failed,
                        "a read still holds the database; it cannot be opened again yet",
                    ));
                }
                thread::sleep(Duration::from_millis(1));
            }
            drop(old);
        }
        Ok(())
    }
}

/// Locks the data folder for this process (an advisory lock on the folder itself, which
/// outlives its file). The database file is locked too, but an operator may delete it
/// while the service runs, and until the service has put it back, a second service on
/// the folder would find no lock, make a new file and count from 1 again.
fn lock_folder(dir: &Path) -> Result<std::fs::File, StoreError> {
    let failed = |error: io::Error| {
        StoreError::new(
            StoreErrorKind::Failed,
            format!("cannot open {}: {error}", dir.display()),
        )
    };
    let folder = std::fs::File::open(dir).map_err(failed)?;
    match folder.try_lock() {
        Ok(()) => Ok(folder),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::new(
            StoreErrorKind::Failed,
            format!("{} is in use by another process", dir.display()),
        )),
        Err(std::fs::TryLockError::Error(error)) => Err(failed(error)),
    }
}

/// Locks the data folder's place for this process: an abstract Unix socket for the
/// folder it is in and for each folder above that on that folder's mount, named for that
/// folder (its device and inode, whatever path or bind mount names it) and the path from
/// there down to the data folder. The folder's own lock goes with the folder, so while
/// the folder, or a folder above it, is moved away (until the service has made it again
/// in its place) a second service started on the path would find no lock, make a new
/// folder and count from 1 again: the folder above the one moved still names the place.
/// The walk stops at that mount's root: above it, the same path names different
/// folders in different mount namespaces (a private `/tmp`), and so a folder moved
/// above it is not caught (a mount's root itself cannot be moved). Abstract
/// sockets belong to a network namespace: services in different ones (containers
/// sharing a volume) do not see each other's.
fn lock_path(dir: &Path) -> Result<Vec<std::os::unix::net::UnixListener>, StoreError> {
    use std::{hash::Hasher, os::unix::fs::MetadataExt};

    let cannot = |error: io::Error| {
        StoreError::new(
            StoreErrorKind::Failed,
            format!("cannot open {}: {error}", dir.display()),
        )
    };
    let path = std::fs::canonicalize(dir).map_err(cannot)?;
    let parent = path.parent().unwrap_or(Path::new("/"));
    // The mount of the folder the data folder is in: the data folder may be a mount of
    // its own (a disk, a volume), and the folders above it can still be moved.
    let mount = mount_point_of(parent);
    let mut locks = Vec::new();
    for above in path.ancestors().skip(1) {
        if !above.starts_with(&mount) {
            break;
        }
        let folder = std::fs::metadata(above).map_err(cannot)?;
        let below = path.strip_prefix(above).unwrap_or(&path);
        let mut hasher = siphasher::sip::SipHasher13::new();
        hasher.write_u64(folder.dev());
        hasher.write_u64(folder.ino());
        hasher.write(below.as_os_str().as_encoded_bytes());
        let name = format!("stackdemo-data-dir-{:016x}", hasher.finish());
        locks.push(bind_abstract(&name, dir)?);
    }
    Ok(locks)
}

/// Locks the data file itself for this process: an abstract Unix socket named for the
/// file (its device and inode). A second service on another path to the same file (a
/// hard link, as `cp -al` and rsnapshot make) is refused before it opens the file:
/// opening it for writing counts, for the service that has it open, as another process
/// writing to it (`file::Writers`), and that service would stop counting for good.
fn lock_file(dir: &Path, file: FileId) -> Result<std::os::unix::net::UnixListener, StoreError> {
    bind_abstract(&file.lock_name(), dir)
}

/// Binds the abstract Unix socket `name` as a lock on `dir`: an error saying that `dir`
/// is in use by another process if another holds it.
fn bind_abstract(name: &str, dir: &Path) -> Result<std::os::unix::net::UnixListener, StoreError> {
    use std::os::{linux::net::SocketAddrExt, unix::net};

    let address = net::SocketAddr::from_abstract_name(name.as_bytes()).map_err(failed)?;
    net::UnixListener::bind_addr(&address).map_err(|error| {
        if error.kind() == io::ErrorKind::AddrInUse {
            StoreError::new(
                StoreErrorKind::Failed,
                format!("{} is in use by another process", dir.display()),
            )
        } else {
            failed(error)
        }
    })
}

/// The point where the mount that holds `path` is mounted: the longest mount point of
/// this process's mount namespace that `path` is under (`/proc/self/mountinfo`), or `/`
/// when that cannot be read.
fn mount_point_of(path: &Path) -> PathBuf {
    let root = PathBuf::from("/");
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return root;
    };
    mounts
        .lines()
        // The fifth field, with space, tab, newline and backslash written in octal.
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_octal)
        .filter(|point| path.starts_with(point))
        .max_by_key(|point| point.components().count())
        .unwrap_or(root)
}

/// A mountinfo path, its `\NNN` escapes undone.
fn unescape_octal(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes.get(i + 1..i + 4).and_then(|digits| {
            let text = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[i], code) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// A handle on the file at `path`, read and write, as a database needs; none if it cannot
/// be opened.
fn hold(path: &Path) -> Option<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .ok()
}

/// Opens the database at `path`: an existing file must be a valid database (checked
/// whole when `check` is set, as at start); a missing one is created. `length` follows
/// the length redb gives the file (`backend`).
fn open_database(path: &Path, check: bool, length: Length) -> Result<Database, StoreError> {
    let empty = match std::fs::metadata(path) {
        Ok(metadata) => metadata.len() == 0,
        Err(error) if error.kind() == io::ErrorKind::NotFound => false,
        Err(error) => {
            return Err(StoreError::new(
                StoreErrorKind::Failed,
                format!("cannot read {}: {error}", path.display()),
            ));
        }
    };
    let opened = guarded(|| {
        let mut builder = Database::builder();
        builder.set_check_integrity_on_open(check);
        let result = if empty {
            // Refused: only a missing file is made a new database.
            builder.open(path)
        } else {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(redb::DatabaseError::from)
                .and_then(|file| TrackedFile::new(file, length))
                .and_then(|file| builder.create_with_backend(file))
        };
        result.map_err(|e| describe(path, e.into()))
    })?;
    // Create the tables up front so that readers never meet a missing table.
    guarded(|| {
        let txn = opened.begin_write().map_err(classify)?;
        tables::create(&txn)?;
        txn.commit().map_err(classify)
    })?;
    Ok(opened)
}

/// Runs `work`, turning a panic inside it (redb meeting a damaged file) into an error.
fn guarded<T>(work: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(StoreError::new(StoreErrorKind::Damaged, format!("panicked: {message}")).with_doubt())
    })
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(move || guarded(work))
        .await
        .unwrap_or_else(|e| Err(StoreError::new(StoreErrorKind::Failed, e.to_string())))
}

fn to_i64(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value)
        .map_err(|_| StoreError::new(StoreErrorKind::Limit, "the total is at its maximum"))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn failed(error: impl std::fmt::Display) -> StoreError {
    StoreError::new(StoreErrorKind::Failed, error.to_string())
}

/// Sorts a redb error into a kind.
fn classify(error: impl Into<redb::Error>) -> StoreError {
    let error: redb::Error = error.into();
    let kind = match &error {
        redb::Error::Corrupted(_) => StoreErrorKind::Damaged,
        // A quota, or the process's file size limit, is a full disk to the store.
        redb::Error::Io(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull
                    | std::io::ErrorKind::QuotaExceeded
                    | std::io::ErrorKind::FileTooLarge
            ) =>
        {
            StoreErrorKind::DiskFull
        }
        redb::Error::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
            StoreErrorKind::Permission
        }
        _ => StoreErrorKind::Failed,
    };
    StoreError::new(kind, error.to_string())
}

/// A failure to open the file, said plainly.
fn describe(path: &Path, error: redb::Error) -> StoreError {
    let what = match &error {
        redb::Error::DatabaseAlreadyOpen => "is in use by another process".to_owned(),
        redb::Error::Io(io)
            if io.kind() == std::io::ErrorKind::PermissionDenied && !path.exists() =>
        {
            "cannot be made: the folder does not allow this process to write in it".to_owned()
        }
        redb::Error::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
            format!("cannot be opened for writing: permission denied ({error})")
        }
        redb::Error::Corrupted(_) | redb::Error::Io(_) => {
            format!("is not a valid database, or is damaged ({error})")
        }
        other => format!("cannot be opened: {other}"),
    };
    StoreError::new(classify(error).kind(), format!("{} {what}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_read_with_their_escapes_undone() {
        assert_eq!(
            unescape_octal(r"/mnt/with\040space\134and\011tab"),
            PathBuf::from("/mnt/with space\\and\ttab")
        );
        assert_eq!(unescape_octal(r"/plain\04"), PathBuf::from(r"/plain\04"));
        assert_eq!(
            mount_point_of(Path::new("/proc/self/fd")),
            PathBuf::from("/proc")
        );
        assert_eq!(mount_point_of(Path::new("/")), PathBuf::from("/"));
    }
}
