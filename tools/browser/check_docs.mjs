// Loads /docs (Swagger UI) and /redoc of a running service in headless Debian Chromium, driven
// by playwright-core, and prints what it saw as JSON for tests/contract/test_docs_in_browser.py.
//
//   MDP_DOCS_API_KEY=mdp_... node tools/browser/check_docs.mjs BASE_URL SCREENSHOT_DIR
//
// The key (from the environment, so it never shows in a process list) is entered in Swagger
// UI's "Authorize" dialog, as a reader would, before "Try it out".
//
// Every request that leaves the machine is blocked and reported: the pages must render from the
// service (and a locally served ReDoc bundle) alone. One exception is answered locally instead:
// ReDoc 2.5.0's sidebar always shows Redocly's logo from its CDN (no option turns it off), and a
// blocked image would be a console error that is not ours; it is reported as `stubbedRequests`.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [baseUrl, screenshotDir] = process.argv.slice(2);
const apiKey = process.env.MDP_DOCS_API_KEY;
if (!baseUrl || !screenshotDir || !apiKey) {
  console.error('usage: MDP_DOCS_API_KEY=KEY check_docs.mjs BASE_URL SCREENSHOT_DIR');
  process.exit(2);
}

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
// Without the background-networking flags Chromium phones home, and those connections are refused
// in CI; a fresh profile keeps runs independent.
const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const TIMEOUT_MS = 30_000;
const STUBBED = new Map([
  [
    'https://cdn.redoc.ly/redoc/logo-mini.svg',
    { contentType: 'image/svg+xml', body: '<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"/>' },
  ],
]);

function isLocal(url) {
  const { protocol, hostname } = new URL(url);
  if (protocol === 'data:' || protocol === 'blob:' || protocol === 'about:') {
    return true;
  }
  return hostname === '127.0.0.1' || hostname === 'localhost' || hostname === '[::1]';
}

async function withPage(context, run) {
  const page = await context.newPage();
  const seen = { consoleErrors: [], pageErrors: [], failedRequests: [] };
  page.on('console', (message) => {
    if (message.type() === 'error') {
      seen.consoleErrors.push(message.text());
    }
  });
  page.on('pageerror', (error) => seen.pageErrors.push(String(error)));
  page.on('requestfailed', (request) => {
    seen.failedRequests.push(`${request.method()} ${request.url()}: ${request.failure()?.errorText}`);
  });
  page.on('response', (response) => {
    if (response.status() >= 400) {
      seen.failedRequests.push(`${response.request().method()} ${response.url()}: ${response.status()}`);
    }
  });
  try {
    return { ...(await run(page)), ...seen };
  } catch (error) {
    // Report what the page showed up to the failure, not only the exception.
    return { error: String(error), ...seen };
  } finally {
    await page.close();
  }
}

async function swaggerUi(page) {
  await page.goto(`${baseUrl}/docs/`, { waitUntil: 'load' });
  await page.locator('.opblock').first().waitFor({ timeout: TIMEOUT_MS });
  const operations = await page.$$eval('.opblock', (blocks) =>
    blocks.map((block) => {
      const method = block.querySelector('.opblock-summary-method')?.textContent?.trim();
      const path = block.querySelector('.opblock-summary-path')?.getAttribute('data-path');
      return `${method} ${path}`;
    }),
  );

  // Authorize: the X-API-Key scheme's field in the dialog, then close it.
  await page.locator('.auth-wrapper .authorize').click();
  const dialog = page.locator('.modal-ux');
  const apiKeyScheme = dialog.locator('.auth-container', { hasText: 'ApiKeyAuth' });
  await apiKeyScheme.locator('input').fill(apiKey);
  await apiKeyScheme.locator('button.authorize').click();
  // Swagger UI swaps "Authorize" for "Logout" once it holds the key.
  await apiKeyScheme.getByRole('button', { name: 'Logout' }).waitFor({ timeout: TIMEOUT_MS });
  const authorized = true;
  await dialog.locator('button.close-modal').click();

  const block = page.locator('.opblock', {
    has: page.locator('.opblock-summary-path[data-path="/price/latest"]'),
  });
  await block.locator('.opblock-summary').first().click();
  await block.locator('.try-out__btn').click();
  const symbol = block.locator('tr[data-param-name="symbol"] input');
  await symbol.fill('AAPL');
  await block.locator('button.execute').click();
  const status = block.locator('.live-responses-table tr.response .response-col_status').first();
  await status.waitFor({ timeout: TIMEOUT_MS });
  const tryItOutStatus = (await status.textContent())?.trim() ?? '';
  const tryItOutBody = (await block.locator('.live-responses-table .microlight').first().textContent()) ?? '';

  const screenshot = join(screenshotDir, 'swagger-ui.png');
  // The executed request and the server's answer, in the middle of the picture.
  await block.locator('.live-responses-table').evaluate((node) => node.scrollIntoView({ block: 'center' }));
  await page.screenshot({ path: screenshot });
  return { operations, authorized, tryItOutStatus, tryItOutBody, screenshot };
}

async function redoc(page) {
  await page.goto(`${baseUrl}/redoc`, { waitUntil: 'load' });
  const sections = page.locator('[data-section-id^="operation/"]');
  await sections.first().waitFor({ timeout: TIMEOUT_MS });
  const operations = await page.$$eval('[data-section-id^="operation/"]', (nodes) =>
    nodes.map((node) => node.getAttribute('data-section-id').slice('operation/'.length)),
  );
  const headings = await page.$$eval('[data-section-id^="operation/"] h2', (nodes) =>
    nodes.map((node) => node.textContent.trim()),
  );
  // One operation with its parameters, responses and example, as a reader sees it.
  const latest = page.locator('[data-section-id="operation/getLatestPrice"]');
  await latest.evaluate((node) => node.scrollIntoView({ block: 'start' }));
  await page.waitForTimeout(300);
  const screenshot = join(screenshotDir, 'redoc.png');
  await page.screenshot({ path: screenshot });
  return { operations, headings, screenshot };
}

const profile = mkdtempSync(join(tmpdir(), 'mdp-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM,
  headless: true,
  args: ARGS,
  viewport: { width: 1280, height: 900 },
});
try {
  const blocked = [];
  const stubbed = [];
  await context.route('**/*', (route) => {
    const url = route.request().url();
    if (isLocal(url)) {
      return route.continue();
    }
    const stub = STUBBED.get(url);
    if (stub) {
      stubbed.push(url);
      return route.fulfill({ status: 200, ...stub });
    }
    blocked.push(url);
    return route.abort('blockedbyclient');
  });
  const result = {
    swagger: await withPage(context, swaggerUi),
    redoc: await withPage(context, redoc),
    blockedRequests: blocked,
    stubbedRequests: [...new Set(stubbed)],
  };
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
