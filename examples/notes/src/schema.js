// The app's schema, the same statements on the full nodes (cluster.mjs creates it in each
// node's database before the sidecar starts) and in every browser (the page runs them after
// open()). `notes` is partitioned by `owner_id` (a user reads and writes only rows whose
// owner_id is the `sub` of their token); `board` is shared: full nodes write it, every user
// reads it.
export const SCHEMA = [
  "CREATE TABLE IF NOT EXISTS notes(id TEXT PRIMARY KEY, owner_id TEXT NOT NULL, body TEXT NOT NULL)",
  "CREATE TABLE IF NOT EXISTS board(id INTEGER PRIMARY KEY, message TEXT NOT NULL)",
].join(";\n");

/** The `[scopes]` rules of the cluster (written into each node's TOML by cluster.mjs). */
export const AUDIENCE = "notes-example";
