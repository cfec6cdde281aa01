// A real OpenID Connect provider for tests/integration/test_auth.py:
// oauth2-mock-server on 127.0.0.1 (port from argv[2], 0 = any), with a
// signing key made at start. ID tokens and userinfo carry a profile for the
// user "johndoe". Prints {"issuer": "...", "port": N} once it listens.
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

server.service.on("beforeTokenSigning", (token) => {
  Object.assign(token.payload, profile);
});
server.service.on("beforeUserinfo", (res) => {
  res.body = { sub: "johndoe", ...profile };
});

await server.start(port, "127.0.0.1");
server.issuer.url = `http://127.0.0.1:${server.address().port}`;
process.stdout.write(JSON.stringify({ issuer: server.issuer.url, port: server.address().port }) + "\n");
for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => server.stop().then(() => process.exit(0)));
