// Opens /stream/trades with the browser's own EventSource in headless Debian Chromium (driven by
// playwright-core) and prints, as JSON for tests/contract/test_streams_in_browser.py, the trade
// events it received and how many times it (re)connected.
//
//   node tools/browser/check_event_source.mjs BASE_URL EVENTS
//
// Each connection is limited to 3 events, so the server ends it and EventSource reconnects by
// itself with Last-Event-ID: the events must carry on across connections without a gap.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [baseUrl, wanted] = process.argv.slice(2);
if (!baseUrl || !wanted) {
  console.error('usage: check_event_source.mjs BASE_URL EVENTS');
  process.exit(2);
}

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'];
const TIMEOUT_MS = 30_000;

const profile = mkdtempSync(join(tmpdir(), 'mdp-chromium-'));
const context = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, args: ARGS });
try {
  // The service has no favicon; the browser's request for one is not what is tested here.
  await context.route('**/favicon.ico', (route) => route.fulfill({ status: 204 }));
  const page = await context.newPage();
  const consoleErrors = [];
  page.on('console', (message) => message.type() === 'error' && consoleErrors.push(message.text()));
  // Any page of the service: the stream is then same-origin, as for a page it served.
  await page.goto(`${baseUrl}/health`);
  const received = await page.evaluate(
    ({ count, timeout }) =>
      new Promise((resolve, reject) => {
        const trades = [];
        let opened = 0;
        const source = new EventSource('/stream/trades?symbols=AAPL,MSFT&limit=3');
        source.onopen = () => {
          opened += 1;
        };
        source.addEventListener('trade', (event) => {
          trades.push({ id: event.lastEventId, data: JSON.parse(event.data) });
          if (trades.length >= count) {
            source.close();
            resolve({ trades, opened });
          }
        });
        setTimeout(() => {
          source.close();
          reject(new Error(`${trades.length} of ${count} events after ${timeout} ms`));
        }, timeout);
      }),
    { count: Number(wanted), timeout: TIMEOUT_MS },
  );
  process.stdout.write(`${JSON.stringify({ ...received, consoleErrors }, null, 2)}\n`);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
