//! The data file at its configured path.
//!
//! A visit is acknowledged only once its commit is durable in the file at the configured
//! path: the writer checks before and after each commit, and every second while idle,
//! that the path still names the file the database has open. An operator can delete the
//! file, move it or the folder away, or put another file in its place while the service
//! runs; the open database then writes where no restart will look, and a restart would
//! count from 1 again, or from whatever the other file holds.
//!
//! So when the path no longer names the open file, the store stops counting (not ready)
//! and puts things right:
//! - nothing at the path (the file deleted or moved, or its folder): the counts the open
//!   database holds are written to a new file beside it, which is then renamed into place
//!   (the folder made again if it is gone), and counting resumes from where it was;
//! - another database at the path, holding at least what this service has counted for
//!   every key: it is taken as the database (a copy put back, say);
//! - anything else (a database that holds less, a file that is not one): it is neither
//!   counted from nor overwritten; the store stays not ready, says why, and looks again
//!   every second, so removing that file lets the service restore its own.
//!
//! The file itself written by another process (`cp` of a backup onto it, `truncate`, `dd`):
//! the open database no longer knows what its pages hold, so neither its counts nor the
//! file can be trusted from then on. The store stops counting for good (not ready, saying
//! why) and the next start takes the file as it finds it: the counts it holds, or, if it
//! is not a valid database, a refusal. A writer is seen by inotify when it closes the file
//! (`IN_CLOSE_WRITE`, which this process's open handles never send).

use std::{
    collections::BTreeMap,
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use inotify::{EventMask, Inotify, WatchMask};

use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};

use super::{
    Inner, Length, classify, open_database,
    tables::{self, COUNTS},
};
use crate::store::{StoreError, StoreErrorKind};

/// Which file a path names: its device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    device: u64,
    inode: u64,
}

impl FileId {
    /// The name of this process's lock on the file (`lock_file`).
    pub fn lock_name(&self) -> String {
        format!("stackdemo-data-file-{:x}-{:x}", self.device, self.inode)
    }

    /// The file at `path`; `None` when there is none (its folder may be gone too).
    pub fn at(path: &Path) -> io::Result<Option<Self>> {
        match std::fs::metadata(path) {
            Ok(metadata) => Ok(Some(Self {
                device: metadata.dev(),
                inode: metadata.ino(),
            })),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }
}

/// Watches the open data file for another process writing to it in place, in two ways:
/// inotify, for a close after writing (`IN_CLOSE_WRITE`) that is not this process's own
/// (the watch is made anew after each of its own opens and closes, `reopen_with`); and the
/// file's size and modification time, which only this process's commits may change
/// (`own_write_with` records them after each), for a writer that keeps the file open or
/// truncates it by its path. A write racing with a commit or a reopening of this process
/// is missed by the second. Opening
/// the file for writing, or setting its time (`touch`), counts as a write: the service
/// cannot tell. Once seen, it stays seen.
pub struct Writers {
    watch: Mutex<Option<Inotify>>,
    /// The length redb gave the file (`backend`).
    length: Length,
    /// The file's size and modification time after this process's last write.
    after_own: Mutex<Option<Stamp>>,
    seen: AtomicBool,
}

impl Writers {
    pub fn new() -> Self {
        Self {
            watch: Mutex::new(None),
            length: Length::default(),
            after_own: Mutex::new(None),
            seen: AtomicBool::new(false),
        }
    }

    /// The length redb gives the file, for the database opened on it to keep.
    pub fn length(&self) -> Length {
        self.length.clone()
    }

    /// Watches the file at `path` from now on, as this process has just opened it.
    pub fn watch(&self, path: &Path) {
        self.reopen_with(path, || ());
    }

