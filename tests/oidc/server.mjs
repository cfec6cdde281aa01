// A real OpenID Connect provider for tests/integration/test_auth.py:
// oauth2-mock-server on 127.0.0.1 (port from argv[2], 0 = any), with a
// signing key made at start. ID tokens and userinfo carry a profile for the
// user "johndoe". Prints {"issuer": "...", "port": N} once it listens.
// An authorization request with login_hint=<sub> signs in the user <sub>
// instead, with the same profile (two accounts, one preferred_username).
// One with azp=<client> puts that authorized party (azp claim) in the tokens.
import { OAuth2Server } from "oauth2-mock-server";

const port = Number(process.argv[2] || 0);
const server = new OAuth2Server();
await server.issuer.keys.generate("RS256");

const profile = {
  preferred_username: "JohnDoe",
  name: "John Doe",
  email: "john.doe@example.com",
  email_verified: true,
  picture: "https://example.com/johndoe.png",
};

const subjects = new Map(); // authorization code -> the login_hint's subject
const parties = new Map(); // authorization code -> the requested azp
server.service.on("beforeAuthorizeRedirect", (redirect, req) => {
  const hint = req.query.login_hint;
  const code = redirect.url.searchParams.get("code");
  if (typeof hint === "string" && hint !== "" && code) subjects.set(code, hint);
  if (typeof req.query.azp === "string" && code) parties.set(code, req.query.azp);
});
const accessSubjects = new Map(); // access token -> subject, for userinfo

server.service.on("beforeTokenSigning", (token, req) => {
  Object.assign(token.payload, profile);
  const sub = req.body && subjects.get(req.body.code);
  if (sub) token.payload.sub = sub;
  const azp = req.body && parties.get(req.body.code);
  if (azp) token.payload.azp = azp;
});
server.service.on("beforeResponse", (response, req) => {
  const sub = req.body && subjects.get(req.body.code);
  if (sub) {
    subjects.delete(req.body.code);
    accessSubjects.set(response.body.access_token, sub);
  }
});
server.service.on("beforeUserinfo", (res, req) => {
  const token = (req.headers.authorization || "").replace(/^Bearer /i, "");
  res.body = { sub: accessSubjects.get(token) || "johndoe", ...profile };
});

await server.start(port, "127.0.0.1");
server.issuer.url = `http://127.0.0.1:${server.address().port}`;
process.stdout.write(JSON.stringify({ issuer: server.issuer.url, port: server.address().port }) + "\n");
for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => server.stop().then(() => process.exit(0)));
