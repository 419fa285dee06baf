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

/// A disk of the test's own that can be frozen (`fsfreeze`): a file system on a loop
/// device, whose writes and syncs block while it is frozen, as on a disk that stalls.
/// Unmounted on drop, thawed first. Needs root and e2fsprogs and util-linux.
pub struct FreezableDisk {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl FreezableDisk {
    pub fn mount() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        let path = dir.path().join("mounted");
        std::fs::create_dir(&path).unwrap();
        std::fs::File::create(&image)
            .and_then(|file| file.set_len(64 * 1024 * 1024))
            .unwrap();
        run("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]);
        run(
            "mount",
            &[
                "-o",
                "loop",
                image.to_str().unwrap(),
                path.to_str().unwrap(),
            ],
        );
        Self { path, _dir: dir }
    }

    /// Freezes the file system until the guard is dropped.
    pub fn freeze(&self) -> Frozen<'_> {
        run("fsfreeze", &["--freeze", self.path.to_str().unwrap()]);
        Frozen { disk: self }
    }
}

impl Drop for FreezableDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .args(["-l", self.path.to_str().unwrap()])
            .status();
    }
}

/// A frozen file system, thawed on drop.
pub struct Frozen<'a> {
    disk: &'a FreezableDisk,
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        run(
            "fsfreeze",
            &["--unfreeze", self.disk.path.to_str().unwrap()],
        );
    }
}

/// Runs a system command the disk tests need, which must succeed.
fn run(command: &str, args: &[&str]) {
    let status = std::process::Command::new(command)
        .args(args)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "running {command} failed ({e}); the disk tests need e2fsprogs and util-linux \
                 (apt-get install e2fsprogs util-linux) and root (scripts/test.sh)"
            )
        });
    assert!(status.success(), "{command} {args:?}: {status}");
}
