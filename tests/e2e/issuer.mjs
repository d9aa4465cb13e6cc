// A real OAuth 2 issuer for the end-to-end tests and the demo: oauth2-mock-server (JWKS at
// /jwks, tokens at /token, discovery) with one RS256 and one ES256 key, plus a control port
// for the tests:
//   POST /mint   {"alg": "RS256"|"ES256", "claims": {...}, "expiresIn": seconds} -> {"token"}
//   POST /rotate {"alg": "RS256"}  adds a new key, used for tokens minted after it -> {"kid"}
//   POST /mint-opaque {"claims": {...}, "expiresIn": seconds} -> {"token"}: an opaque token that
//        the issuer's RFC 7662 /oauth/introspect answers for (active until expired or revoked)
//   POST /revoke-opaque {"token"}: makes that token inactive
//   POST /revoke-jti {"jti"}: lists that jti at GET /revocations (the issuer's revocation list,
//        {"jtis": [...]}, which the gateway fetches)
// usage: node issuer.mjs ISSUER_PORT CONTROL_PORT MODULES_DIR
import http from 'node:http';
import crypto from 'node:crypto';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const [issuerPort, controlPort, modules] = process.argv.slice(2);
const { OAuth2Server } = await import(pathToFileURL(path.join(modules, 'oauth2-mock-server', 'dist', 'index.mjs')).href);

const server = new OAuth2Server();
// Opaque tokens this issuer minted: token -> {claims, exp, revoked}. RFC 7662 introspection
// at /oauth/introspect answers from it (the mock's own /introspect calls every token active).
const opaque = new Map();
server.service.addRoute('POST', '/oauth/introspect', (req, res) => {
  const entry = opaque.get(req.body && req.body.token);
  const now = Math.floor(Date.now() / 1000);
  const body = entry && !entry.revoked && entry.exp > now
    ? { active: true, ...entry.claims, exp: entry.exp, iss: server.issuer.url }
    : { active: false };
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
});
const revokedJtis = new Set();
server.service.addRoute('GET', '/revocations', (req, res) => {
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ jtis: [...revokedJtis] }));
});
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
    } else if (req.url === '/mint-opaque') {
      const token = [...crypto.getRandomValues(new Uint8Array(24))].map((b) => b.toString(16).padStart(2, '0')).join('');
      opaque.set(token, { claims: body.claims || {}, exp: Math.floor(Date.now() / 1000) + (body.expiresIn ?? 300), revoked: false });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ token }));
    } else if (req.url === '/revoke-jti') {
      revokedJtis.add(body.jti);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ revoked: true }));
    } else if (req.url === '/revoke-opaque') {
      const entry = opaque.get(body.token);
      if (entry) entry.revoked = true;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ revoked: Boolean(entry) }));
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
