//! The database schema, versioned through SQLite's `user_version`.
//!
//! `MIGRATIONS[n]` takes a database from version `n` to `n + 1`. Never edit a migration that has
//! shipped: append a new one. Opening a database written by a newer crius is refused.

/// Each entry upgrades the schema by one version.
pub const MIGRATIONS: &[&str] = &[
    // v1: runtime settings and the records of sandboxes, containers and images. Records are JSON
    // documents owned by their modules; the columns beside them are what lookups and foreign keys
    // need.
    "
    CREATE TABLE settings (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE sandboxes (
        id     TEXT PRIMARY KEY,
        record TEXT NOT NULL
    );
    CREATE TABLE containers (
        id         TEXT PRIMARY KEY,
        sandbox_id TEXT NOT NULL REFERENCES sandboxes(id),
        record     TEXT NOT NULL
    );
    CREATE INDEX containers_by_sandbox ON containers(sandbox_id);
    CREATE TABLE images (
        id     TEXT PRIMARY KEY,
        record TEXT NOT NULL
    );
    CREATE TABLE image_refs (
        reference TEXT PRIMARY KEY,
        image_id  TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
    );
    CREATE INDEX image_refs_by_image ON image_refs(image_id);
    ",
    // v2: the image store. Unpacked layers (snapshots) by chain id, in directories
    // snapshots/<num>; `ready` is 0 while one is being unpacked (such rows are removed on start).
    // Blobs kept in content/ (manifests, indexes, configs).
    "
    CREATE TABLE snapshots (
        chain_id TEXT PRIMARY KEY,
        num      INTEGER NOT NULL UNIQUE,
        parent   TEXT,
        diff_id  TEXT NOT NULL,
        size     INTEGER NOT NULL DEFAULT 0,
        inodes   INTEGER NOT NULL DEFAULT 0,
        ready    INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE blobs (
        digest     TEXT PRIMARY KEY,
        size       INTEGER NOT NULL,
        media_type TEXT NOT NULL
    );
    ",
    // v3: parent cgroups the runtime created (kubelet had not), which it removes again once no
    // pod uses them.
    "
    CREATE TABLE created_cgroups (
        path TEXT PRIMARY KEY
    );
    ",
];

/// The version a fully migrated database has.
pub const CURRENT_VERSION: u32 = MIGRATIONS.len() as u32;
