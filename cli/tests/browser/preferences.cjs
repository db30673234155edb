// Drives the preference page in headless Chromium for cli/tests/browser.rs: with JavaScript
// disabled, leave one topic through the page's form; then, in a second page with JavaScript
// on (the page's CSP bypassed so axe-core can be injected), run the axe-core accessibility
// check. Prints one JSON object: the HTML after saving, axe's violations, and every request
// the browser made.
//
// Usage: node preferences.cjs URL TOPIC_TO_LEAVE
// Environment: HERALD_BROWSER_MODULES (node_modules with puppeteer-core and axe-core),
// HERALD_CHROMIUM (the browser; default /usr/bin/chromium).
const path = require('path');
const modules = process.env.HERALD_BROWSER_MODULES;
const puppeteer = require(path.join(modules, 'puppeteer-core'));
const axe = require(path.join(modules, 'axe-core'));

async function main() {
  const [url, leave] = process.argv.slice(2);
  const browser = await puppeteer.launch({
    executablePath: process.env.HERALD_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    // No timeouts: a busy machine may be slow, never wrong.
    timeout: 0,
    protocolTimeout: 0,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run'],
  });
  const requests = [];
  try {
    const page = await browser.newPage();
    page.setDefaultTimeout(0);
    await page.setJavaScriptEnabled(false);
    page.on('request', (r) => requests.push(r.url()));
    const first = await page.goto(url, { waitUntil: 'load' });
    const before = await first.text();
    await page.click(`input[name="topic"][value="${leave}"]`);
    const [saved] = await Promise.all([
      page.waitForNavigation({ waitUntil: 'load' }),
      page.click('button[value="save"]'),
    ]);
    const after = await saved.text();

    const check = await browser.newPage();
    check.setDefaultTimeout(0);
    await check.setBypassCSP(true);
    check.on('request', (r) => requests.push(r.url()));
    await check.goto(url, { waitUntil: 'load' });
    await check.evaluate(axe.source);
    const result = await check.evaluate(() => window.axe.run(document));
    process.stdout.write(
      JSON.stringify({
        before,
        after,
        status: saved.status(),
        violations: result.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.length })),
        passes: result.passes.length,
        requests,
      }),
    );
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  process.stderr.write(`${e.stack || e}\n`);
  process.exit(1);
});
