// Opens /chart in headless Debian Chromium (driven by playwright-core) on a service that needs
// an API key and prints, as JSON for tests/contract/test_chart_in_browser.py, what happened: the
// page asked for the key, drew candles and volume, updated the open candle from the stream, and
// loaded older candles when the view was scrolled back.
//
//   MDP_API_KEY=... node tools/browser/check_chart.mjs BASE_URL
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [baseUrl] = process.argv.slice(2);
if (!baseUrl) {
  console.error('usage: check_chart.mjs BASE_URL');
  process.exit(2);
}
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'];
const TIMEOUT_MS = 30_000;
const PAGE = 20;

const profile = mkdtempSync(join(tmpdir(), 'mdp-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM, headless: true, args: ARGS, viewport: { width: 1000, height: 600 },
});
try {
  const page = await context.newPage();
  const consoleErrors = [];
  page.on('console', (message) => message.type() === 'error' && consoleErrors.push(message.text()));
  const offline = [];
  page.on('request', (request) => new URL(request.url()).origin !== new URL(baseUrl).origin && offline.push(request.url()));

  await page.goto(`${baseUrl}/chart?symbol=AAPL&interval=1m&limit=${PAGE}`);
  // No key yet: the page asks for one.
  await page.locator('#key-form').waitFor({ state: 'visible', timeout: TIMEOUT_MS });
  const askedFor = await page.locator('#key-message').textContent();
  await page.locator('#key').fill(process.env.MDP_API_KEY ?? '');
  await page.locator('#key-form button').click();

  await page.waitForFunction((n) => window.mdpChart.state.bars.length >= n, PAGE, { timeout: TIMEOUT_MS });
  // Drawn: the candles' and the volume bars' colours are on the canvases.
  await page.waitForTimeout(0);
  const drawn = await page.evaluate(() => {
    const colours = { up: [0x26, 0xa6, 0x9a], down: [0xef, 0x53, 0x50] };
    const counts = { up: 0, down: 0, canvases: 0 };
    for (const canvas of document.querySelectorAll('#chart canvas')) {
      if (!canvas.width || !canvas.height) continue;
      counts.canvases += 1;
      const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
      for (let i = 0; i < pixels.length; i += 4) {
        for (const [name, [r, g, b]] of Object.entries(colours)) {
          if (pixels[i] === r && pixels[i + 1] === g && pixels[i + 2] === b) counts[name] += 1;
        }
      }
    }
    const { state } = window.mdpChart;
    return { ...counts, bars: state.bars.length, symbol: document.querySelector('#symbol').value };
  });

  // Live: the open candle changes as trades arrive.
  const before = await page.evaluate(() => ({ ...window.mdpChart.state.bars.at(-1), updates: window.mdpChart.state.updates }));
  await page.waitForFunction((seen) => window.mdpChart.state.updates > seen, before.updates, { timeout: TIMEOUT_MS });
  const after = await page.evaluate(() => window.mdpChart.state.bars.at(-1));

  // Paging: scrolled back to its oldest candle, the page asks for older ones.
  const oldest = await page.evaluate(() => window.mdpChart.state.bars[0].utc);
  await page.evaluate(() => {
    const { chart, state } = window.mdpChart;
    chart.timeScale().setVisibleLogicalRange({ from: -5, to: state.bars.length / 4 });
  });
  await page.waitForFunction((t) => window.mdpChart.state.bars[0].utc < t, oldest, { timeout: TIMEOUT_MS });
  const paged = await page.evaluate(() => ({ oldest: window.mdpChart.state.bars[0].utc, bars: window.mdpChart.state.bars.length }));

  process.stdout.write(`${JSON.stringify({
    askedFor, drawn, before, after, oldest, paged, consoleErrors, offline,
  }, null, 2)}\n`);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
