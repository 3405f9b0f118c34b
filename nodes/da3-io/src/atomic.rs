//! Atomic file writes: the content goes to `<name>.tmp-<pid>` in the same
//! folder, is flushed and fsynced, then renamed over the final name. A crash
//! leaves at worst a temporary file, never a half-written file under the
//! final name.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use eyre::{eyre, Result, WrapErr};

/// The temporary name used while `path` is being written.
pub fn tmp_path(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| eyre!("{} has no file name", path.display()))?;
    let mut tmp = name.to_os_string();
    tmp.push(format!(".tmp-{}", std::process::id()));
    Ok(path.with_file_name(tmp))
}

/// Writes `path` atomically with `fill`; on any error the temporary file is
/// removed and `path` is left as it was.
pub fn write_with(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
) -> Result<()> {
    let tmp = tmp_path(path)?;
    let result = (|| -> Result<()> {
        let file =
            File::create(&tmp).wrap_err_with(|| format!("cannot create {}", tmp.display()))?;
        let mut w = BufWriter::new(file);
        fill(&mut w)?;
        w.flush()?;
        let file = w.into_inner().map_err(|e| eyre!("{}", e.error()))?;
        file.sync_all()
            .wrap_err_with(|| format!("cannot fsync {}", tmp.display()))?;
        drop(file);
        std::fs::rename(&tmp, path)
            .wrap_err_with(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result.wrap_err_with(|| format!("cannot write {}", path.display()));
    }
    // Make the rename itself durable (best effort: not every platform can
    // open a directory).
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |w| Ok(w.write_all(bytes)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect()
    }

    #[test]
    fn writes_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.bin");
        write_bytes(&p, b"first").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
        write_bytes(&p, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second, longer");
        assert!(leftovers(dir.path()).is_empty());
        assert_eq!(
            tmp_path(&p).unwrap().file_name().unwrap().to_string_lossy(),
            format!("a.bin.tmp-{}", std::process::id())
        );
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_removes_the_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.txt");
        write_bytes(&p, b"good").unwrap();
        let err = write_with(&p, |w| {
            w.write_all(b"half a fi")?;
            w.flush()?;
            // The temporary exists while writing, the final name is untouched.
            assert!(tmp_path(&p).unwrap().is_file());
            assert_eq!(std::fs::read(&p).unwrap(), b"good");
            Err(eyre!("simulated crash"))
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"good");
        assert!(leftovers(dir.path()).is_empty());
        // No file at all under the final name when the first write fails.
        let q = dir.path().join("c.txt");
        assert!(write_with(&q, |_| Err(eyre!("boom"))).is_err());
        assert!(!q.exists());
        assert!(leftovers(dir.path()).is_empty());
    }
}
