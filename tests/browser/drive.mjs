// Drives headless Chromium (Debian's, through playwright-core; Playwright's own
// browser download is not used) through the sign-in of
// tests/integration/test_browser_auth.py, which checks what this prints.
//
//   node drive.mjs <frontend origin> <devexd origin>
//
// Opens <frontend>/, clicks "Sign in" (devexd -> provider -> devexd's
// callback -> <frontend>/dashboard), waits for the dashboard's GET /auth/me,
// clicks "Sign out" (POST /auth/logout, then GET /auth/me again). Prints one
// JSON object on stdout: what the page showed, the main frame's navigations,
// the requests to devexd (with whether they carried the session cookie), the
// browser's cookies for devexd, document.cookie and the console. On a failure
// the object has "error" (and what was seen so far) and the exit code is 1.
//
// CHROMIUM_BIN: the browser (default /usr/bin/chromium; launch.mjs).
import { openPage, recordFailure } from "./launch.mjs";

const [frontend, devexd] = process.argv.slice(2);
if (!frontend || !devexd) {
  console.error("usage: node drive.mjs <frontend origin> <devexd origin>");
  process.exit(2);
}
const STEP_TIMEOUT = 15000;
const out = { navigations: [], devexd_requests: [], console: [] };

function result(text) {
  try { return JSON.parse(text); } catch (e) { return { unparsed: text }; }
}

let browser, page;
try {
  let context;
  ({ browser, context, page } = await openPage(out, STEP_TIMEOUT));
  // what Chromium really sent (the Cookie header included) to devexd, in order
  const pending = [];
  page.on("request", (r) => {
    if (!r.url().startsWith(devexd + "/")) return;
    const entry = { method: r.method(), url: r.url(), type: r.resourceType() };
    out.devexd_requests.push(entry);
    pending.push((async () => {
      const h = await r.allHeaders();
      entry.origin = h["origin"] || null;
      entry.cookies_sent = (h["cookie"] || "").split(/;\s*/).filter(Boolean).map((c) => c.split("=")[0]);
      const resp = await r.response();
      entry.status = resp ? resp.status() : null;
    })().catch((e) => { entry.error = String(e); }));
  });

  out.step = "open the frontend";
  await page.goto(frontend + "/");
  const signin = page.locator("#signin");
  await signin.waitFor();
  out.signin_href = await signin.getAttribute("href");

  out.step = "sign in";
  await Promise.all([page.waitForURL(frontend + "/dashboard"), signin.click()]);
  await page.locator('#me[data-seq="1"]').waitFor({ state: "attached" });
  out.me = result(await page.locator("#me").textContent());
  out.document_cookie = await page.evaluate(() => document.cookie);
  out.cookies_signed_in = await context.cookies([devexd]);

  out.step = "sign out";
  await page.locator("#signout").click();
  await page.locator('#me[data-seq="3"]').waitFor({ state: "attached" });
  out.signout = result(await page.locator("#signout-result").textContent());
  out.me_after = result(await page.locator("#me").textContent());
  out.cookies_signed_out = await context.cookies([devexd]);
  out.step = "done";
  await Promise.all(pending);
} catch (e) {
  await recordFailure(out, page, e);
} finally {
  if (browser) await browser.close().catch(() => {});
}
process.stdout.write(JSON.stringify(out) + "\n");