    /// Runs `reopen`, in which this process closes the database and opens the file at
    /// `path` (the same file or another), and watches that file from then on, in place of
    /// the file watched before. A look for other writers waits meanwhile: this process's
    /// own closes are not theirs, and the watch made after them does not see them. Where
    /// inotify cannot be had (its limits reached), only the size and time are watched, and
    /// the log says so.
    pub fn reopen_with<T>(&self, path: &Path, reopen: impl FnOnce() -> T) -> T {
        let mut own = super::lock(&self.after_own);
        let reopened = reopen();
        let watch = Inotify::init().and_then(|inotify| {
            inotify.watches().add(path, WatchMask::CLOSE_WRITE)?;
            Ok(inotify)
        });
        let watch = watch
            .inspect_err(|error| {
                tracing::warn!(
                    %error,
                    path = %path.display(),
                    "cannot watch the data file for other processes closing it after writing"
                );
            })
            .ok();
        *super::lock(&self.watch) = watch;
        *own = stamp(path);
        reopened
    }

    /// Runs `write`, a write of this process to the file at `path` (a commit, made or
    /// failed), and takes the file's size and time after it as its own; a look for other
    /// writers waits meanwhile, so that it never takes this process's write for theirs.
    pub fn own_write_with<T>(&self, path: &Path, write: impl FnOnce() -> T) -> T {
        let mut own = super::lock(&self.after_own);
        let written = write();
        *own = stamp(path);
        written
    }

    /// Whether another process has been seen writing to the file, without looking again.
    pub fn already_seen(&self) -> bool {
        self.seen.load(Ordering::Relaxed)
    }

    /// Whether another process has written to the watched file at `path`.
    fn seen(&self, path: &Path) -> bool {
        if self.already_seen() {
            return true;
        }
        // Looked at with the record held, so that no write, close or open of this process
        // is half way; while one is (a commit, which a stalled disk can hold for long), not
        // waited for: the next look, after it, compares, and reads what inotify kept.
        let own = match self.after_own.try_lock() {
            Ok(own) => own,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return false,
        };
        let closed_after_writing = super::lock(&self.watch).as_mut().is_some_and(|inotify| {
            let mut buffer = [0u8; 1024];
            // Only a close after writing; an `IN_IGNORED` (the watch gone with the file)
            // is not one. A queue that overflowed may have held one.
            inotify.read_events(&mut buffer).is_ok_and(|mut events| {
                events.any(|event| {
                    event
                        .mask
                        .intersects(EventMask::CLOSE_WRITE | EventMask::Q_OVERFLOW)
                })
            })
        });
        let now = stamp(path);
        // Another file put at the path since the path was looked at (a copy renamed into
        // place) is not a write to this one: the next look at the path finds it.
        if own.is_some_and(|own| now.is_some_and(|now| now.file != own.file)) {
            return false;
        }
        let changed = own.is_some_and(|own| now.is_some_and(|now| now != own));
        // Not the length redb gave it: truncated by another, also while a commit was
        // under way (whose end took the file's size and time as its own).
        let resized = now.is_some_and(|now| now.length != self.length.get());
        let changed = changed || resized;
        let written = closed_after_writing || changed;
        if written && !self.seen.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                path = %path.display(),
                closed_after_writing,
                size_and_time_before = ?*own,
                size_and_time_now = ?now,
                "another process wrote to the data file"
            );
        }
        written
    }
}

/// Which file was at a path, with its size and modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    file: FileId,
    length: u64,
    modified: (i64, i64),
}

/// The file at `path`, its size and modification time, if it can be read.
fn stamp(path: &Path) -> Option<Stamp> {
    let metadata = std::fs::metadata(path).ok()?;
    Some(Stamp {
        file: FileId {
            device: metadata.dev(),
            inode: metadata.ino(),
        },
        length: metadata.len(),
        modified: (metadata.mtime(), metadata.mtime_nsec()),
    })
}

/// What the configured path holds now, against the file the database has open.
enum AtPath {
    Ours,
    Nothing,
    Another,
}

impl Inner {
    fn at_path(&self) -> Result<AtPath, StoreError> {
        let found = FileId::at(&self.path).map_err(|e| {
            StoreError::new(
                StoreErrorKind::FileGone,
                format!("cannot look at {}: {e}", self.path.display()),
            )
        })?;
        let ours = *super::lock(&self.file);
        Ok(match found {
            None => AtPath::Nothing,
            Some(found) if Some(found) == ours => AtPath::Ours,
            Some(_) => AtPath::Another,
        })
    }

