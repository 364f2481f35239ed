// Calls the API from a page on another origin in headless Debian Chromium (driven by
// playwright-core) and prints, as JSON for tests/contract/test_cors_in_browser.py, what the page
// could read: answers with a key in a header (so after a preflight), a 304, problems, an export's
// row count and a stream read with fetch, resumed with Last-Event-ID.
//
//   MDP_API_KEY=... node tools/browser/check_cors.mjs BASE_URL ALLOWED_ORIGIN OTHER_ORIGIN
//
// Each origin is a static server on loopback (Chromium refuses a page of unknown address space
// any request to loopback, CORS or not) with a page at `/`; Chromium enforces CORS between them.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [baseUrl, allowed, other] = process.argv.slice(2);
if (!baseUrl || !allowed || !other) {
  console.error('usage: check_cors.mjs BASE_URL ALLOWED_ORIGIN OTHER_ORIGIN');
  process.exit(2);
}
const key = process.env.MDP_API_KEY ?? '';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'];

// Runs in the page: everything a dashboard would do, reporting what it could read.
async function dashboard({ base, key }) {
  const auth = { 'X-API-Key': key };
  const report = {};

  const symbols = await fetch(`${base}/symbols?limit=2`, { headers: auth, cache: 'no-store' });
  const etag = symbols.headers.get('ETag');
  report.symbols = {
    status: symbols.status,
    count: (await symbols.json()).count,
    etag,
    rateLimitPolicy: symbols.headers.get('RateLimit-Policy'),
    rateLimit: symbols.headers.get('RateLimit'),
  };
  const again = await fetch(`${base}/symbols?limit=2`, {
    headers: { ...auth, 'If-None-Match': etag },
    cache: 'no-store',
  });
  report.notModified = again.status;

  const missing = await fetch(`${base}/price/latest?symbol=NOPE`, { headers: auth });
  report.missing = { status: missing.status, code: (await missing.json()).code };
  const anonymous = await fetch(`${base}/symbols`);
  report.anonymous = { status: anonymous.status, code: (await anonymous.json()).code };

  const end = new Date();
  const start = new Date(end.getTime() - 3600 * 1000);
  const exported = await fetch(
    `${base}/export/trades?symbols=AAPL&format=csv&start=${start.toISOString()}&end=${end.toISOString()}`,
    { headers: auth },
  );
  const csv = await exported.text();
  report.export = {
    status: exported.status,
    rowCount: exported.headers.get('X-Row-Count'),
    lines: csv.split('\n').filter((line) => line).length,
  };

  // A stream read with fetch (EventSource cannot send a key), then resumed after its last id.
  async function events(url, headers) {
    const response = await fetch(url, { headers });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    const received = [];
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const fields = Object.fromEntries(
          block
            .split('\n')
            .filter((line) => line && !line.startsWith(':'))
            .map((line) => [line.slice(0, line.indexOf(':')), line.slice(line.indexOf(':') + 1).trim()]),
        );
        if (fields.event === 'trade') received.push({ id: fields.id, trade: JSON.parse(fields.data) });
      }
    }
    return { status: response.status, received };
  }
  const first = await events(`${base}/stream/trades?symbols=AAPL&limit=2`, auth);
  const lastId = first.received.at(-1).id;
  const resumed = await events(`${base}/stream/trades?symbols=AAPL&limit=1`, { ...auth, 'Last-Event-ID': lastId });
  report.stream = {
    status: first.status,
    trades: first.received.map((event) => event.trade.id),
    resumed: resumed.received.map((event) => event.trade.id),
  };
  return report;
}

async function refused({ base, key }) {
  try {
    await fetch(`${base}/symbols`, { headers: { 'X-API-Key': key } });
    return 'answered';
  } catch (error) {
    return error.name;
  }
}

const profile = mkdtempSync(join(tmpdir(), 'mdp-chromium-'));
const context = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, args: ARGS });
try {
  // The service has no favicon, nor the static servers; not what is tested here.
  await context.route('**/favicon.ico', (route) => route.fulfill({ status: 204 }));
  const consoleErrors = [];
  const page = await context.newPage();
  page.on('console', (message) => message.type() === 'error' && consoleErrors.push(message.text()));
  await page.goto(`${allowed}/`);
  const report = await page.evaluate(dashboard, { base: baseUrl, key }).catch((error) => {
    throw new Error(`${error.message}; console: ${JSON.stringify(consoleErrors)}`);
  });

  const stranger = await context.newPage();
  await stranger.goto(`${other}/`);
  report.otherOrigin = await stranger.evaluate(refused, { base: baseUrl, key });
  report.consoleErrors = consoleErrors;
  process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
