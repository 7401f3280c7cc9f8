// A real OpenID provider on loopback for the search page's sign-in tests: npm's oidc-provider (an
// OpenID Certified implementation) with test users, clients and a plain sign-in form that checks
// passwords. Started by tests/support/oidc_provider.py from the copy `make setup-oidc` installs into
// .cache/oidc-provider; configured by the JSON in CXR_OIDC_CONFIG:
//   {"issuer": "http://localhost:PORT", "port": PORT, "rolesInIdToken": false,
//    "clients": [{"client_id", "client_secret" (absent: a public client), "redirect_uris",
//                 "post_logout_redirect_uris", "token_ttl_s"}],
//    "users": [{"username", "password", "name", "roles": [...]}]}
// Prints "ready <issuer>" once it listens. Never for production: keys and sessions live in memory.
import { generateKeyPairSync, randomBytes } from "node:crypto";
import * as http from "node:http";

import Provider from "oidc-provider";

const config = JSON.parse(process.env.CXR_OIDC_CONFIG);
const users = new Map(config.users.map((user) => [user.username, user]));
const ttls = new Map(config.clients.map((client) => [client.client_id, client.token_ttl_s || 3600]));
const ttl = (ctx, token, client) => ttls.get(client.clientId) || 3600;

const signingKey = generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey.export({ format: "jwk" });

const provider = new Provider(config.issuer, {
  clients: config.clients.map((client) => ({
    client_id: client.client_id,
    ...(client.client_secret ? { client_secret: client.client_secret } : { token_endpoint_auth_method: "none" }),
    redirect_uris: client.redirect_uris,
    post_logout_redirect_uris: client.post_logout_redirect_uris,
    grant_types: ["authorization_code"],
    response_types: ["code"],
  })),
  jwks: { keys: [{ ...signingKey, kid: "test-" + randomBytes(4).toString("hex"), alg: "RS256", use: "sig" }] },
  cookies: { keys: [randomBytes(32).toString("hex")] },
  scopes: ["openid", "profile", "roles"],
  claims: { openid: ["sub"], profile: ["name", "preferred_username"], roles: ["roles"] },
  // Strict (the default): a code flow's ID token carries only sub and the protocol's claims, the rest
  // is at the userinfo endpoint. rolesInIdToken puts the scopes' claims in the ID token too.
  conformIdTokenClaims: !config.rolesInIdToken,
  pkce: { required: () => true }, // a request without an S256 challenge is refused
  ttl: { IdToken: ttl, AccessToken: ttl },
  features: {
    devInteractions: { enabled: false },
    rpInitiatedLogout: { enabled: true, logoutSource },
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(ctx, id) {
    const user = users.get(id);
    if (!user) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, name: user.name, preferred_username: id, roles: user.roles };
      },
    };
  },
});

async function logoutSource(ctx, form) {
  ctx.body = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sign out</title></head><body>
<h1>Sign out of the hospital's sign-in?</h1>${form}
<button type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>
<button type="submit" form="op.logoutForm">No, stay signed in</button></body></html>`;
}

function loginPage(uid, failed) {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Hospital sign-in</title></head><body>
<h1>Hospital sign-in</h1>
${failed ? '<p role="alert">Wrong username or password.</p>' : ""}
<form method="post" action="/interaction/${uid}/login" autocomplete="off">
<label>Username <input name="username" required></label>
<label>Password <input name="password" type="password" required></label>
<button type="submit">Sign in</button></form>
<form method="post" action="/interaction/${uid}/abort"><button type="submit">Cancel</button></form>
</body></html>`;
}

async function form(req) {
  let body = "";
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 10000) throw new Error("form too large");
  }
  return new URLSearchParams(body);
}

function html(res, text) {
  res.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" });
  res.end(text);
}

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (action === "/abort") {
    return provider.interactionFinished(req, res, { error: "access_denied", error_description: "cancelled" });
  }
  if (details.prompt.name === "consent") return consent(req, res, details); // first-party: granted
  if (action !== "/login") return html(res, loginPage(uid, false));
  const fields = await form(req);
  const user = users.get(fields.get("username") || "");
  if (!user || user.password !== fields.get("password")) return html(res, loginPage(uid, true));
  return provider.interactionFinished(req, res, { login: { accountId: user.username } },
    { mergeWithLastSubmission: false });
}

async function consent(req, res, details) {
  const { prompt, params, session, grantId } = details;
  const grant = grantId ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(" "));
  if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
  const saved = await grant.save();
  return provider.interactionFinished(req, res, { consent: { grantId: saved } }, { mergeWithLastSubmission: true });
}

const callback = provider.callback();
async function handle(req, res) {
  const path = new URL(req.url, config.issuer).pathname;
  if (path === "/favicon.ico") return res.writeHead(204).end(); // the browser asks; a 404 would be a console error
  const match = /^\/interaction\/([\w-]+)(\/login|\/abort)?$/.exec(path);
  try {
    if (match) return await interaction(req, res, match[1], match[2]);
    return callback(req, res);
  } catch (error) {
    console.error(error);
    res.writeHead(500, { "content-type": "text/plain" });
    res.end("test provider error: " + error.message);
  }
}

// Both loopback addresses: the issuer is http://localhost:PORT, which a browser may reach on either.
const servers = [http.createServer(handle), http.createServer(handle)];
servers[1].on("error", () => {}); // no IPv6 here: 127.0.0.1 is enough
servers[0].listen(config.port, "127.0.0.1", () => console.log("ready " + config.issuer));
servers[1].listen(config.port, "::1");
const stop = () => servers.forEach((server) => server.close()) || process.exit(0);
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
