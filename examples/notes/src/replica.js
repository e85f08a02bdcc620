// Opening this user's replica, from the page.

import { open } from "harmonylite";

/** The app's login: an HS256 JWT for `user` (server.mjs), the replica's NATS credential. */
export async function login(user) {
  const res = await fetch("/login", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ user }) });
  if (!res.ok) {
    throw new Error(`login refused: ${res.status} ${await res.text()}`);
  }
  return res.text();
}

/** A scoped OPFS replica of the notes database for `user`, syncing through the node at `server`. */
export function openNotes(user, server) {
  return open({
    name: `notes-${user}.db`,
    storage: "opfs",
    // One OPFS directory per user: a browser shared by two users keeps two databases.
    opfsDirectory: `.harmonylite-${user}`,
    servers: server,
    scoped: true,
    // Asked before every connection and feed request: a fresh token each time.
    getToken: () => login(user),
    reconnectMinMs: 250,
    reconnectMaxMs: 2000,
  });
}
