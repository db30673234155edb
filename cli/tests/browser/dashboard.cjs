// Drives the dashboard in headless Chromium for cli/tests/browser.rs: without a session the
// dashboard is refused; signing in through the form (JavaScript off) sets the session cookie;
// then each page is loaded at a phone's and a laptop's size, measured for horizontal overflow,
// photographed (full page) into OUT_DIR, and read for the numbers it shows; axe-core checks the
// overview. Prints one JSON object.
//
// Usage: node dashboard.cjs BASE_URL TOKEN OUT_DIR PATH...
// Environment: HERALD_BROWSER_MODULES (node_modules with puppeteer-core and axe-core),
// HERALD_CHROMIUM (the browser; default /usr/bin/chromium).
const path = require('path');
const modules = process.env.HERALD_BROWSER_MODULES;
const puppeteer = require(path.join(modules, 'puppeteer-core'));
const axe = require(path.join(modules, 'axe-core'));

async function main() {
  const [base, token, outDir, ...paths] = process.argv.slice(2);
  const browser = await puppeteer.launch({
    executablePath: process.env.HERALD_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    timeout: 0,
    protocolTimeout: 0,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run'],
  });
  const requests = [];
  const result = { pages: [] };
  try {
    const page = await browser.newPage();
    page.setDefaultTimeout(0);
    page.on('request', (r) => requests.push(r.url()));
    await page.setJavaScriptEnabled(false);
    const refused = await page.goto(`${base}/dashboard`, { waitUntil: 'load' });
    result.refused = { status: refused.status(), html: await refused.text() };
    await page.goto(`${base}/dashboard/login`, { waitUntil: 'load' });
    await page.type('#token', token);
    const [signedIn] = await Promise.all([
      page.waitForNavigation({ waitUntil: 'load' }),
      page.click('button'),
    ]);
    result.signedIn = { status: signedIn.status(), url: signedIn.url() };
    const cookies = await page.cookies();
    result.cookie = cookies.find((c) => c.name === 'herald_dashboard') || null;

    const view = await browser.newPage();
    view.setDefaultTimeout(0);
    view.on('request', (r) => requests.push(r.url()));
    for (const [width, height] of [[375, 667], [1366, 768]]) {
      await view.setViewport({ width, height });
      for (const p of paths) {
        const response = await view.goto(`${base}${p}`, { waitUntil: 'load' });
        const html = await response.text();
        const measure = await view.evaluate(() => ({
          scrollWidth: document.documentElement.scrollWidth,
          innerWidth: window.innerWidth,
          text: document.body.innerText,
          metrics: Array.from(document.querySelectorAll('[data-metric]')).map((e) => {
            const row = e.closest('[data-row],[data-arm],[data-step],[data-segment]');
            const key = row
              ? row.getAttribute('data-row') || row.getAttribute('data-arm') || row.getAttribute('data-step') || row.getAttribute('data-segment')
              : '';
            return [key, e.getAttribute('data-metric'), e.textContent.trim()];
          }),
          winner: (document.querySelector('[data-winner]') || {}).textContent || null,
          decision: (document.querySelector('[data-decision]') || {}).textContent || null,
        }));
        const shot = path.join(outDir, `${p.replace(/[^a-z0-9]+/gi, '_')}-${width}.png`);
        await view.screenshot({ path: shot, fullPage: true });
        result.pages.push({ path: p, width, height, status: response.status(), bytes: html.length, shot, ...measure });
      }
    }
    await view.setBypassCSP(true);
    await view.goto(`${base}${paths[0]}`, { waitUntil: 'load' });
    await view.evaluate(axe.source);
    const a = await view.evaluate(() => window.axe.run(document));
    result.violations = a.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.html).slice(0, 3) }));
    result.passes = a.passes.length;
    result.requests = requests;
    process.stdout.write(JSON.stringify(result));
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  process.stderr.write(`${e.stack || e}\n`);
  process.exit(1);
});
