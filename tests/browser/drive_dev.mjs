// Drives headless Chromium (Debian's, through playwright-core) through
// single-host mode with the development configuration, for
// tests/integration/test_single_host_browser.py, which checks what this prints.
//
//   node drive_dev.mjs <devexd origin> <user> <repl name> <screenshot.png>
//
// Opens <devexd>/ (302 to /dashboard), clicks "Sign in", submits the user
// name form (back to /dashboard), creates a python REPL with the dashboard's
// form, clicks Start, follows the "open" link (the runner's page through
// /repl/<id>/), echoes a message over a WebSocket to the runner's /ws from
// that page, goes back, clicks Stop and waits for the REPL to show as
// stopped; then takes a screenshot. Prints one JSON object on stdout: what
// the pages showed, the main frame's navigations, devexd's responses and the
// console. On a failure the object has "error" (and what was seen so far),
// a screenshot is still taken, and the exit code is 1.
//
// CHROMIUM_BIN: the browser (default /usr/bin/chromium; launch.mjs).
import { openPage, recordFailure } from "./launch.mjs";

const [devexd, user, replName, screenshot] = process.argv.slice(2);
if (!devexd || !user || !replName || !screenshot) {
  console.error("usage: node drive_dev.mjs <devexd origin> <user> <repl name> <screenshot.png>");
  process.exit(2);
}
const STEP_TIMEOUT = 15000;
const START_TIMEOUT = 45000; // Start waits for the runner to answer on its port
const out = { navigations: [], responses: [], console: [] };

let browser, page;
try {
  let context;
  ({ browser, context, page } = await openPage(out, STEP_TIMEOUT));
  page.on("response", (r) => {
    if (r.url().startsWith(devexd + "/")) {
      out.responses.push({ method: r.request().method(), path: r.url().slice(devexd.length), status: r.status() });
    }
  });
  const row = (state) => page.locator("#repls li").filter({ hasText: `${replName} (python) ${state}` });
  // a REPL's line: its text and its buttons
  const shown = (loc) => loc.evaluate((li) => ({ text: li.firstChild.textContent.trim(),
    stop: li.querySelector(".stop") ? li.querySelector(".stop").firstChild.textContent.trim() : null,
    buttons: [...li.querySelectorAll("button")].map((b) => b.textContent) }));

  out.step = "open the dashboard";
  await page.goto(devexd + "/");
  await page.waitForURL(devexd + "/dashboard");
  const signin = page.getByRole("link", { name: "Sign in" });
  await signin.waitFor();
  out.dashboard_signed_out = await page.locator("#who").innerText();

  out.step = "sign in";
  await Promise.all([page.waitForURL(devexd + "/auth/dev/login"), signin.click()]);
  await page.locator('input[name="user"]').fill(user);
  await Promise.all([page.waitForURL(devexd + "/dashboard"),
                     page.getByRole("button", { name: "Sign in" }).click()]);
  await page.locator("#who").filter({ hasText: "Signed in as" }).waitFor();
  out.who = await page.locator("#who").innerText();
  out.cookies = (await context.cookies([devexd])).map((c) => ({ name: c.name, httpOnly: c.httpOnly, sameSite: c.sameSite }));

  out.step = "create a python REPL";
  await page.locator("#name").fill(replName);
  await page.locator("#template").selectOption("python");
  await page.getByRole("button", { name: "Create" }).click();
  await row("stopped").waitFor();
  out.created = await shown(row("stopped"));

  out.step = "start it";
  await row("stopped").getByRole("button", { name: "Start" }).click();
  const open = page.locator("#msg a.open");
  await open.waitFor({ timeout: START_TIMEOUT });
  out.open_href = await open.getAttribute("href");
  await row("running").locator(".stop button").waitFor(); // the countdown comes with the activity answer
  out.started = await shown(row("running"));

  out.step = "open the runner's page";
  await Promise.all([page.waitForURL(out.open_href), open.click()]);
  out.runner_url = page.url();
  out.runner_text = await page.locator("body").innerText();

  out.step = "WebSocket echo from the runner's page";
  out.ws = await page.evaluate(() => new Promise((resolve) => {
    const url = location.href.replace(/^http/, "ws") + "ws";
    const ws = new WebSocket(url);
    const seen = { url, messages: [] };
    const done = (why) => { seen.end = why; resolve(seen); };
    setTimeout(() => done("timeout"), 10000);
    ws.onopen = () => ws.send("hello from chromium");
    ws.onmessage = (e) => { seen.messages.push(e.data); ws.close(1000, "bye"); };
    ws.onerror = () => { seen.error = true; };
    ws.onclose = (e) => { seen.close = { code: e.code, wasClean: e.wasClean }; done("closed"); };
  }));

  out.step = "back to the dashboard, stop it";
  await Promise.all([page.waitForURL(devexd + "/dashboard"), page.goBack()]);
  await row("running").waitFor();
  await row("running").getByRole("button", { name: "Stop" }).click();
  await row("stopped").waitFor({ timeout: START_TIMEOUT });
  out.stopped = await shown(row("stopped"));
  out.msg = await page.locator("#msg").innerText();
  // what the API and the proxy say now, from the signed-in page
  out.after = await page.evaluate(async (path) => {
    const list = await fetch("/api/repl", { credentials: "include" });
    const proxied = await fetch(path, { credentials: "include" });
    return { repls: await list.json(), proxy_status: proxied.status };
  }, new URL(out.open_href).pathname);
  out.step = "done";
} catch (e) {
  await recordFailure(out, page, e);
} finally {
  if (page) {
    await page.screenshot({ path: screenshot, fullPage: true, timeout: 5000 })
      .then(() => { out.screenshot = screenshot; })
      .catch((e) => { out.screenshot_error = String(e); });
  }
  if (browser) await browser.close().catch(() => {});
}
process.stdout.write(JSON.stringify(out) + "\n");
