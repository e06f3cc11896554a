//! Files and folders only their owner may read: the data directory, the signing key, the
//! dev token. Created with their mode, never widened and narrowed after.

use std::path::Path;

/// Creates `dir` (and its parents) readable by the owner only; an existing one is left as
/// it is.
pub(crate) fn create_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// Creates `path` (it must not exist) with mode 0600 from the start, writes and syncs it.
pub(crate) fn create_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
