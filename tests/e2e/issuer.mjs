// A real OAuth 2 issuer for the end-to-end tests and the demo: oauth2-mock-server (JWKS at
// /jwks, tokens at /token, discovery) with one RS256 and one ES256 key, plus a control port
// for the tests:
//   POST /mint   {"alg": "RS256"|"ES256", "claims": {...}, "expiresIn": seconds} -> {"token"}
//   POST /rotate {"alg": "RS256"}  adds a new key, used for tokens minted after it -> {"kid"}
// usage: node issuer.mjs ISSUER_PORT CONTROL_PORT MODULES_DIR
import http from 'node:http';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const [issuerPort, controlPort, modules] = process.argv.slice(2);
const { OAuth2Server } = await import(pathToFileURL(path.join(modules, 'oauth2-mock-server', 'dist', 'index.mjs')).href);

const server = new OAuth2Server();
const current = {};
current.RS256 = (await server.issuer.keys.generate('RS256')).kid;
current.ES256 = (await server.issuer.keys.generate('ES256')).kid;
await server.start(Number(issuerPort), '127.0.0.1');

function readJson(req) {
  return new Promise((resolve, reject) => {
    let data = '';
    req.on('data', (chunk) => { data += chunk; });
    req.on('end', () => { try { resolve(data ? JSON.parse(data) : {}); } catch (e) { reject(e); } });
  });
}

const control = http.createServer(async (req, res) => {
  try {
    const body = await readJson(req);
    const alg = body.alg || 'RS256';
    if (req.url === '/mint') {
      const token = await server.issuer.buildToken({
        kid: current[alg],
        expiresIn: body.expiresIn ?? 300,
        scopesOrTransform: (header, payload) => { Object.assign(payload, body.claims || {}); },
      });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ token }));
    } else if (req.url === '/rotate') {
      current[alg] = (await server.issuer.keys.generate(alg)).kid;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ kid: current[alg] }));
    } else {
      res.writeHead(404);
      res.end();
    }
  } catch (e) {
    res.writeHead(500);
    res.end(String(e));
  }
});
control.listen(Number(controlPort), '127.0.0.1', () => console.log(`issuer ${server.issuer.url} control ${controlPort}`));
