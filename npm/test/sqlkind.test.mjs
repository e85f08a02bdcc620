// How the shared OPFS Worker runs a tab's SQL (src/sqlkind.ts): row writes inside its own
// transaction with their record, reads and idempotent pragmas as they are, everything else
// (schema changes, transaction control, pragmas mixed with writes) as is, recorded after.

import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";

import { npmDir } from "./helpers.mjs";

async function load() {
  const entry = join(npmDir, "dist", "sqlkind.js");
  if (!existsSync(entry)) {
    throw new Error("npm/dist/sqlkind.js is missing: run `npm run build` in npm/ first");
  }
  return import(entry);
}

test("statements are split at semicolons outside comments, strings and quoted names", async () => {
  const { statementWords } = await load();
  assert.deepEqual(
    statementWords("insert into t values ('a;b', \"c;\"\"d\", [e;f]); -- x; y\n/* z; */ select 1"),
    [
      ["INSERT", "INTO", "T", "VALUES", "?", "?", "?"],
      ["SELECT"],
    ],
  );
  assert.deepEqual(statementWords("  ;;  "), []);
  assert.deepEqual(statementWords("select 'it''s; fine'"), [["SELECT", "?"]]);
  assert.deepEqual(statementWords("(select 1)"), [["(", "SELECT"]], "a statement that starts with punctuation is named by it");
  assert.equal((await load()).sqlKind("(select 1)"), "other");
});

test("row writes are wrapped, reads and pragmas run as they are, the rest is run as is and recorded after", async () => {
  const { sqlKind } = await load();
  const cases = [
    ["SELECT * FROM t", "read"],
    ["select 1; values (2); explain select 3", "read"],
    ["WITH x AS (SELECT 1) SELECT * FROM x", "read"],
    ["PRAGMA user_version = 3", "read"],
    ["PRAGMA table_info(t); SELECT 1", "read"],
    ["", "read"],
    ["INSERT INTO t VALUES (1)", "write"],
    ["insert into t values (1); update t set v = 2; delete from t where id = 3; replace into t values (4)", "write"],
    ["INSERT INTO t(v) VALUES ('create table; begin') RETURNING id", "write"],
    ["WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", "write"],
    ["SELECT CASE WHEN 1 THEN 2 END FROM t; INSERT INTO t VALUES (1)", "write"],
    ["CREATE TABLE t(id INTEGER PRIMARY KEY)", "other"],
    ["INSERT INTO t VALUES (1); CREATE INDEX i ON t(v)", "other"],
    ["BEGIN; INSERT INTO t VALUES (1); COMMIT", "other"],
    ["PRAGMA foreign_keys = ON; INSERT INTO t VALUES (1)", "other"],
    ["ALTER TABLE t ADD COLUMN c", "other"],
    ["DROP TABLE t", "other"],
    ["VACUUM", "other"],
    ["SAVEPOINT a", "other"],
  ];
  for (const [sql, kind] of cases) {
    assert.equal(sqlKind(sql), kind, sql);
  }
  assert.equal(sqlKind(42), "read", "a non-string is left to the replica to refuse");
});
