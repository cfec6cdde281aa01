// Drives headless Chromium (Debian's, through playwright-core) through the
// development IDE page (/ide?repl=<id>, lua/routes/dev_ide.html; issue #16,
// item 5), for tests/integration/test_single_host_ide.py, which checks what
// this prints.
//
//   node drive_ide.mjs <devexd origin> <user> <repl name> <app port> <screenshot dir>
//
// Signs in by name, creates a python REPL with the dashboard's form, starts
// it, follows the dashboard's "open the IDE" link, then in the IDE page:
//  - creates hello.py (New file), types a program into the editor, saves it
//    (Ctrl+S), changes its middle (a second, smaller patch), waits for
//    "saved"; runs it in the terminal and waits for its output;
//  - Run (the template's program, `python3 main.py` on APP_PORT, in the
//    terminal) and the app panel (/user-app/): its page; ^C ends it; then
//    `python3 -m http.server <app port>` and the panel on that port
//    (/user-app/<port>/): the listing names hello.py;
//  - screenshot ide.png; New folder pkg, New file util.py in it (typed,
//    saved), Rename to pkg/helpers.py, Delete pkg;
//  - Stop, Start (same page), opens hello.py again,
//    runs it again; screenshot restarted.png; main.py changed from the
//    terminal under the editor, then typed into: the save is refused, the
//    page says so and shows the file as it is now; Stop.
// Also: the page's makePatch on tricky pairs (non-ASCII, emoji, '%', empty
// sides), applied by the npm diff-match-patch package (tests/runner).
// Prints one JSON object on stdout; on a failure it has "error", a
// screenshot error.png is taken, and the exit code is 1.
//
// CHROMIUM_BIN: the browser (default /usr/bin/chromium; launch.mjs).
import { createRequire } from "node:module";
import { openPage, recordFailure } from "./launch.mjs";

const [devexd, user, replName, appPort, dir] = process.argv.slice(2);
if (!devexd || !user || !replName || !appPort || !dir) {
  console.error("usage: node drive_ide.mjs <devexd origin> <user> <repl name> <app port> <screenshot dir>");
  process.exit(2);
}
const DiffMatchPatch = createRequire(new URL("../runner/package.json", import.meta.url))("diff-match-patch");
const STEP_TIMEOUT = 15000;
const START_TIMEOUT = 60000;
const RUN_TIMEOUT = 30000;
const FIRST = 'print("hello from the IDE", 6*7)\n';
const SECOND = 'import sys\nprint("hello from the IDE", 6*9, "\u00e9t\u00e9 \u2603 \ud83d\ude00 100%")\nsys.exit(0)\n';
const out = { navigations: [], responses: [], console: [], screenshots: [], dialogs: [] };

