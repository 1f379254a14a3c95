//! `tenets merge`: databases written by shards (or by separate runs) into one.
//!
//! Every table is keyed by content hashes, so merging is a union: each source's rows are
//! inserted with `INSERT OR IGNORE` into a fresh database, table by table in creation order
//! (referenced tables first), and a row two sources share is kept once with its provenance (run,
//! judge, model hashes) as it was. The output is written under a temporary name and renamed when
//! complete: a failed merge leaves nothing behind, and an existing file is never overwritten.

use std::path::{Path, PathBuf};

use sqlx::Row;

use super::{Store, StoreError};

/// Rows each table gained from each source.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MergeSummary {
    pub out: PathBuf,
    /// One entry per source, in order: rows a source shares with an earlier one are not counted.
    pub added: Vec<SourceAdded>,
}

/// What one source added: (table, rows) for every table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceAdded {
    pub source: PathBuf,
    pub tables: Vec<(String, u64)>,
}

/// What a merge added from each source, as text.
pub fn render(summary: &MergeSummary) -> String {
    let mut out = String::new();
    for pass in &summary.added {
        let rows: Vec<String> = pass
            .tables
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(table, n)| format!("{n} {table}"))
            .collect();
        let added = if rows.is_empty() {
            "nothing new".to_string()
        } else {
            rows.join(", ")
        };
        out += &format!("{}: {added}\n", pass.source.display());
    }
    out + &format!("wrote {}\n", summary.out.display())
}

/// Merges `sources` into a new database at `out`.
pub async fn merge(sources: &[PathBuf], out: &Path) -> Result<MergeSummary, StoreError> {
    let other = |message: String| StoreError::Other {
        path: out.to_path_buf(),
        message,
    };
    if out.exists() {
        return Err(other(
            "already exists; merge writes a new database (choose another -o)".into(),
        ));
    }
    if sources.is_empty() {
        return Err(other(
            "nothing to merge: give the databases to merge".into(),
        ));
    }
    // Every source is brought to the current schema first (adds tables, changes no rows).
    for source in sources {
        if source == out {
            return Err(other("is also a source".into()));
        }
        Store::open_existing(source).await?.close().await;
    }
    let mut partial = out.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    remove_database(&partial);
    let result = merge_into(sources, &partial).await;
    match result {
        Ok(added) => {
            std::fs::rename(&partial, out)
                .map_err(|e| other(format!("cannot move the merged database into place: {e}")))?;
            Ok(MergeSummary {
                out: out.to_path_buf(),
                added,
            })
        }
        Err(e) => {
            remove_database(&partial);
            Err(e)
        }
    }
}

/// Removes a database file and its WAL companions, if there.
fn remove_database(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

async fn merge_into(sources: &[PathBuf], partial: &Path) -> Result<Vec<SourceAdded>, StoreError> {
    let store = Store::open(partial).await?;
    let tables: Vec<String> = sqlx::query(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         AND name NOT LIKE '_sqlx%' ORDER BY rowid",
    )
    .fetch_all(store.pool())
    .await
    .map_err(store.err())?
    .into_iter()
    .map(|r| r.get(0))
    .collect();
    let mut columns = Vec::new();
    for table in &tables {
        let names: Vec<String> = sqlx::query(&format!("PRAGMA table_info(\"{table}\")"))
            .fetch_all(store.pool())
            .await
            .map_err(store.err())?
            .into_iter()
            .map(|r| format!("\"{}\"", r.get::<String, _>("name")))
            .collect();
        columns.push(names.join(", "));
    }
    let mut added = Vec::new();
    for source in sources {
        sqlx::query("ATTACH DATABASE ? AS source")
            .bind(source.display().to_string())
            .execute(store.pool())
            .await
            .map_err(store.err())?;
        let mut tx = store.pool().begin().await.map_err(store.err())?;
        let mut counts = Vec::new();
        for (table, cols) in tables.iter().zip(&columns) {
            // Counted, not taken from the statement: an ignored row is not an added one.
            let count = format!("SELECT COUNT(*) FROM main.\"{table}\"");
            let before: i64 = sqlx::query_scalar(&count)
                .fetch_one(&mut *tx)
                .await
                .map_err(store.err())?;
            sqlx::query(&format!(
                "INSERT OR IGNORE INTO main.\"{table}\" ({cols}) SELECT {cols} FROM source.\"{table}\""
            ))
            .execute(&mut *tx)
            .await
            .map_err(store.err())?;
            let after: i64 = sqlx::query_scalar(&count)
                .fetch_one(&mut *tx)
                .await
                .map_err(store.err())?;
            counts.push((table.clone(), (after - before).max(0) as u64));
        }
        added.push(SourceAdded {
            source: source.clone(),
            tables: counts,
        });
        tx.commit().await.map_err(store.err())?;
        sqlx::query("DETACH DATABASE source")
            .execute(store.pool())
            .await
            .map_err(store.err())?;
    }
    let check = store.integrity_check().await?;
    if check != "ok" {
        return Err(StoreError::Other {
            path: partial.to_path_buf(),
            message: format!("integrity check after merging: {check}"),
        });
    }
    // The file is renamed into place after this: fold the WAL into it and leave WAL mode, so
    // that the file alone holds everything. (Closing the pool checkpoints too, but its last
    // connection may close after `close` returns, and a WAL left behind keeps the old name.)
    sqlx::query("PRAGMA journal_mode = DELETE")
        .execute(store.pool())
        .await
        .map_err(store.err())?;
    store.close().await;
    Ok(added)
}