    /// An error unless the configured path names the file the database has open.
    pub(super) fn check_file(&self) -> Result<(), StoreError> {
        match self.at_path()? {
            AtPath::Ours if self.writers.seen(&self.path) => Err(self.written_by_another()),
            AtPath::Ours => Ok(()),
            AtPath::Nothing => Err(StoreError::new(
                StoreErrorKind::FileGone,
                format!("{} is gone (deleted, or moved away)", self.path.display()),
            )),
            AtPath::Another => Err(StoreError::new(
                StoreErrorKind::FileGone,
                format!("{} is another file now", self.path.display()),
            )),
        }
    }

    /// Makes the configured path name a database this service may count from, as the
    /// module says; an error says why it cannot yet.
    pub(super) fn put_file_right(&self) -> Result<(), StoreError> {
        // For good: neither the open database nor the file it had open is to be trusted,
        // nor written, nor closed (closing writes), whatever appears at the path since.
        if self.writers.already_seen() {
            return Err(self.written_by_another());
        }
        match self.at_path()? {
            AtPath::Ours if self.writers.seen(&self.path) => Err(self.written_by_another()),
            AtPath::Ours => Ok(()),
            AtPath::Nothing => self.restore(),
            AtPath::Another => self.adopt(),
        }
    }

    /// Writes the counts the open database holds to a new file at the configured path,
    /// through a file beside it renamed into place, and opens that.
    fn restore(&self) -> Result<(), StoreError> {
        let folder = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(folder).map_err(|e| self.cannot("make the folder", &e))?;
        let beside: PathBuf = folder.join(format!(".{}.restoring", super::FILE_NAME));
        self.write_copy(&beside)?;
        std::fs::rename(&beside, &self.path).map_err(|e| self.cannot("rename", &e))?;
        sync_folder(folder).map_err(|e| self.cannot("sync the folder", &e))?;
        self.reopen()?;
        tracing::warn!(
            path = %self.path.display(),
            "the data file was gone; the counts the service held are written there again"
        );
        Ok(())
    }

    /// Writes the counts the open database holds to a new file beside the configured
    /// path, named for the time (`stackdemo.redb.saved-<seconds since 1970>`), for when
    /// another file is in the way as the service stops; returns its path.
    pub(super) fn save_beside(&self) -> Result<PathBuf, StoreError> {
        let folder = self.path.parent().unwrap_or(Path::new("."));
        let seconds = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let saved = folder.join(format!("{}.saved-{seconds}", super::FILE_NAME));
        self.write_copy(&saved)?;
        sync_folder(folder).map_err(|e| self.cannot("sync the folder", &e))?;
        Ok(saved)
    }

    /// Writes everything the open database holds to a new database at `to`, durably.
    /// Nothing is left at `to` when it cannot be written whole.
    fn write_copy(&self, to: &Path) -> Result<(), StoreError> {
        let written = self.write_copy_at(to);
        if written.is_err() {
            let _ = std::fs::remove_file(to);
        }
        written
    }

    fn write_copy_at(&self, to: &Path) -> Result<(), StoreError> {
        let _ = std::fs::remove_file(to);
        let copy = Database::create(to).map_err(|e| self.cannot("create", &io::Error::other(e)))?;
        if let Err(error) = self.database().and_then(|open| copy_all(&open, &copy)) {
            // After an I/O error the open database refuses to read until it is opened
            // again (or it is not open, after a failed attempt), and the path may no
            // longer name its file: opened again through the handle held on that file.
            let held = self.open_held().map_err(|_| error)?;
            copy_all(&held, &copy)?;
        }
        Ok(())
    }

    /// The database opened again on the file it had open, through the handle held on it
    /// (the file may be gone from the path); the open one is closed first, as a file is
    /// opened by one database at a time.
    fn open_held(&self) -> Result<Database, StoreError> {
        let file = super::lock(&self.held)
            .as_ref()
            .and_then(|held| held.try_clone().ok())
            .ok_or_else(|| {
                StoreError::new(
                    StoreErrorKind::FileGone,
                    "no handle on the data file is held",
                )
            })?;
        self.close()?;
        let backend = redb::backends::FileBackend::new(file).map_err(classify)?;
        Database::builder()
            .create_with_backend(backend)
            .map_err(classify)
    }

