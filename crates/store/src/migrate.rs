//! Numbered, forward-only SQL migrations compiled into the binary.
//!
//! Each backend records applied versions with a checksum in
//! `schema_migrations`, applies pending ones in order, each in its own
//! transaction together with its record, and refuses to run when an applied
//! file was edited or the database is newer than the binary.

use sha2::{Digest, Sha256};

use crate::StoreError;

/// One migration file.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

impl Migration {
    /// Hex SHA-256 of the SQL text, recorded when applied.
    pub fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.sql.as_bytes()))
    }
}

macro_rules! migration {
    ($version:literal, $name:literal, $file:literal) => {
        Migration {
            version: $version,
            name: $name,
            sql: include_str!(concat!("../../../migrations/", $file)),
        }
    };
}

/// Migrations of the PostgreSQL store, in order.
pub const POSTGRES: &[Migration] = &[
    migration!(1, "identity", "postgres/0001_identity.sql"),
    migration!(2, "audit", "postgres/0002_audit.sql"),
    migration!(3, "revocations", "postgres/0003_revocations.sql"),
    migration!(4, "machine_clients", "postgres/0004_machine_clients.sql"),
];

/// Migrations of the SQLite store, in order.
pub const SQLITE: &[Migration] = &[
    migration!(1, "identity", "sqlite/0001_identity.sql"),
    migration!(2, "audit", "sqlite/0002_audit.sql"),
    migration!(3, "revocations", "sqlite/0003_revocations.sql"),
    migration!(4, "machine_clients", "sqlite/0004_machine_clients.sql"),
];

/// What a migration run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions applied by this run, in order.
    pub applied: Vec<u32>,
    /// The schema version after the run.
    pub current: u32,
}

/// Decides which of `known` still need applying, given the `(version,
/// checksum)` pairs the database recorded.
pub fn pending<'a>(
    known: &'a [Migration],
    recorded: &[(u32, String)],
) -> Result<Vec<&'a Migration>, StoreError> {
    for (version, checksum) in recorded {
        match known.iter().find(|m| m.version == *version) {
            None => return Err(StoreError::UnknownMigration(*version)),
            Some(m) if &m.checksum() != checksum => {
                return Err(StoreError::MigrationEdited { version: m.version, name: m.name.to_owned() });
            }
            Some(_) => {}
        }
    }
    Ok(known.iter().filter(|m| !recorded.iter().any(|(v, _)| *v == m.version)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file under migrations/<backend>/ must be listed, in order, or it
    /// would silently never run.
    #[test]
    fn every_migration_file_is_listed() {
        for (backend, list) in [("postgres", POSTGRES), ("sqlite", SQLITE)] {
            let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations/").to_owned() + backend;
            let mut files: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.ends_with(".sql"))
                .collect();
            files.sort();
            let listed: Vec<String> =
                list.iter().map(|m| format!("{:04}_{}.sql", m.version, m.name)).collect();
            assert_eq!(files, listed, "migrations/{backend} and the list in migrate.rs differ");
            for (i, m) in list.iter().enumerate() {
                assert_eq!(m.version as usize, i + 1, "{backend} versions must be 1, 2, 3, … without gaps");
            }
        }
    }

    #[test]
    fn pending_skips_applied_and_refuses_edits() {
        let m = POSTGRES[0];
        assert_eq!(pending(POSTGRES, &[]).unwrap().len(), POSTGRES.len());
        assert!(pending(POSTGRES, &[(1, m.checksum())]).unwrap().iter().all(|p| p.version != 1));
        assert!(matches!(
            pending(POSTGRES, &[(1, "0".repeat(64))]),
            Err(StoreError::MigrationEdited { version: 1, .. })
        ));
        assert!(matches!(pending(POSTGRES, &[(999, "x".into())]), Err(StoreError::UnknownMigration(999))));
    }
}