let browser, page;
const shot = async (name) => {
  const path = dir + "/" + name;
  await page.screenshot({ path, fullPage: true, timeout: 5000 });
  out.screenshots.push({ path, text: await page.locator("body").innerText() });
};
try {
  ({ browser, page } = await openPage(out, STEP_TIMEOUT));
  page.on("response", (r) => {
    if (r.url().startsWith(devexd + "/")) {
      out.responses.push({ method: r.request().method(), path: r.url().slice(devexd.length), status: r.status() });
    }
  });
  // prompt() answers: the next name queued by the step that clicks
  const answers = [];
  page.on("dialog", (d) => { out.dialogs.push(d.message()); d.accept(answers.shift()); });
  const row = (state) => page.locator("#repls li").filter({ hasText: `${replName} (python) ${state}` });
  const term = page.locator("#term");
  const run = async (command, expect) => {
    await page.locator("#tin:enabled").waitFor();
    await page.locator("#tin").fill(command);
    await page.locator("#tin").press("Enter");
    await term.filter({ hasText: expect }).waitFor({ timeout: RUN_TIMEOUT });
  };

  out.step = "sign in";
  await page.goto(devexd + "/auth/dev/login");
  await page.locator('input[name="user"]').fill(user);
  await Promise.all([page.waitForURL(devexd + "/dashboard"), page.getByRole("button", { name: "Sign in" }).click()]);
  await page.locator("#who").filter({ hasText: "Signed in as" }).waitFor();

  out.step = "create and start a python REPL on the dashboard";
  await page.locator("#name").fill(replName);
  await page.locator("#template").selectOption("python");
  await page.getByRole("button", { name: "Create" }).click();
  await row("stopped").getByRole("button", { name: "Start" }).click();
  const ide = page.locator("#msg a.ide");
  await ide.waitFor({ timeout: START_TIMEOUT });
  out.ide_href = await ide.getAttribute("href");
  await Promise.all([page.waitForURL(devexd + out.ide_href), ide.click()]);

  out.step = "the IDE connects: tree and terminal";
  await page.locator("#state").filter({ hasText: /^connected$/ }).waitFor({ timeout: START_TIMEOUT });
  await page.locator("#tin:enabled").waitFor();
  await page.locator("#tree li").first().waitFor();
  out.title = await page.locator("#title").innerText();
  out.tree_first = await page.locator("#tree > li > span").allInnerTexts();

  out.step = "patches: the page's makePatch, applied by the npm package";
  const pairs = [["", "abc"], ["abc", ""], ["hello world", "hello brave new world"], ["a%b c\nd", "a%b  c\ne"],
    ["x\ud83d\ude00y", "x\ud83d\ude01y"], ["\u00e9t\u00e9 \u2603", "\u00e9t\u00e9 \u2603\u2603"], [FIRST, SECOND],
    ["aaaa".repeat(300) + "b" + "aaaa".repeat(300), "aaaa".repeat(300) + "c" + "aaaa".repeat(300)]];
  const patches = await page.evaluate((pairs) => pairs.map(([a, b]) => makePatch(a, b)), pairs);
  const dmp = new DiffMatchPatch();
  out.patch_checks = pairs.map(([a, b], i) => {
    const [text, applied] = dmp.patch_apply(dmp.patch_fromText(patches[i]), a);
    return { same: text === b, applied, patch: patches[i].length < 200 ? patches[i] : patches[i].length };
  });

  out.step = "a new file, typed into the editor and saved";
  answers.push("hello.py");
  await page.getByRole("button", { name: "New file" }).click();
  await page.locator("#tree span", { hasText: /^hello\.py$/ }).waitFor();
  await page.locator("#path").filter({ hasText: /^hello\.py$/ }).waitFor();
  await page.locator("#editor:enabled").waitFor();
  await page.locator("#editor").pressSequentially(FIRST);
  await page.locator("#editor").press("Control+s");
  await page.locator("#saved").filter({ hasText: /^saved$/ }).waitFor();
  out.step = "an edit in the middle, saved by itself";
  await page.locator("#editor").fill(SECOND);
  await page.locator("#saved").filter({ hasText: /^saved$/ }).waitFor();
  out.editor_after_save = await page.locator("#editor").inputValue();

  out.step = "run it in the terminal";
  await run("python3 hello.py", "hello from the IDE 54 \u00e9t\u00e9 \u2603 \ud83d\ude00 100%");
  await run("echo exit=$?", "exit=0");

  out.step = "the user's app: the template's program on APP_PORT";
  const frame = page.frameLocator("#app");
  const panel = async (want) => { // the server takes a moment to listen: open the panel again until it answers
    for (let i = 0; ; i++) {
      await page.getByRole("button", { name: "Open", exact: true }).click();
      await page.waitForTimeout(700);
      const text = await frame.locator("body").innerText({ timeout: 3000 }).catch(() => "");
      if (text.includes(want)) return { text, src: await page.locator("#app").getAttribute("src") };
      if (i === 20) throw new Error("the app panel never showed " + want + ": " + text);
    }
  };
  await run('echo "env: host=$HOST port=$PORT run=$RUN_COMMAND"', "env: host=");
  // what run() waited for is in the typed command too: wait for the output line itself
  for (let t0 = Date.now(); !out.term_env; await page.waitForTimeout(100)) {
    const m = (await term.innerText()).match(/^env: .*$/m);
    if (m) out.term_env = m[0];
    else if (Date.now() - t0 > RUN_TIMEOUT) throw new Error("no env: line in the terminal");
  }
  await page.getByRole("button", { name: "Run", exact: true }).click();
  await term.filter({ hasText: "listening on port" }).waitFor({ timeout: RUN_TIMEOUT });
  out.app_default = await panel("Hello from your Python REPL");
  await page.getByRole("button", { name: "^C", exact: true }).click();
  await term.filter({ hasText: "KeyboardInterrupt" }).waitFor({ timeout: RUN_TIMEOUT });
  out.step = "the user's app: another port";
  await run(`python3 -m http.server ${appPort} --bind 127.0.0.1 &`, `Serving HTTP on 127.0.0.1 port ${appPort}`);
  await page.locator("#appport").fill(appPort);
  out.app_port = await panel("hello.py");
  await shot("ide.png");

  out.step = "folders: New folder, a file in it, Rename, Delete";
  const top = () => page.locator("#tree > li > span").allInnerTexts();
  const item = (name) => page.locator("#tree span", { hasText: new RegExp("^" + name.replace(".", "\\.") + "$") });
  answers.push("pkg");
  await page.getByRole("button", { name: "New folder" }).click();
  await item("pkg").waitFor();
  await item("pkg").click(); // opens it (fetchDir) and selects it
  answers.push("util.py");
  await page.getByRole("button", { name: "New file" }).click();
  await page.locator("#path").filter({ hasText: /^pkg\/util\.py$/ }).waitFor();
  await page.locator("#editor:enabled").waitFor();
  await page.locator("#editor").pressSequentially("x = 1\n");
  await page.locator("#saved").filter({ hasText: /^saved$/ }).waitFor();
  out.folder_open = await page.locator("#tree li.dir.open").innerText();
  await item("util.py").click();
  answers.push("pkg/helpers.py");
  await page.getByRole("button", { name: "Rename" }).click();
  await item("helpers.py").waitFor();
  await page.locator("#path").filter({ hasText: /^pkg\/helpers\.py$/ }).waitFor();
  out.renamed = { tree: await page.locator("#tree li.dir.open").innerText(), path: await page.locator("#path").innerText() };
  await item("pkg").click(); // selects it (and closes it)
  await page.getByRole("button", { name: "Delete" }).click();
  await item("pkg").waitFor({ state: "detached" });
  await page.locator("#path").filter({ hasText: "(no file open)" }).waitFor();
  out.after_delete = await top();

  out.step = "stop and start again from the IDE page";
  await page.locator("#stop").click();
  await page.locator("#state").filter({ hasText: /^stopped$/ }).waitFor({ timeout: START_TIMEOUT });
  out.stopped_tree = await page.locator("#tree li").count();
  await page.locator("#start").click();
  await page.locator("#state").filter({ hasText: /^connected$/ }).waitFor({ timeout: START_TIMEOUT });
  await page.locator("#tree span", { hasText: /^hello\.py$/ }).click();
  out.tree_restarted = await page.locator("#tree > li > span").allInnerTexts();
  await page.locator("#editor:enabled").waitFor();
  await page.locator("#saved").filter({ hasText: /^saved$/ }).waitFor();
  out.editor_restarted = await page.locator("#editor").inputValue();
  await run("python3 hello.py; echo second=$?", "second=0");
  out.term_restarted = await term.innerText();
  await shot("restarted.png");

  out.step = "a save refused: the file changed under the editor";
  await page.locator("#tree span", { hasText: /^main\.py$/ }).click();
  await page.locator("#path").filter({ hasText: /^main\.py$/ }).waitFor();
  await page.locator("#editor:enabled").waitFor();
  await run("printf 'print(1)\\n' > main.py; echo changed=$?", "changed=0");
  await page.locator("#editor").press("Control+End");
  await page.locator("#editor").pressSequentially("# mine\n");
  await page.locator("#msg").filter({ hasText: /^not saved: / }).waitFor();
  await page.locator("#saved").filter({ hasText: /^saved$/ }).waitFor();
  out.refused = { msg: await page.locator("#msg").innerText(), editor: await page.locator("#editor").inputValue() };

  out.step = "stop";
  await page.locator("#stop").click();
  await page.locator("#state").filter({ hasText: /^stopped$/ }).waitFor({ timeout: START_TIMEOUT });
  out.msg = await page.locator("#msg").innerText();
  out.step = "done";
} catch (e) {
  await recordFailure(out, page, e);
  if (page) await shot("error.png").catch((e2) => { out.screenshot_error = String(e2); });
} finally {
  if (browser) await browser.close().catch(() => {});
}
process.stdout.write(JSON.stringify(out) + "\n");