    /// Takes the database another file at the path holds, if it holds at least what the
    /// open one does for every key.
    fn adopt(&self) -> Result<(), StoreError> {
        let theirs = open_database(&self.path, true, Length::default()).map_err(|error| {
            StoreError::new(
                StoreErrorKind::FileGone,
                format!(
                    "{} was replaced by a file that cannot be used ({}); remove it, and the \
                     service writes the counts it holds there",
                    self.path.display(),
                    error.detail()
                ),
            )
        })?;
        let ours = counts(&*self.database()?)?;
        let found = counts(&theirs)?;
        if let Some(((key, field), theirs, mine)) = first_short(&ours, &found) {
            let what = if field.is_empty() { "total" } else { field };
            return Err(StoreError::new(
                StoreErrorKind::FileGone,
                format!(
                    "{} was replaced by a database that holds less than this service has \
                     counted ({key} {what}: {theirs} < {mine}); it is not counted from. \
                     Remove it, and the service writes the counts it holds there",
                    self.path.display(),
                ),
            ));
        }
        drop(theirs);
        self.reopen()?;
        tracing::warn!(path = %self.path.display(), "the data file was replaced; counting from the new one");
        Ok(())
    }

    /// Whether another process wrote to the open data file in place: then nothing the
    /// open database holds can be trusted, nor written anywhere.
    pub(super) fn written_in_place(&self) -> bool {
        self.writers.already_seen()
    }

    fn written_by_another(&self) -> StoreError {
        StoreError::new(
            StoreErrorKind::FileGone,
            format!(
                "{} was written by another process while the service had it open; the \
                 service counts no more until it is restarted, and then counts from what \
                 the file holds",
                self.path.display()
            ),
        )
    }

    fn cannot(&self, what: &str, error: &io::Error) -> StoreError {
        let kind = if error.kind() == io::ErrorKind::PermissionDenied {
            StoreErrorKind::Permission
        } else {
            StoreErrorKind::FileGone
        };
        StoreError::new(
            kind,
            format!(
                "{} is gone and cannot be written again ({what}: {error})",
                self.path.display()
            ),
        )
    }
}

/// Refuses to start on the data file at `path`, open as `db`, while a file of counts a
/// service saved beside it as it stopped (`save_beside`: another file was in the data
/// file's place) holds more of a count than it: counting from the data file would answer
/// numbers already answered. The operator puts the saved file in place, or moves it out
/// of the folder to count from the data file as it is. A saved file that holds no more
/// (put back since, or older) is left alone; one that cannot be read refuses the start
/// too, as it may hold more.
pub(super) fn refuse_while_saved_counts_are_beside(
    path: &Path,
    db: &Database,
) -> Result<(), StoreError> {
    let folder = path.parent().unwrap_or(Path::new("."));
    let prefix = format!("{}.saved-", super::FILE_NAME);
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Ok(());
    };
    let mut saved: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
        .map(|entry| entry.path())
        .collect();
    if saved.is_empty() {
        return Ok(());
    }
    saved.sort();
    let ours = counts(db)?;
    for saved in saved {
        let theirs = match open_database(&saved, true, Length::default()).and_then(|db| counts(&db))
        {
            Ok(theirs) => theirs,
            // Nobody can tell that it holds no more: a copy cut short, a file put there.
            Err(error) => {
                return Err(StoreError::new(
                    StoreErrorKind::Failed,
                    format!(
                        "{saved} is named as the counts a service saves beside the data file, \
                         and cannot be read ({}); it may hold counts that {path} lacks. Move \
                         it out of the folder to count from {path} as it is",
                        error.detail(),
                        saved = saved.display(),
                        path = path.display(),
                    ),
                ));
            }
        };
        if let Some(((key, field), in_file, in_saved)) = first_short(&theirs, &ours) {
            let what = if field.is_empty() { "total" } else { field };
            return Err(StoreError::new(
                StoreErrorKind::Failed,
                format!(
                    "{saved} holds counts that {path} lacks ({key} {what}: {in_saved} > {in_file}), \
                     saved by a service that stopped while another file was in the data \
                     file's place; counting from {path} would answer numbers already \
                     answered. Put it in place (mv {saved} {path}) to count on from it, or \
                     move it out of the folder to count from {path} as it is",
                    saved = saved.display(),
                    path = path.display(),
                ),
            ));
        }
    }
    Ok(())
}

