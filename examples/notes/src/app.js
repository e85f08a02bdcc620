// The notes page: a scoped harmonylite replica of the app's database in this browser (OPFS),
// holding only the logged-in user's notes and the shared board. Writes are local and
// instant, work offline, and replicate through NATS to the full nodes.
//
// The replica runs where the package puts it: `open()` in the page (src/replica.js
// `openNotes`) starts the package's Worker, which holds the OPFS database and is shared by
// every tab of the origin; `getToken` stays on the page, and the Worker asks it for each token.

import { login, openNotes } from "./replica.js";
import { SCHEMA } from "./schema.js";

const $ = (selector) => document.querySelector(selector);
const params = new URLSearchParams(location.search);

/** State shown on the page, and handed to the console (and the test) as `window.notesApp`. */
const app = { db: null, user: null, errors: [], refused: [], editing: null };
window.notesApp = app;

async function start(user) {
  await login(user); // refused names fail here, before anything is opened
  const { servers } = await (await fetch("/config.json")).json();
  // One node's WebSocket URL (?node=2 picks another). Once connected, the NATS client also
  // learns the other nodes' URLs from the cluster and moves to one of them if this one stops.
  const server = servers[(Number(params.get("node")) || 1) - 1] ?? servers[0];
  app.user = user;
  app.db = await openNotes(user, server);
  app.db.on("error", (e) => {
    console.warn(`harmonylite: ${e.name}: ${e.message}`);
    app.errors.push(`${e.name}: ${e.message}`);
    renderErrors();
  });
  // A write the cluster does not accept (another user's partition, the shared board): the
  // package removes the local row again and says which.
  app.db.on("refused", (w) => {
    app.refused.push(w);
    app.errors.push(`refused: ${w.table} ${JSON.stringify(w.key)}: ${w.reason}`);
    renderErrors();
  });
  app.db.on("status", renderStatus);
  // The app's own schema (the same statements the full nodes ran): capture needs the tables.
  await app.db.exec(SCHEMA);
  app.db.subscribe(render, { tables: ["notes", "board"] });

  $("#who").textContent = user;
  $("#login").hidden = true;
  $("#app").hidden = false;
  await render();
  document.body.dataset.state = "ready";
}

async function render() {
  if (app.editing === null) {
    // Every row this replica holds (no WHERE owner_id): the feed brings only this user's.
    const notes = await app.db.query("SELECT id, owner_id, body FROM notes ORDER BY rowid");
    $("#notes").replaceChildren(...notes.map(noteItem));
  }
  const board = await app.db.query("SELECT id, message FROM board ORDER BY id");
  $("#board").replaceChildren(...board.map((b) => Object.assign(document.createElement("li"), { textContent: b.message })));
}

function noteItem(note) {
  const li = document.createElement("li");
  li.dataset.id = note.id;
  li.dataset.owner = note.owner_id;
  const body = Object.assign(document.createElement("span"), { className: "body", textContent: note.body });
  const edit = Object.assign(document.createElement("button"), { type: "button", className: "edit", textContent: "Edit" });
  edit.onclick = () => {
    app.editing = note.id;
    const form = document.createElement("form");
    form.className = "edit-form";
    const input = Object.assign(document.createElement("input"), { name: "body", value: note.body, required: true });
    const save = Object.assign(document.createElement("button"), { textContent: "Save" });
    form.append(input, save);
    form.onsubmit = async (e) => {
      e.preventDefault();
      await app.db.exec("UPDATE notes SET body = ? WHERE id = ?", [input.value, note.id]);
      app.editing = null;
      await render();
    };
    li.replaceChildren(form);
    input.focus();
  };
  li.append(body, edit);
  return li;
}

function renderStatus(s) {
  const el = $("#sync");
  el.classList.toggle("offline", !s.online);
  el.dataset.online = String(s.online);
  el.dataset.waiting = String(s.outboxRows);
  el.textContent = s.online
    ? `online${s.outboxRows ? `, sending ${s.outboxRows}` : ""}`
    : `offline: ${s.outboxRows} change${s.outboxRows === 1 ? "" : "s"} waiting`;
}

function renderErrors() {
  $("#errors").replaceChildren(...app.errors.slice(-5).map((m) => Object.assign(document.createElement("li"), { textContent: m })));
}

/** The replica could not be opened: say why. */
function failed(err) {
  app.errors.push(`${err.name ?? "Error"}: ${err.message ?? err}`);
  renderErrors();
  $("#app").hidden = false;
  document.body.dataset.state = "failed";
}

$("#add").onsubmit = async (e) => {
  e.preventDefault();
  const input = e.target.elements.body;
  await app.db.exec("INSERT INTO notes(id, owner_id, body) VALUES (?, ?, ?)", [crypto.randomUUID(), app.user, input.value]);
  input.value = "";
};

$("#login").onsubmit = async (e) => {
  e.preventDefault();
  const user = e.target.elements.user.value.trim();
  try {
    await start(user);
    localStorage.setItem("notes-user", user);
  } catch (err) {
    failed(err);
  }
};

$("#logout").onclick = async () => {
  localStorage.removeItem("notes-user");
  await app.db?.close();
  location.reload();
};

// Logged in before (or ?user=...): start right away.
const remembered = params.get("user") ?? localStorage.getItem("notes-user");
if (remembered) {
  start(remembered).catch(failed);
}
