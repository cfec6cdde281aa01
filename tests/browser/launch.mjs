// launch.mjs: the headless Chromium (Debian's, through playwright-core) that
// drive.mjs and drive_dev.mjs run, and how both record a failed step.
//
// CHROMIUM_BIN: the browser (default /usr/bin/chromium).
import { chromium } from "playwright-core";

// Launches the browser and opens one page whose console, page errors and
// main-frame navigations go to out.console and out.navigations. Returns
// { browser, context, page }; closes the browser itself if a later step fails.
export async function openPage(out, stepTimeout) {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_BIN || "/usr/bin/chromium",
    headless: true,           // --headless
    chromiumSandbox: false,   // --no-sandbox (the tests run as root)
    // Playwright gives it a fresh --user-data-dir (under $TMPDIR) and removes it
    args: ["--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync"],
    timeout: 30000,
  });
  try {
    out.browser_version = browser.version();
    const context = await browser.newContext();
    context.setDefaultTimeout(stepTimeout);
    context.setDefaultNavigationTimeout(stepTimeout);
    const page = await context.newPage();
    page.on("console", (m) => out.console.push(m.type() + ": " + m.text()));
    page.on("pageerror", (e) => out.console.push("pageerror: " + e.message));
    page.on("request", (r) => {
      if (r.isNavigationRequest() && r.frame() === page.mainFrame()) out.navigations.push(r.url());
    });
    return { browser, context, page };
  } catch (e) {
    await browser.close().catch(() => {});
    throw e;
  }
}

// Records error e in out (with the page's URL and text when there is a page)
// and makes the process exit with 1.
export async function recordFailure(out, page, e) {
  out.error = String(e && e.stack || e);
  process.exitCode = 1;
  if (page) {
    out.page_url = page.url();
    out.page_text = await page.locator("body").innerText({ timeout: 2000 }).catch((e2) => String(e2));
  }
}
