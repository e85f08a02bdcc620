/**
 * How the Worker runs the SQL of a call (see `worker.ts`): whether it may run inside a
 * transaction of the Worker's own, where its record is written with it. A plain scan of the
 * text (comments, strings and quoted names skipped), never a parse: anything it does not
 * know is `"other"`, run as is.
 */

/** The words (upper case) of each statement in `sql`, outside comments, strings and quoted names. */
export function statementWords(sql: string): string[][] {
  const out: string[][] = [];
  let words: string[] = [];
  let i = 0;
  const n = sql.length;
  while (i < n) {
    const c = sql[i]!;
    if (c === "-" && sql[i + 1] === "-") {
      const j = sql.indexOf("\n", i);
      i = j < 0 ? n : j + 1;
    } else if (c === "/" && sql[i + 1] === "*") {
      const j = sql.indexOf("*/", i + 2);
      i = j < 0 ? n : j + 2;
    } else if (c === "'" || c === '"' || c === "`") {
      let j = i + 1;
      while (j < n && !(sql[j] === c && sql[j + 1] !== c)) {
        j += sql[j] === c ? 2 : 1;
      }
      i = j + 1;
      words.push("?");
    } else if (c === "[") {
      const j = sql.indexOf("]", i);
      i = j < 0 ? n : j + 1;
      words.push("?");
    } else if (c === ";") {
      if (words.length > 0) {
        out.push(words);
      }
      words = [];
      i += 1;
    } else if (/[A-Za-z_]/.test(c)) {
      let j = i + 1;
      while (j < n && /[A-Za-z0-9_$]/.test(sql[j]!)) {
        j += 1;
      }
      words.push(sql.slice(i, j).toUpperCase());
      i = j;
    } else {
      if (!/\s/.test(c) && words.length === 0) {
        words.push(c);
      }
      i += 1;
    }
  }
  if (words.length > 0) {
    out.push(words);
  }
  return out;
}

const READS = new Set(["SELECT", "VALUES", "EXPLAIN"]);
const DML = new Set(["INSERT", "UPDATE", "DELETE", "REPLACE"]);

/**
 * How a call's SQL is run: `"read"` (changes nothing, or only pragmas that give the same
 * result when run again: run as is), `"write"` (row changes only: run inside a transaction
 * with its record) or `"other"` (schema changes, transaction control, pragmas mixed with
 * writes...: run as is, recorded right after).
 */
export function sqlKind(sql: unknown): "read" | "write" | "other" {
  if (typeof sql !== "string") {
    return "read"; // refused by the replica with InvalidArgumentError
  }
  let writes = false;
  let pragmas = false;
  for (const words of statementWords(sql)) {
    const first = words[0]!;
    if (READS.has(first) || (first === "WITH" && !words.some((w) => DML.has(w)))) {
      continue;
    }
    if (first === "PRAGMA") {
      // Some pragmas do nothing inside a transaction (foreign_keys): never wrapped.
      pragmas = true;
    } else if (DML.has(first) || first === "WITH") {
      writes = true;
    } else {
      return "other";
    }
  }
  return writes ? (pragmas ? "other" : "write") : "read";
}
