//! The loaded route table: the validated [`RouteTable`] with every
//! upstream's targets resolved, built whole from the route file and swapped
//! whole on reload (see [`crate::reload`]). Nothing here runs per request
//! except [`LoadedTable::pool`], a map lookup.

use std::{collections::HashMap, path::Path, sync::Arc};

use bouncer_core::routes::RouteTable;

use crate::{
    error::SetupError,
    upstream::{self, Pool},
};

/// A route table with its upstreams resolved, swapped whole on reload.
pub struct LoadedTable {
    pub table: RouteTable,
    /// Targets of each upstream, resolved at load time (no DNS per request).
    upstreams: HashMap<String, Arc<Pool>>,
}

/// Loads and resolves a route file, or says why not (file:line: reason).
pub fn load_routes(path: &Path) -> Result<LoadedTable, SetupError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| SetupError::ReadRoutes { path: path.to_owned(), error })?;
    let table = RouteTable::from_yaml(&text, &path.display().to_string())?;
    LoadedTable::resolve(table)
}

impl LoadedTable {
    /// Resolves every upstream target; a name that does not resolve makes
    /// the whole table invalid.
    pub fn resolve(table: RouteTable) -> Result<Self, SetupError> {
        let mut upstreams = HashMap::new();
        for (name, spec) in &table.upstreams {
            let mut addrs = Vec::new();
            for target in &spec.targets {
                let resolved = std::net::ToSocketAddrs::to_socket_addrs(target.as_str())
                    .map_err(|error| SetupError::Resolve {
                        upstream: name.clone(),
                        target: target.clone(),
                        error,
                    })?
                    .next()
                    .ok_or_else(|| SetupError::ResolvesToNothing {
                        upstream: name.clone(),
                        target: target.clone(),
                    })?;
                addrs.push(resolved);
            }
            let connect = spec.connect_timeout.map_or(upstream::DEFAULT_CONNECT_TIMEOUT, |d| d.get());
            let read = spec.read_timeout.map_or(upstream::DEFAULT_READ_TIMEOUT, |d| d.get());
            upstreams.insert(name.clone(), Arc::new(Pool::new(addrs, connect, read)));
        }
        Ok(Self { table, upstreams })
    }

    /// The targets of upstream `upstream`, if the table names it.
    pub fn pool(&self, upstream: &str) -> Option<Arc<Pool>> {
        self.upstreams.get(upstream).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unusable_route_file_is_named_with_the_reason() {
        let dir = std::env::temp_dir().join(format!("bouncer-table-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.yaml");
        let err = load_routes(&missing).err().expect("a missing file is refused");
        assert!(matches!(err, SetupError::ReadRoutes { .. }), "{err:?}");
        let said = err.to_string();
        assert!(said.starts_with(&format!("cannot read {}: ", missing.display())), "{said}");

        let invalid = dir.join("invalid.yaml");
        std::fs::write(&invalid, "upstreams: {}\nroutes:\n  - { name: r, path: /x, upstream: nowhere }\n")
            .unwrap();
        let err = load_routes(&invalid).err().expect("an invalid table is refused");
        assert!(matches!(err, SetupError::Routes(_)), "{err:?}");
        assert!(err.to_string().starts_with(&format!("{}:", invalid.display())), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn targets_are_resolved_once_at_load() {
        let table = RouteTable::from_yaml(
            "upstreams: { app: { targets: [127.0.0.1:9000, 127.0.0.1:9001] } }\n\
             routes:\n  - { name: r, path: /x, upstream: app }\n",
            "routes.yaml",
        )
        .unwrap();
        let loaded = LoadedTable::resolve(table).unwrap();
        assert_eq!(loaded.pool("app").map(|p| p.len()), Some(2));
        assert!(loaded.pool("other").is_none());
    }
}
