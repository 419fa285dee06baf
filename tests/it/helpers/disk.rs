//! A small disk of the test's own (a tmpfs), to fill up.

use std::path::{Path, PathBuf};

/// Writes to `path` until the disk is full, off the test's runtime.
pub async fn fill(path: &Path) {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || fill_now(&path))
        .await
        .expect("filling the disk");
}

fn fill_now(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 64 * 1024];
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    let _ = file.sync_all();
}

/// A tmpfs of a given size, unmounted on drop. Mounting needs root, as the tests are run
/// (`scripts/test.sh`).
pub struct SmallDisk {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    pub fn mount(bytes: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let options = format!("size={bytes}");
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(options.as_str()),
        )
        .unwrap_or_else(|e| {
            panic!(
                "mounting a small tmpfs for the full-disk test failed ({e}); \
                 the tests must run as root (scripts/test.sh does)"
            )
        });
        Self {
            path: dir.path().to_path_buf(),
            _dir: dir,
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
    }
}
