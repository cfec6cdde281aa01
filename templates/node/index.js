// A minimal HTTP server: edit me! It listens on $HOST:$PORT (default 0.0.0.0:3000).
"use strict";

const http = require("http");

const port = Number(process.env.PORT) || 3000;

const server = http.createServer((req, res) => {
  res.writeHead(200, { "Content-Type": "text/plain; charset=utf-8" });
  res.end("Hello from your Node.js REPL!\n");
});

server.listen(port, process.env.HOST || '0.0.0.0', () => {
  console.log(`listening on port ${port}`);
});
