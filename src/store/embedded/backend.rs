//! The data file as redb reaches it: redb's own file backend, keeping the length redb
//! gave the file. A length found at the path otherwise was set by another process (a
//! truncate), even one made while a commit of this process was under way, when the
//! file's time tells nothing (`file::Writers`).

use std::{
    io,
    ops::Bound,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use redb::{BackendError, StorageBackend, backends::FileBackend};

/// The length redb gave the file it has open, shared with whoever compares.
#[derive(Debug, Clone, Default)]
pub struct Length(Arc<AtomicU64>);

impl Length {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    pub(super) fn set(&self, length: u64) {
        self.0.store(length, Ordering::Release);
    }
}

/// redb's file backend, recording every length it sets and every write past the end.
#[derive(Debug)]
pub struct TrackedFile {
    file: FileBackend,
    length: Length,
}

impl TrackedFile {
    /// The file, whose length now is where `length` starts.
    pub fn new(file: std::fs::File, length: Length) -> Result<Self, redb::DatabaseError> {
        length.set(file.metadata()?.len());
        Ok(Self {
            file: FileBackend::new(file)?,
            length,
        })
    }
}

impl StorageBackend for TrackedFile {
    fn len(&self) -> Result<u64, io::Error> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let set = self.file.set_len(len);
        // Also after a failure, whose length is not known: the next look finds the file
        // at another length, and takes it for another writer's doing, erring on the side
        // of not counting.
        if set.is_ok() {
            self.length.set(len);
        }
        set
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let written = self.file.write(offset, data);
        if written.is_ok() {
            self.length
                .0
                .fetch_max(offset + data.len() as u64, Ordering::AcqRel);
        }
        written
    }

    fn close(&self) -> Result<(), io::Error> {
        self.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}
