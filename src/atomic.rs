//! Files written whole or not at all: the bytes go to `NAME.tmp` beside the target, are synced,
//! and renamed over it, so an interrupted write never leaves half a file under the real name.

use std::io::Write as _;
use std::path::Path;

/// Writes `bytes` to `path` atomically (a failed write removes its temporary file).
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
