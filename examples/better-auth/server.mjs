// A Better-Auth server for textbook-chat: `node server.mjs` with PORT, BETTER_AUTH_URL,
// BETTER_AUTH_SECRET and DATABASE_URL (PostgreSQL) set. Creates its tables at start.
import http from "node:http";
import { getMigrations } from "better-auth/db/migration";
import { toNodeHandler } from "better-auth/node";
import { makeAuth } from "./auth.mjs";

const port = Number(process.env.PORT ?? 3000);
process.env.BETTER_AUTH_URL ??= `http://127.0.0.1:${port}`;
for (const name of ["BETTER_AUTH_SECRET", "DATABASE_URL"]) {
  if (!process.env[name]) {
    console.error(`${name} must be set`);
    process.exit(2);
  }
}

const auth = makeAuth();
const { runMigrations } = await getMigrations(auth.options);
await runMigrations();

const server = http.createServer(toNodeHandler(auth));
server.listen(port, "127.0.0.1", () => {
  console.log(`better-auth listening on ${process.env.BETTER_AUTH_URL}`);
});
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    server.close();
    auth.options.database.end().finally(() => process.exit(0));
  });
}
