/* The default token: Better-Auth's `authClient.token()` (its JWT plugin), for the reader signed in
 * to the site. `authUrl` is Better-Auth's base URL; without it, Better-Auth's default (this
 * origin's /api/auth). The widget calls this when it connects and again before the token expires. */
import { createAuthClient } from "better-auth/client";
import { jwtClient } from "better-auth/client/plugins";

let authClient = null;

export default async function getToken({ authUrl } = {}) {
  authClient = authClient || createAuthClient({ baseURL: authUrl || undefined, plugins: [jwtClient()] });
  const { data, error } = await authClient.token();
  if (error || !data || !data.token) {
    const why = error && (error.status === 401 ? "sign in first" : error.message || error.statusText);
    throw new Error(why || "no token from Better-Auth");
  }
  return data.token;
}