fn sync_folder(folder: &Path) -> io::Result<()> {
    std::fs::File::open(folder).and_then(|folder| folder.sync_all())
}

type Counts = BTreeMap<(String, String), u64>;

/// Every count a database holds.
fn counts(db: &Database) -> Result<Counts, StoreError> {
    let txn = db.begin_read().map_err(classify)?;
    let table = txn.open_table(COUNTS).map_err(classify)?;
    let mut counts = BTreeMap::new();
    for entry in table.iter().map_err(classify)? {
        let (key, value) = entry.map_err(classify)?;
        let (owner, field) = key.value();
        counts.insert((owner.to_owned(), field.to_owned()), value.value());
    }
    Ok(counts)
}

/// The first count `found` holds less of than `ours`, with both; a count it lacks is 0
/// (the tutorial's counter at 0, which a recovering store writes, is not more than none).
fn first_short<'a>(ours: &'a Counts, found: &Counts) -> Option<(&'a (String, String), u64, u64)> {
    ours.iter().find_map(|(at, &mine)| {
        let theirs = found.get(at).copied().unwrap_or(0);
        (theirs < mine).then_some((at, theirs, mine))
    })
}

/// Copies everything `from` holds into `to`, in one durable transaction.
fn copy_all(from: &Database, to: &Database) -> Result<(), StoreError> {
    let read = from.begin_read().map_err(classify)?;
    let txn = to.begin_write().map_err(classify)?;
    tables::create(&txn)?;
    copy(&read, &txn, tables::COUNTS)?;
    copy(&read, &txn, tables::COUNTERS)?;
    copy(&read, &txn, tables::DAYS)?;
    copy(&read, &txn, tables::UNIQUES)?;
    copy(&read, &txn, tables::SALTS)?;
    txn.commit().map_err(classify)
}

