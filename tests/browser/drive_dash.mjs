// Drives headless Chromium (Debian's, through playwright-core) through the
// development dashboard's start progress, failed start and stop countdown
// (issue #18, item 5), for tests/integration/test_single_host_dashboard.py,
// which checks what this prints.
//
//   node drive_dash.mjs <devexd origin> <user> <slow template> <broken template> <screenshot dir>
//
// Signs in by name on /auth/dev/login, creates two REPLs from the page
// (POST /api/repl/new: the dashboard's template list names the shipped
// templates only), reloads the dashboard, then:
//  - clicks Start on the slow one: records every text the progress line
//    (#phase) shows until the "open" link appears (screenshot progress.png
//    while a phase with an ETA shows), and the REPL's line once running
//    (its countdown and buttons; screenshot running.png);
//  - reads /api/repl/<id>/activity, waits 2.5 s, clicks "Keep working",
//    reads it again (the stop time moved) and the countdown shown;
//  - clicks Start on the broken one and records the message shown
//    (screenshot failed.png).
// Prints one JSON object on stdout; on a failure it has "error", a
// screenshot error.png is taken, and the exit code is 1.
//
// CHROMIUM_BIN: the browser (default /usr/bin/chromium; launch.mjs).
import { openPage, recordFailure } from "./launch.mjs";

const [devexd, user, slow, broken, dir] = process.argv.slice(2);
if (!devexd || !user || !slow || !broken || !dir) {
  console.error("usage: node drive_dash.mjs <devexd origin> <user> <slow template> <broken template> <screenshot dir>");
  process.exit(2);
}
const STEP_TIMEOUT = 15000;
const START_TIMEOUT = 45000;
const out = { navigations: [], responses: [], console: [], screenshots: [] };
const shot = async (name) => {
  const path = dir + "/" + name;
  await page.screenshot({ path, fullPage: true, timeout: 5000 });
  out.screenshots.push(path);
};

let browser, page;
try {
  ({ browser, page } = await openPage(out, STEP_TIMEOUT));
  page.on("response", (r) => {
    if (r.url().startsWith(devexd + "/")) {
      out.responses.push({ method: r.request().method(), path: r.url().slice(devexd.length), status: r.status() });
    }
  });
  const row = (name, state) => page.locator("#repls li").filter({ hasText: `${name} (` }).filter({ hasText: state });
  const shown = (loc) => loc.evaluate((li) => ({ text: li.firstChild.textContent.trim(),
    stop: li.querySelector(".stop") ? li.querySelector(".stop").firstChild.textContent.trim() : null,
    buttons: [...li.querySelectorAll("button")].map((b) => b.textContent) }));
  const activity = (id) => page.evaluate(async (id) =>
    (await fetch(`/api/repl/${id}/activity`, { credentials: "include" })).json(), id);

  out.step = "sign in";
  await page.goto(devexd + "/auth/dev/login");
  await page.locator('input[name="user"]').fill(user);
  await Promise.all([page.waitForURL(devexd + "/dashboard"),
                     page.getByRole("button", { name: "Sign in" }).click()]);
  await page.locator("#who").filter({ hasText: "Signed in as" }).waitFor();

  out.step = "create the REPLs";
  out.ids = await page.evaluate(async ([slow, broken]) => {
    const ids = {};
    for (const [name, template] of [["slowone", slow], ["brokenone", broken]]) {
      const r = await fetch("/api/repl/new", { method: "POST", credentials: "include",
        headers: { "Content-Type": "application/json" }, body: JSON.stringify({ replName: name, template }) });
      ids[name] = (await r.json()).id;
    }
    return ids;
  }, [slow, broken]);
  await page.reload();
  await row("slowone", "stopped").waitFor();
  await row("brokenone", "stopped").waitFor();

  out.step = "start the slow one";
  await page.evaluate(() => {
    window.phaseTexts = [];
    new MutationObserver(() => {
      const t = document.getElementById("phase").textContent;
      if (window.phaseTexts[window.phaseTexts.length - 1] !== t) window.phaseTexts.push(t);
    }).observe(document.getElementById("progress"), { subtree: true, childList: true, characterData: true, attributes: true });
  });
  await row("slowone", "stopped").getByRole("button", { name: "Start" }).click();
  await page.locator("#phase").filter({ hasText: "left" }).waitFor({ timeout: START_TIMEOUT });
  out.progress_shown = { phase: await page.locator("#phase").innerText(),
                         bar: await page.locator("#bar").evaluate((b) => [b.value, b.max]),
                         visible: await page.locator("#progress").isVisible() };
  await shot("progress.png");
  await page.locator("#msg a.open").waitFor({ timeout: START_TIMEOUT });
  out.phase_texts = await page.evaluate(() => window.phaseTexts);
  out.phase_final = await page.locator("#phase").innerText();

  out.step = "the running REPL's countdown";
  await row("slowone", "running").locator(".stop button").waitFor();
  out.running = await shown(row("slowone", "running"));
  await shot("running.png");

  out.step = "keep working";
  const id = out.ids.slowone;
  out.activity_before = await activity(id);
  await page.waitForTimeout(2500);
  const kept = page.waitForResponse((r) => r.url() === `${devexd}/api/repl/${id}/keepalive`);
  await row("slowone", "running").getByRole("button", { name: "Keep working" }).click();
  out.keepalive_status = (await kept).status();
  await page.waitForTimeout(500); // the list is redrawn with the new countdown
  await row("slowone", "running").locator(".stop button").waitFor();
  out.activity_after = await activity(id);
  out.running_after = await shown(row("slowone", "running"));

  out.step = "start the broken one";
  await page.evaluate(() => { window.phaseTexts = []; });
  await row("brokenone", "stopped").getByRole("button", { name: "Start" }).click();
  await page.locator("#msg").filter({ hasText: /\w/ }).waitFor({ timeout: START_TIMEOUT });
  await page.waitForTimeout(500); // the failed event and the start's answer may both arrive
  out.failed_msg = await page.locator("#msg").innerText();
  out.failed_progress_visible = await page.locator("#progress").isVisible();
  await shot("failed.png");
  out.step = "done";
} catch (e) {
  await recordFailure(out, page, e);
  if (page) await shot("error.png").catch((e2) => { out.screenshot_error = String(e2); });
} finally {
  if (browser) await browser.close().catch(() => {});
}
process.stdout.write(JSON.stringify(out) + "\n");
