// A small rate-limit service for the end-to-end tests: Envoy's gRPC protocol
// (envoy.service.ratelimit.v3.RateLimitService) over the descriptor file format of
// envoyproxy/ratelimit (domain; nested key/value descriptors, a key without a value counting
// each value apart; rate_limit {unit, requests_per_unit}), fixed windows of one unit, in
// memory. The standard Go service cannot be installed here; this follows its matching rules
// for the subset fhirgate's descriptor file uses.
//
//   node ratelimit_service.mjs PORT DESCRIPTOR_FILE NODE_MODULES
import path from 'node:path';
import fs from 'node:fs';
import { createRequire } from 'node:module';

const [port, descriptorFile, nodeModules] = process.argv.slice(2);
const require = createRequire(path.join(nodeModules, 'noop.js'));
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const YAML = require('yaml');

const config = YAML.parse(fs.readFileSync(descriptorFile, 'utf8'));
const UNIT_SECONDS = { second: 1, minute: 60, hour: 3600, day: 86400 };
const counters = new Map();

// The configured limit for a descriptor's entries, or null: at each level a child with the
// same key and value wins over one with the key alone.
function limitFor(entries) {
  let nodes = config.descriptors || [];
  let found = null;
  for (const { key, value } of entries) {
    const node = nodes.find((n) => n.key === key && n.value === value) || nodes.find((n) => n.key === key && n.value === undefined);
    if (!node) return null;
    found = node;
    nodes = node.descriptors || [];
  }
  return found && found.rate_limit ? found.rate_limit : null;
}

function shouldRateLimit(call, callback) {
  const { domain, descriptors, hits_addend: requestHits } = call.request;
  if (process.env.RLS_TRACE) console.log(JSON.stringify(call.request));
  const now = Date.now() / 1000;
  let over = false;
  const statuses = [];
  for (const d of domain === config.domain ? descriptors : []) {
    const limit = limitFor(d.entries);
    if (!limit) {
      statuses.push({ code: 'OK' });
      continue;
    }
    const unit = UNIT_SECONDS[limit.unit];
    const window = Math.floor(now / unit);
    const key = `${window}|${d.entries.map((e) => `${e.key}=${e.value}`).join('|')}`;
    const hits = requestHits || 1;
    const used = (counters.get(key) || 0) + hits;
    counters.set(key, used);
    const remaining = Math.max(0, limit.requests_per_unit - used);
    const code = used > limit.requests_per_unit ? 'OVER_LIMIT' : 'OK';
    over = over || code === 'OVER_LIMIT';
    statuses.push({
      code,
      current_limit: { requests_per_unit: limit.requests_per_unit, unit: limit.unit.toUpperCase() },
      limit_remaining: remaining,
      duration_until_reset: { seconds: Math.ceil((window + 1) * unit - now) },
    });
  }
  callback(null, { overall_code: over ? 'OVER_LIMIT' : 'OK', statuses });
}

const definition = protoLoader.loadSync(path.join(path.dirname(new URL(import.meta.url).pathname), 'rls.proto'),
  { keepCase: true, longs: Number, enums: String, defaults: false, oneofs: true });
const proto = grpc.loadPackageDefinition(definition);
const server = new grpc.Server();
server.addService(proto.envoy.service.ratelimit.v3.RateLimitService.service, { ShouldRateLimit: shouldRateLimit });
server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (err) => {
  if (err) {
    console.error(err);
    process.exit(1);
  }
  console.log(`rate-limit service on ${port}, domain ${config.domain}`);
});