/// Copies one table, entry by entry.
fn copy<K: redb::Key + 'static, V: redb::Value + 'static>(
    from: &ReadTransaction,
    to: &WriteTransaction,
    table: TableDefinition<K, V>,
) -> Result<(), StoreError> {
    let source = from.open_table(table).map_err(classify)?;
    let mut target = to.open_table(table).map_err(classify)?;
    for entry in source.iter().map_err(classify)? {
        let (key, value) = entry.map_err(classify)?;
        target
            .insert(key.value(), value.value())
            .map_err(classify)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{sync::mpsc, time::Duration};

    use super::*;

    /// A file holding `content`, this process's handle on it (open from before the watch
    /// on, as the database's is), and its writers watched, with the length redb would
    /// have given it.
    fn watched_file(content: &[u8]) -> (tempfile::TempDir, PathBuf, std::fs::File, Writers) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::write(&path, content).unwrap();
        let handle = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let writers = Writers::new();
        writers.length().set(content.len() as u64);
        writers.watch(&path);
        (dir, path, handle, writers)
    }

    /// Another writer's write to the end of the file at `path`, closing it after.
    fn append_as_another(path: &Path, bytes: &[u8]) {
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .and_then(|mut file| std::io::Write::write_all(&mut file, bytes))
            .unwrap();
    }

    /// Another process truncating the file while a commit of this process is under way
    /// is seen after the commit, though the commit's end took the file's size and time as
    /// its own: the file's length is not the one redb gave it.
    #[test]
    fn a_truncate_during_a_commit_of_this_process_is_seen_after_it() {
        let (_dir, path, handle, writers) = watched_file(&[1; 4096]);

        writers.own_write_with(&path, || {
            nix::unistd::truncate(&path, 0).unwrap();
            // A page of the commit, written where redb writes it; the length redb gave
            // the file does not change.
            std::os::unix::fs::FileExt::write_all_at(&handle, &[2; 512], 1024).unwrap();
        });

        assert!(writers.seen(&path), "truncated during the commit");
    }

    /// Another file renamed into the path's place between the look at the path (which
    /// found the open file there) and the look for other writers is not taken for a write
    /// to the open file, which would stop counting for good: the next look at the path
    /// finds the other file. A write in place after it is still seen.
    #[test]
    fn a_file_put_in_place_during_a_look_is_not_taken_for_a_write_in_place() {
        let (dir, path, _handle, writers) = watched_file(&[1; 4096]);

        let other = dir.path().join("older");
        std::fs::write(&other, [3; 1024]).unwrap();
        std::fs::rename(&other, &path).unwrap();

        assert!(!writers.seen(&path), "another file at the path");
        writers.watch(&path);
        writers.length().set(1024);
        append_as_another(&path, b"another's");
        assert!(writers.seen(&path), "a write in place");
    }

    /// A database put in place that lacks a count this service holds at 0 is not taken
    /// for holding less on that account; the count it does hold less of is named.
    #[test]
    fn a_count_at_zero_missing_from_another_database_is_not_less() {
        let key = |name: &str| (name.to_owned(), String::new());
        let ours: Counts = [(key("hits"), 0), (key("z0"), 210), (key("z1"), 5)].into();
        let found: Counts = [(key("z0"), 10), (key("z1"), 7)].into();
        assert_eq!(first_short(&ours, &found), Some((&key("z0"), 10, 210)));

        let more: Counts = [(key("z0"), 300), (key("z1"), 7)].into();
        assert_eq!(
            first_short(&ours, &more),
            None,
            "holds at least as much of each"
        );
    }

    /// This process's own close of the file while it opens the database again is not
    /// taken for another's, by a look during it or after; another process's write after
    /// it is.
    #[test]
    fn a_close_of_this_process_while_it_reopens_is_not_taken_for_another_writer() {
        let (_dir, path, handle, writers) = watched_file(b"before");
        let writers = std::sync::Arc::new(writers);

        let (closed, reopening) = mpsc::channel();
        let (finish, finished) = mpsc::channel::<()>();
        let own = std::thread::spawn({
            let (writers, path) = (writers.clone(), path.clone());
            move || {
                writers.reopen_with(&path, || {
                    std::os::unix::fs::FileExt::write_all_at(&handle, b"this process's", 6)
                        .unwrap();
                    writers.length().set(20);
                    drop(handle);
                    closed.send(()).unwrap();
                    finished.recv().unwrap();
                });
            }
        });
        reopening.recv().unwrap();
        let during = writers.seen(&path);
        finish.send(()).unwrap();
        own.join().unwrap();

        assert!(!during, "a look while this process reopens");
        assert!(!writers.seen(&path), "a look after it");
        append_as_another(&path, b", and another's");
        assert!(writers.seen(&path), "another writer");
    }

    /// A look for other writers while a write of this process is under way (a commit a
    /// stalled disk holds) answers at once, and does not take that write for another's;
    /// once it is done, a change by another writer is seen.
    #[test]
    fn a_look_for_other_writers_does_not_wait_for_a_write_of_this_process() {
        let (_dir, path, handle, writers) = watched_file(b"before");
        let (handle, writers) = (std::sync::Arc::new(handle), std::sync::Arc::new(writers));

        let (started, writing) = mpsc::channel();
        let (finish, finished) = mpsc::channel::<()>();
        let own = std::thread::spawn({
            let (writers, path, handle) = (writers.clone(), path.clone(), handle.clone());
            move || {
                writers.own_write_with(&path, || {
                    started.send(()).unwrap();
                    finished.recv().unwrap();
                    std::os::unix::fs::FileExt::write_all_at(&*handle, b"this process's", 6)
                        .unwrap();
                    // As redb's backend records it.
                    writers.length().set(20);
                });
            }
        });
        writing.recv().unwrap();
        let (looked, look) = mpsc::channel();
        std::thread::spawn({
            let (writers, path) = (writers.clone(), path.clone());
            move || looked.send(writers.seen(&path)).unwrap()
        });
        let seen = look.recv_timeout(Duration::from_secs(10));
        finish.send(()).unwrap();
        own.join().unwrap();

        assert_eq!(seen, Ok(false), "answered at once, no other writer");
        assert!(!writers.seen(&path), "this process's own write");
        append_as_another(&path, b", and another's");
        assert!(writers.seen(&path), "another writer");
    }
}
