// The chat page in a real browser: Debian's chromium, headless, driven by playwright-core,
// against `smolbot serve --stub` on a free local port. Covers what handler tests cannot see:
// HTMX and the SSE extension swapping the streamed fragments, the Thinking block collapsing,
// Stop (Esc) mid-stream, markup from the user staying inert under the CSP, a failed send
// keeping the typed text, a dropped stream resuming by itself, the server dying mid-stream, a
// phone-sized screen, and the built-in calculator's result shown under its call; then the stored conversations: reload and server
// restart find them, rename and delete in the sidebar, regenerate, slash commands and their
// menu, and the light and dark themes.
//
// Needs `target/debug/smolbot` (or SMOLBOT_BIN) and /usr/bin/chromium (or CHROMIUM);
// screenshots go to target/screenshots/.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const BINARY = process.env.SMOLBOT_BIN || join(ROOT, "target", "debug", "smolbot");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SHOTS = join(ROOT, "target", "screenshots");
// Generous for a debug build on a loaded CI machine; the stub itself starts in well under 1 s.
const STARTUP_MS = 60_000;
const ANSWER_MS = 30_000;

/** A fresh data directory, removed when the tests end. */
const dataDirs = [];
function newDataDir() {
  const dir = mkdtempSync(join(tmpdir(), "smolbot-data-"));
  dataDirs.push(dir);
  return dir;
}

/**
 * Starts `smolbot serve --stub --port PORT` (a free one by default; with `args` after) keeping
 * conversations in `dataDir` and resolves with its URL once it listens.
 */
function startServer(tokensPerSecond, dataDir = newDataDir(), args = [], port = 0) {
  return new Promise((resolvePromise, reject) => {
    const command = ["serve", "--stub", "--port", String(port), "--host", "127.0.0.1", ...args];
    const child = spawn(BINARY, command, {
      env: {
        ...process.env,
        SMOLBOT_STUB_TOKENS_PER_SECOND: String(tokensPerSecond),
        SMOLBOT_DATA_DIR: dataDir,
        RUST_LOG: "info",
      },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let log = "";
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${log}`)), STARTUP_MS);
    child.on("error", reject);
    child.on("exit", (code) => reject(new Error(`server exited with ${code}:\n${log}`)));
    child.stderr.on("data", (chunk) => {
      log += chunk;
      const match = /on (http:\/\/127\.0\.0\.1:\d+)/.exec(log);
      if (match) {
        clearTimeout(timer);
        resolvePromise({ child, url: match[1] });
      }
    });
  });
}

let server;
let context;
let profile;

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  server = await startServer(40);
  profile = mkdtempSync(join(tmpdir(), "smolbot-chromium-"));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    viewport: { width: 1000, height: 800 },
  });
});

after(async () => {
  if (context) await context.close();
  if (server) server.child.kill();
  if (profile) rmSync(profile, { recursive: true, force: true });
  for (const dir of dataDirs) rmSync(dir, { recursive: true, force: true });
});

/**
 * A fresh tab on the chat page that fails the test on any script error or unexpected dialog;
 * `confirm` lists the confirmation dialogs the test expects, which are accepted.
 */
async function openPage(viewport, { confirm = [], url = server.url } = {}) {
  const page = await context.newPage();
  if (viewport) await page.setViewportSize(viewport);
  const problems = [];
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  page.on("dialog", (dialog) => {
    const expected = confirm.find((pattern) => pattern.test(dialog.message()));
    if (expected && dialog.type() === "confirm") {
      dialog.accept();
    } else {
      problems.push(`dialog: ${dialog.message()}`);
      dialog.dismiss();
    }
  });
  page.on("console", (msg) => {
    if (msg.type() === "error" && !/Failed to load resource/.test(msg.text())) {
      problems.push(`console: ${msg.text()}`);
    }
  });
  await page.goto(url + "/");
  await page.waitForFunction(() => window.htmx && document.querySelector("#composer"));
  return { page, problems };
}

async function send(page, text) {
  await page.fill("#message", text);
  await page.press("#message", "Enter");
}

test("a message streams, thinking collapses when the answer starts", async () => {
  const { page, problems } = await openPage();
  await send(page, "Hello there");
  await page.locator(".msg.user .bubble", { hasText: "Hello there" }).waitFor();
  assert.equal(await page.inputValue("#message"), "", "the box clears once the server took it");
  await page.locator("details.thinking[open] .reasoning span").first().waitFor();
  assert.equal(await page.locator(".msg.assistant.streaming").count(), 1);
  assert.ok(await page.locator("button.send").isDisabled(), "no second send while streaming");
  await page.screenshot({ path: join(SHOTS, "1-thinking.png") });

  const answer = page.locator(".msg.assistant .answer");
  await page.waitForFunction(() => document.querySelector(".answer").textContent.length > 0);
  assert.equal(await page.locator("details.thinking[open]").count(), 0, "collapsed once the answer starts");
  assert.match(await page.locator("details.thinking summary").textContent(), /Thought for/);
  const early = (await answer.textContent()).length;
  await page.waitForTimeout(400);
  const later = (await answer.textContent()).length;
  assert.ok(later > early, `the answer grows token by token (${early} → ${later})`);

  await page.locator(".meta .stats").waitFor({ timeout: ANSWER_MS });
  assert.match(await page.locator(".meta .stats").textContent(), /first token .* tokens\/s · \d+ tokens/);
  assert.equal(await answer.locator("table").count(), 1);
  assert.equal(await answer.locator(".code button.copy").count(), 1);
  assert.equal(await page.locator(".msg.assistant.streaming").count(), 0);
  assert.ok(await page.locator("button.send").isEnabled());
  await page.screenshot({ path: join(SHOTS, "2-answer.png"), fullPage: true });

  // Second turn in the same conversation, thinking off.
  await page.uncheck("input[name=thinking]");
  await send(page, "And once more");
  await page.locator(".meta .stats").nth(1).waitFor({ timeout: ANSWER_MS });
  assert.equal(await page.locator(".msg.assistant").nth(1).locator("details.thinking").count(), 0);
  assert.deepEqual(problems, []);
  await page.close();
});

test("Esc stops the answer on the server mid-stream", async () => {
  const { page, problems } = await openPage();
  await send(page, "Tell me something long");
  await page.locator(".reasoning span").first().waitFor();
  await page.keyboard.press("Escape");
  await page.locator(".meta .note", { hasText: "Stopped." }).waitFor({ timeout: 5_000 });
  assert.equal(await page.locator(".meta .stats").count(), 0);
  assert.equal(await page.locator(".answer table").count(), 0, "stopped before the answer's table");
  await page.waitForFunction(() => !document.querySelector("button.send").disabled);
  await page.screenshot({ path: join(SHOTS, "3-stopped.png") });
  // The server freed the conversation: the next message is accepted.
  await send(page, "Next question");
  await page.locator(".msg.user", { hasText: "Next question" }).waitFor();
  await page.locator(".meta .stats").waitFor({ timeout: ANSWER_MS });
  assert.deepEqual(problems, []);
  await page.close();
});

test("closing the tab does not stop the answer; reopening the chat streams it on", async () => {
  const { page } = await openPage();
  await send(page, "Tell me something long");
  await page.locator(".reasoning span").first().waitFor();
  await page.waitForURL(/\/c\/conv_\w+$/);
  const path = new URL(page.url()).pathname;
  await page.close();
  const reopened = await context.newPage();
  const problems = [];
  reopened.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  await reopened.goto(server.url + path);
  await reopened.waitForFunction(() => window.htmx);
  // Still being written: the answer streams in from its start, thinking and all.
  assert.equal(await reopened.locator(".msg.assistant.streaming").count(), 1);
  await reopened.locator(".meta .stats").waitFor({ timeout: ANSWER_MS });
  assert.ok((await reopened.locator(".reasoning").textContent()).length > 0, "reasoning replayed");
  assert.equal(await reopened.locator(".meta .note", { hasText: "Stopped." }).count(), 0);
  assert.equal(await reopened.locator(".answer table").count(), 1, "the whole answer");
  await reopened.reload();
  await reopened.locator(".meta .stats").waitFor();
  assert.equal(await reopened.locator(".msg.assistant.streaming").count(), 0, "stored, finished");
  assert.deepEqual(problems, []);
  await reopened.close();
});

test("markup in a message renders inert", async () => {
  const { page, problems } = await openPage();
  const payload = '<img src=x onerror="window.__xss=1"> <script>window.__xss=2</script> **bold**';
  await send(page, payload);
  await page.locator(".meta .stats").waitFor({ timeout: ANSWER_MS });
  assert.equal(await page.evaluate(() => window.__xss), undefined);
  assert.equal(await page.locator("#messages img, #messages script").count(), 0);
  assert.equal(await page.locator(".msg.user .bubble").textContent(), payload);
  await page.screenshot({ path: join(SHOTS, "4-xss.png") });
  assert.deepEqual(problems, []);
  await page.close();
});

test("tool calls show as cards, not XML", async () => {
  const { page, problems } = await openPage();
  await page.check("input[name=tools]");
  await send(page, "What is the weather in Lyon?");
  await page.locator(".tool-card").waitFor({ timeout: ANSWER_MS });
  assert.match(await page.locator(".tool-card .tool-name").textContent(), /get_weather/);
  assert.match(await page.locator(".tool-card .tool-args").textContent(), /"location": "Lyon"/);
  await page.locator(".meta .stats").waitFor({ timeout: ANSWER_MS });
  assert.doesNotMatch(await page.locator(".msg.assistant").textContent(), /tool_call/);
  assert.deepEqual(problems, []);
  await page.close();
});

test("built-in tools: the calculator runs and its result shows, live and after a reload", async () => {
  const { page, problems } = await openPage();
  const path = await chatWith(page, "Hello");
  await page.locator("details.settings-panel summary").click();
  await page.check("input[name=builtin_tools]");
  await page.click("#settings button[type=submit]");
  await page.locator("#settings .saved", { hasText: "Saved." }).waitFor();
  assert.ok(await page.isChecked("input[name=builtin_tools]"));
  await send(page, "What is 17 * (3+4)?");
  const result = page.locator(".msg.assistant .tool-output").last();
  await result.waitFor({ timeout: ANSWER_MS });
  assert.match(await result.textContent(), /calculator\s*→\s*119/);
  const answer = page.locator(".msg.assistant").last();
  await answer.locator(".meta .stats").waitFor({ timeout: ANSWER_MS });
  assert.match(await answer.locator(".answer").textContent(), /119/);
  assert.equal(await answer.locator("text=Not run").count(), 0);
  await page.screenshot({ path: join(SHOTS, "13-builtin-tools.png") });
  await page.goto(server.url + path);
  await page.waitForFunction(() => window.htmx);
  assert.match(await page.locator(".tool-output").last().textContent(), /calculator\s*→\s*119/);
  // Stored, the tool turn is two answers after its question; the question can still be edited.
  assert.ok(await page.locator(".msg.user").last().locator(".edit").isVisible(), "Edit after a tool turn");
  assert.deepEqual(problems, []);
  await page.close();
});

test("a failed send shows the error and keeps the typed text", async () => {
  const { page, problems } = await openPage();
  await page.route("**/chat/send", (route) =>
    route.fulfill({ status: 503, contentType: "text/plain", body: "the server is busy" }),
  );
  await send(page, "Please keep me");
  await page.locator("#error:not([hidden])").waitFor();
  assert.match(await page.locator("#error").textContent(), /503.*the server is busy/);
  assert.equal(await page.inputValue("#message"), "Please keep me");
  assert.deepEqual(problems, [], "a full queue is the page's own message, not an htmx error");
  await page.close();
});

test("phone-sized screen: no sideways scrolling, composer in view", async () => {
  const { page, problems } = await openPage({ width: 390, height: 844 });
  await send(page, "Hello from a phone");
  await page.locator(".meta .stats").waitFor({ timeout: ANSWER_MS });
  const widths = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
  assert.ok(widths[0] <= widths[1], `page is ${widths[0]} px wide in a ${widths[1]} px screen`);
  assert.ok(await page.locator("#message").isVisible());
  assert.ok(await page.locator("button.send").isVisible());
  await page.screenshot({ path: join(SHOTS, "5-phone.png") });
  assert.deepEqual(problems, []);
  await page.close();
});

test("the server dying mid-stream is reported and what streamed stays", async () => {
  const own = await startServer(20);
  const page = await context.newPage();
  try {
    await page.goto(own.url + "/");
    await page.waitForFunction(() => window.htmx);
    await send(page, "Hello");
    await page.locator(".reasoning span").first().waitFor();
    own.child.removeAllListeners("exit");
    own.child.kill("SIGKILL");
    // The browser first retries (5 tries, 1 s apart), then the page gives up.
    await page.locator(".progress .reconnecting").waitFor({ timeout: 5_000 });
    await page.locator("#error", { hasText: /connection to the server was lost/ }).waitFor({ timeout: 20_000 });
    // The badge's poll finds the server gone too: the badge says so, and the message about
    // the lost answer stays rather than giving way to a generic one.
    await page.locator("#status.offline", { hasText: "offline" }).waitFor({ timeout: 20_000 });
    assert.match(await page.locator("#error").textContent(), /connection to the server was lost/);
    assert.ok((await page.locator(".reasoning").textContent()).length > 0, "streamed text kept");
    assert.equal(await page.locator(".msg.assistant.streaming").count(), 0);
    await page.screenshot({ path: join(SHOTS, "6-server-gone.png") });
  } finally {
    own.child.kill("SIGKILL");
    await page.close();
  }
});

test("a dropped stream reconnects by itself: the answer ends whole, nothing repeated", async () => {
  const page = await context.newPage();
  // htmx logs each SSE error to the console, so only script errors count here.
  const problems = [];
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  // The first stream is cut after an answer update halfway through the answer's text (the
  // browser sees its body end); the browser's reconnect goes to the server untouched.
  let requests = 0;
  let cutAt = 0;
  await page.route("**/chat/stream/**", async (route) => {
    requests += 1;
    if (requests > 1) return route.continue();
    // `fetch` reads the whole body: the stub writes the answer to its end first.
    const response = await route.fetch();
    const blocks = (await response.text()).split("\n\n");
    const update = (block) => /^event: answer-(tail|settled)$/m.test(block) && /^id: ?\d+$/m.test(block);
    const answers = blocks.flatMap((block, i) => (update(block) ? [i] : []));
    const cut = answers[Math.floor(answers.length / 2)];
    cutAt = Number(/^id: ?(\d+)$/m.exec(blocks[cut])[1]);
    const body = blocks.slice(0, cut + 1).join("\n\n") + "\n\n";
    await route.fulfill({ response, body });
  });
  try {
    await page.goto(server.url + "/");
    await page.waitForFunction(() => window.htmx);
    // What the page's source saw: its opens and errors, and each message's Last-Event-ID.
    await page.evaluate(() => {
      window.sseLog = [];
      const log = (what) => (event) => window.sseLog.push([what, event.detail.lastEventId]);
      document.body.addEventListener("htmx:sseOpen", log("open"));
      document.body.addEventListener("htmx:sseError", log("error"));
      document.body.addEventListener("htmx:sseMessage", log("message"));
    });
    await send(page, "Hello there");
    await page.locator(".meta .stats").waitFor({ timeout: ANSWER_MS });
    assert.equal(requests, 2, "one reconnect");
    const sseLog = await page.evaluate(() => window.sseLog);
    const kinds = sseLog.filter(([what]) => what !== "message").map(([what]) => what);
    assert.deepEqual(kinds, ["open", "error", "open"]);
    // After the reconnect (sent with Last-Event-ID) only what came after the cut arrives.
    const reopened = sseLog.map(([what]) => what).lastIndexOf("open");
    const after = sseLog.slice(reopened + 1).map(([, id]) => Number(id));
    assert.ok(after.length > 0, "the rest arrived");
    assert.ok(after.every((id) => id >= cutAt), `nothing before ${cutAt} again: ${after}`);
    assert.equal(await page.locator("#error:not([hidden])").count(), 0, "no error shown");
    assert.equal(await page.locator(".progress .reconnecting").count(), 0);
    assert.equal(await page.locator(".msg.assistant").count(), 1);
    assert.equal(await page.locator(".msg.assistant.streaming").count(), 0);
    const answer = page.locator(".msg.assistant .answer");
    assert.equal(await answer.locator("table").count(), 1, "the whole answer, once");
    const live = await answer.innerText();
    // The stored answer, as a reload shows it, reads the same.
    await page.unroute("**/chat/stream/**");
    await page.reload();
    await page.locator(".meta .stats").waitFor();
    assert.equal(await page.locator(".msg.assistant .answer").innerText(), live);
    assert.deepEqual(problems, []);
  } finally {
    await page.close();
  }
});

/** Sends `text` in a new chat, waits for the whole answer, and returns the page's path. */
async function chatWith(page, text) {
  await send(page, text);
  await page.locator(".meta .stats").last().waitFor({ timeout: ANSWER_MS });
  await page.waitForURL(/\/c\/conv_\w+$/);
  return new URL(page.url()).pathname;
}

test("a reload finds the conversation in the sidebar with its messages", async () => {
  const { page, problems } = await openPage();
  const path = await chatWith(page, "Remember the otters");
  assert.equal(await page.inputValue("#conversation-id"), path.slice(3));
  await page.reload();
  await page.waitForFunction(() => window.htmx);
  const current = page.locator('#conversation-list a[aria-current="page"]');
  assert.equal(await current.textContent(), "Remember the otters");
  assert.equal(await current.getAttribute("href"), path);
  assert.equal(await page.locator(".msg.user .bubble").textContent(), "Remember the otters");
  assert.equal(await page.locator(".msg.assistant .answer table").count(), 1);
  assert.equal(await page.locator(".msg.assistant details.thinking:not([open])").count(), 1);
  assert.match(await page.locator("#context-meter").textContent(), /[1-9][\d,]* \/ 65,536 tokens/);
  // A follow-up goes to the same conversation.
  await send(page, "And the beavers?");
  await page.locator(".meta .stats").nth(1).waitFor({ timeout: ANSWER_MS });
  assert.equal(new URL(page.url()).pathname, path);
  await page.screenshot({ path: join(SHOTS, "7-reloaded.png") });
  assert.deepEqual(problems, []);
  await page.close();
});

test("a restarted server keeps the conversation", async () => {
  const dir = newDataDir();
  const first = await startServer(200, dir);
  let path;
  try {
    const { page, problems } = await openPage(undefined, { url: first.url });
    path = await chatWith(page, "Survive a restart");
    assert.deepEqual(problems, []);
    await page.close();
  } finally {
    first.child.removeAllListeners("exit");
    first.child.kill();
  }
  const second = await startServer(200, dir);
  try {
    const { page, problems } = await openPage(undefined, { url: second.url });
    await page.locator("#conversation-list a", { hasText: "Survive a restart" }).click();
    await page.waitForURL(second.url + path);
    assert.equal(await page.locator(".msg.user .bubble").textContent(), "Survive a restart");
    assert.equal(await page.locator(".msg.assistant .answer table").count(), 1);
    assert.deepEqual(problems, []);
    await page.close();
  } finally {
    second.child.removeAllListeners("exit");
    second.child.kill();
  }
});

test("rename and delete in the sidebar", async () => {
  const { page, problems } = await openPage(undefined, { confirm: [/^Delete “Delete this one”\?/] });
  await chatWith(page, "Delete this one");
  await page.goto(server.url + "/");
  const path = await chatWith(page, "Rename this one");
  const item = page.locator("#conversation-list li", { hasText: "Rename this one" });
  await item.getByRole("button", { name: /^Rename/ }).click();
  const title = page.locator("#conversation-list input[name=title]");
  await title.fill("Otters <3");
  await title.press("Enter");
  await page.locator('#conversation-list a[aria-current="page"]', { hasText: "Otters <3" }).waitFor();
  await page.screenshot({ path: join(SHOTS, "8-renamed.png") });

  const doomed = page.locator("#conversation-list li", { hasText: "Delete this one" });
  await doomed.getByRole("button", { name: /^Delete/ }).click();
  await doomed.waitFor({ state: "detached" });
  await page.reload();
  await page.waitForFunction(() => window.htmx);
  assert.equal(await page.locator("#conversation-list li", { hasText: "Delete this one" }).count(), 0);
  assert.equal(await page.locator('#conversation-list a[aria-current="page"]').textContent(), "Otters <3");
  // Searching by message text finds the renamed conversation.
  await page.fill("#search", "rename THIS");
  await page.waitForFunction(() => document.querySelectorAll("#conversation-list a").length === 1);
  assert.equal(await page.locator("#conversation-list a").getAttribute("href"), path);
  assert.deepEqual(problems, []);
  await page.close();
});

test("regenerate replaces the last answer", async () => {
  const { page, problems } = await openPage();
  await chatWith(page, "Hello again");
  assert.equal(await page.locator(".msg.assistant .regen").count(), 1);
  await page.locator(".msg.assistant .regen").click();
  await page.locator(".msg.assistant.streaming").waitFor();
  await page.locator(".meta .stats").waitFor({ timeout: ANSWER_MS });
  assert.equal(await page.locator(".msg.assistant").count(), 1);
  assert.equal(await page.locator(".msg.user").count(), 1);
  await page.reload();
  await page.waitForFunction(() => window.htmx);
  assert.equal(await page.locator(".msg.assistant").count(), 1);
  assert.deepEqual(problems, []);
  await page.close();
});

test("edit the last question and send it again; copy a message", async () => {
  const { page, problems } = await openPage();
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: server.url });
  const path = await chatWith(page, "Waht is NoPE?");
  await page.locator(".msg.user .edit").click();
  const box = page.locator("form.editing textarea");
  assert.equal(await box.inputValue(), "Waht is NoPE?");
  await box.fill("What is NoPE?");
  await page.locator("form.editing button[type=submit]").click();
  await page.locator(".msg.assistant.streaming").waitFor();
  await page.locator(".meta .stats").waitFor({ timeout: ANSWER_MS });
  assert.equal(await page.locator(".msg.user .bubble").textContent(), "What is NoPE?");
  assert.equal(await page.locator(".msg.user").count(), 1);
  assert.equal(await page.locator(".msg.assistant").count(), 1);
  assert.equal(new URL(page.url()).pathname, path);

  await page.locator(".msg.user .copy-msg").click();
  await page.locator(".msg.user .copy-msg", { hasText: "Copied" }).waitFor();
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), "What is NoPE?");
  await page.locator(".msg.assistant .copy-msg").click();
  await page.locator(".msg.assistant .copy-msg", { hasText: "Copied" }).waitFor();
  const copiedAnswer = await page.evaluate(() => navigator.clipboard.readText());
  assert.match(copiedAnswer, /What is NoPE\?/);
  assert.match(copiedAnswer, /fn main\(\)/, "the code block is copied");
  assert.doesNotMatch(copiedAnswer, /Copy/, "but not its Copy button's label");
  assert.ok(await page.locator(".msg.assistant .code button.copy").isVisible(), "the button is back");
  await page.reload();
  await page.waitForFunction(() => window.htmx);
  assert.equal(await page.locator(".msg.user .bubble").textContent(), "What is NoPE?");
  assert.deepEqual(problems, []);
  await page.close();
});

test("slash commands: the menu, /help, and /no_think removing the thinking block", async () => {
  const { page, problems } = await openPage();
  await page.locator("#message").pressSequentially("/");
  await page.locator("#slash-menu:not([hidden])").waitFor();
  assert.ok((await page.locator("#slash-menu li:not([hidden])").count()) >= 9);
  await page.locator("#message").pressSequentially("he");
  assert.equal(await page.locator("#slash-menu li:not([hidden])").count(), 1);
  await page.screenshot({ path: join(SHOTS, "9-slash-menu.png") });
  await page.press("#message", "Enter");
  assert.equal(await page.inputValue("#message"), "/help", "Enter completes the command");
  await page.press("#message", "Enter");
  await page.locator(".notice li", { hasText: "/no_think" }).waitFor();
  assert.equal(await page.inputValue("#message"), "");

  await send(page, "/no_think");
  await page.locator(".notice", { hasText: "Thinking is off." }).waitFor();
  assert.equal(await page.isChecked("#thinking"), false, "the box follows the command");
  await send(page, "No thoughts please");
  await page.locator(".meta .stats").waitFor({ timeout: ANSWER_MS });
  assert.equal(await page.locator(".msg.assistant details.thinking").count(), 0);
  await page.reload();
  await page.waitForFunction(() => window.htmx);
  assert.equal(await page.isChecked("#thinking"), false, "stored with the conversation");
  assert.deepEqual(problems, []);
  await page.close();
});

test("light and dark themes, switched and remembered", async () => {
  const { page, problems } = await openPage();
  await chatWith(page, "Show me both themes");
  const theme = () => page.evaluate(() => document.documentElement.dataset.theme || "system");
  const background = () => page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  assert.equal(await theme(), "system");
  await page.click("#theme-toggle");
  assert.equal(await theme(), "light");
  const light = await background();
  await page.locator("details.settings-panel summary").click();
  await page.screenshot({ path: join(SHOTS, "10-light.png"), fullPage: true });
  await page.click("#theme-toggle");
  assert.equal(await theme(), "dark");
  assert.notEqual(await background(), light);
  await page.screenshot({ path: join(SHOTS, "11-dark.png"), fullPage: true });
  await page.reload();
  await page.waitForFunction(() => window.htmx);
  assert.equal(await theme(), "dark", "the choice is kept in localStorage");
  await page.setViewportSize({ width: 390, height: 844 });
  await page.click("#sidebar-toggle");
  await page.waitForFunction(() => document.body.classList.contains("sidebar-open"));
  assert.ok(await page.locator("#conversation-list").isVisible());
  // The sidebar slides in; the screenshot waits until it is in place.
  await page.waitForFunction(() => getComputedStyle(document.getElementById("sidebar")).transform === "none");
  await page.screenshot({ path: join(SHOTS, "12-phone-dark-sidebar.png") });
  await page.mouse.click(330, 20); // beside the sidebar, on the header
  await page.waitForFunction(() => !document.body.classList.contains("sidebar-open"));
  assert.equal(await page.getAttribute("#sidebar-toggle", "aria-expanded"), "false");
  await page.click("#theme-toggle");
  assert.equal(await theme(), "system");
  assert.deepEqual(problems, []);
  await page.close();
});

test("with --api-key the page logs in with the key, works, and logs out", async () => {
  const keyed = await startServer(0, newDataDir(), ["--api-key", "open-sesame"]);
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  try {
    await page.goto(keyed.url + "/");
    await page.waitForURL(/\/login/);
    await page.fill("#key", "not the key");
    await page.click("form.login button[type=submit]");
    await page.locator("#login-error").waitFor();
    await page.fill("#key", "open-sesame");
    await page.click("form.login button[type=submit]");
    await page.waitForFunction(() => window.htmx && document.querySelector("#composer"));
    await send(page, "Hello there");
    await page.locator(".meta .stats").waitFor({ timeout: ANSWER_MS });
    assert.equal(await page.locator(".msg.assistant .answer table").count(), 1);
    await page.click("#logout");
    await page.waitForURL(/\/login$/);
    // The session is over: the page asks for the key again.
    await page.goto(keyed.url + "/");
    await page.waitForURL(/\/login/);
    assert.equal(await page.locator("#key").count(), 1);
    assert.deepEqual(problems, []);
  } finally {
    await page.close();
    keyed.child.kill();
  }
});

test("opening a conversation lands at its latest message", async () => {
  // Answers at full speed: only the length of the conversation matters here.
  const own = await startServer(0);
  const { page, problems } = await openPage({ width: 1000, height: 600 }, { url: own.url });
  const path = await chatWith(page, "The first of three questions");
  for (const [i, text] of ["The second question", "The third question"].entries()) {
    await send(page, text);
    await page.locator(".meta .stats").nth(i + 1).waitFor({ timeout: ANSWER_MS });
  }
  await page.goto(own.url + path);
  await page.waitForFunction(() => window.htmx && document.readyState === "complete");
  const [top, height, client] = await page.evaluate(() => {
    const messages = document.getElementById("messages");
    return [messages.scrollTop, messages.scrollHeight, messages.clientHeight];
  });
  assert.ok(height > 2 * client, `a long conversation (${height} px in ${client} px)`);
  assert.ok(height - top - client <= 2, `scrolled to the end: ${top} + ${client} of ${height} px`);
  await page.screenshot({ path: join(SHOTS, "14-opened-at-the-end.png") });
  assert.deepEqual(problems, []);
  await page.close();
  own.child.removeAllListeners("exit");
  own.child.kill();
});

test("no Edit while an answer is written; a refused edit's message goes when it ends", async () => {
  const { page, problems } = await openPage();
  await chatWith(page, "The question to edit");
  assert.ok(await page.locator(".msg.user .edit").isVisible(), "the last question can be edited");
  // An edit form opened before the next question was sent...
  await page.locator(".msg.user .edit").click();
  await page.locator("form.editing textarea").fill("Edited too late");
  await send(page, "The next question");
  await page.locator(".msg.assistant.streaming").waitFor();
  assert.equal(await page.locator(".msg.user .edit:visible").count(), 0, "no Edit while answering");
  // ...is refused while the answer is written (409), and says so...
  await page.locator("form.editing button[type=submit]").click();
  await page.locator("#error:not([hidden])", { hasText: "(409)" }).waitFor();
  assert.match(await page.locator("#error").textContent(), /still being written/);
  // ...until the answer ends: then the message is out of date and goes.
  await page.locator(".msg.assistant .meta .stats").last().waitFor({ timeout: ANSWER_MS });
  await page.locator("#error").waitFor({ state: "hidden" });
  assert.ok(await page.locator(".msg.user").last().locator(".edit").isVisible(), "Edit is back");
  assert.deepEqual(problems, []);
  await page.close();
});

test("refused sends are the page's own messages, not console errors", async () => {
  const { page, problems } = await openPage();
  await page.fill("#message", "/nonsense");
  await page.press("#message", "Enter");
  await page.locator("#error:not([hidden])", { hasText: "unknown command `/nonsense`" }).waitFor();
  assert.match(await page.locator("#error").textContent(), /^The message was not sent \(400\)/);
  assert.equal(await page.inputValue("#message"), "/nonsense", "the typed text stays");
  await page.fill("#message", "x".repeat(300 * 1024));
  await page.press("#message", "Enter");
  await page.locator("#error", { hasText: "the page accepts at most 262144" }).waitFor();
  assert.equal((await page.inputValue("#message")).length, 300 * 1024);
  // A good message afterwards clears the error and goes through.
  await send(page, "Fine now");
  await page.locator(".meta .stats").waitFor({ timeout: ANSWER_MS });
  assert.ok(await page.locator("#error").isHidden());
  assert.deepEqual(problems, []);
  await page.close();
});

test("an answer cut off by max tokens says so, live and after a reload", async () => {
  const { page, problems } = await openPage();
  await page.locator("details.settings-panel summary").click();
  await page.fill("input[name=max_tokens]", "8");
  await page.click("#settings button[type=submit]");
  await page.locator("#settings .saved", { hasText: "Saved." }).waitFor();
  await page.locator("details.settings-panel summary").click();
  // Thinking on: the 8 tokens are all reasoning, and the page says there is no answer.
  await send(page, "Tell me everything about otters");
  const first = page.locator(".msg.assistant").first();
  const onlyThinking = "Cut off: the token limit was reached. It was still thinking: there is no answer.";
  await first.locator(".meta .note.length").waitFor({ timeout: ANSWER_MS });
  assert.equal(await first.locator(".meta .note").textContent(), onlyThinking);
  assert.equal((await first.locator(".answer").textContent()).trim(), "");
  // Thinking off: a cut answer.
  await page.uncheck("input[name=thinking]");
  await send(page, "And about beavers");
  const second = page.locator(".msg.assistant").nth(1);
  await second.locator(".meta .note.length").waitFor({ timeout: ANSWER_MS });
  assert.equal(await second.locator(".meta .note").textContent(), "Cut off: the token limit was reached.");
  assert.ok((await second.locator(".answer").textContent()).trim().length > 0);
  await page.screenshot({ path: join(SHOTS, "15-cut-off.png") });
  await page.reload();
  await page.waitForFunction(() => window.htmx);
  const notes = await page.locator(".msg.assistant .meta .note.length").allTextContents();
  assert.deepEqual(notes, [onlyThinking, "Cut off: the token limit was reached."], "the same after a reload");
  assert.deepEqual(problems, []);
  await page.close();
});

test("a server that comes back: the badge said offline, and the message goes", async () => {
  const dir = newDataDir();
  const first = await startServer(200, dir);
  const port = Number(new URL(first.url).port);
  const page = await context.newPage();
  // The browser logs the refused connections (and htmx its send errors): only script errors count.
  const problems = [];
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  let second;
  try {
    await page.goto(first.url + "/");
    await page.waitForFunction(() => window.htmx);
    first.child.removeAllListeners("exit");
    const gone = new Promise((resolvePromise) => first.child.once("exit", resolvePromise));
    first.child.kill("SIGKILL");
    await gone;
    await page.locator("#status.offline", { hasText: "offline" }).waitFor({ timeout: 20_000 });
    await page.locator("#error:not([hidden])", { hasText: "cannot be reached" }).waitFor();
    await page.screenshot({ path: join(SHOTS, "16-offline.png") });
    second = await startServer(200, dir, [], port);
    // The next poll reaches it: the badge is the server's again and the message is gone.
    await page.locator("#status.stub").waitFor({ timeout: 20_000 });
    await page.locator("#error").waitFor({ state: "hidden" });
    await send(page, "Back again");
    await page.locator(".meta .stats").waitFor({ timeout: ANSWER_MS });
    assert.deepEqual(problems, []);
  } finally {
    first.child.kill("SIGKILL");
    if (second) {
      second.child.removeAllListeners("exit");
      second.child.kill();
    }
    await page.close();
  }
});

/** The number the context meter shows. */
async function meterValue(page) {
  const text = await page.locator("#context-meter").textContent();
  const match = /([\d,]+) \/ [\d,]+ tokens/.exec(text);
  assert.ok(match, `a number in the meter: ${text}`);
  return Number(match[1].replaceAll(",", ""));
}

/** Sends `text` and waits for its answer's last line (one more stats line than before). */
async function sendAndWait(page, text) {
  const before = await page.locator(".meta .stats").count();
  await send(page, text);
  await page.waitForFunction(
    (n) => document.querySelectorAll(".meta .stats").length > n,
    before,
    { timeout: ANSWER_MS },
  );
}

async function saveSettings(page, change) {
  await page.locator("details.settings-panel summary").click();
  await change();
  await page.click("#settings button[type=submit]");
  await page.locator("#settings .saved", { hasText: "Saved." }).waitFor();
  await page.locator("details.settings-panel summary").click();
}

test("a full context: the page offers to drop the oldest messages, and marks the cut", async () => {
  const small = await startServer(0, newDataDir(), ["--ctx-size", "500"]);
  try {
    const { page, problems } = await openPage(null, { url: small.url });
    await saveSettings(page, () => page.fill("input[name=max_tokens]", "20"));
    await page.uncheck("input[name=thinking]");
    const question = (n) => `question ${n} ` + "a ".repeat(110).trim();
    for (const n of [0, 1]) await sendAndWait(page, question(n));
    await send(page, question(2));
    const offer = page.locator(".notice.context-full");
    await offer.waitFor({ timeout: ANSWER_MS });
    assert.match(await offer.textContent(), /the context holds 500/);
    assert.ok(await offer.locator("button.new-chat-with").isVisible(), "continue in a new chat");
    await page.screenshot({ path: join(SHOTS, "17-context-full.png") });
    await offer.locator("button.drop-oldest").click();
    const cut = page.locator(".notice.cut");
    await cut.waitFor({ timeout: ANSWER_MS });
    assert.match(await cut.textContent(), /Earlier messages are not sent to the model/);
    await page.locator(".meta .stats").nth(2).waitFor({ timeout: ANSWER_MS });
    assert.equal(await page.locator(".msg.user").count(), 3);
    await page.screenshot({ path: join(SHOTS, "18-oldest-dropped.png"), fullPage: true });
    await page.reload();
    await page.waitForFunction(() => window.htmx);
    await cut.waitFor();
    assert.ok(await page.isChecked("input[name=drop_oldest]"), "the setting is on");
    assert.ok((await meterValue(page)) < 500, "the meter shows what is sent");
    // The other way on: a new chat with the message in the composer.
    await send(page, "a ".repeat(420).trim());
    await page.locator("#error:not([hidden])").waitFor({ timeout: ANSWER_MS });
    await page.goto(small.url + "/?draft=" + encodeURIComponent("carried over"));
    await page.waitForFunction(() => window.htmx);
    assert.equal(await page.inputValue("#message"), "carried over");
    assert.deepEqual(problems, []);
    await page.close();
  } finally {
    small.child.removeAllListeners("exit");
    small.child.kill();
  }
});

test("with built-in tools the meter is the server's count of the next prompt", async () => {
  const { page, problems } = await openPage();
  await page.uncheck("input[name=thinking]");
  await sendAndWait(page, "Hi");
  await saveSettings(page, () => page.check("input[name=builtin_tools]"));
  await sendAndWait(page, "What is 17 * (3+4)?");
  assert.match(await page.locator(".tool-output").last().textContent(), /119/);
  const meter = await meterValue(page);
  // The next message's prompt is this one and the user turn that the message adds.
  await sendAndWait(page, "Hello");
  const id = await page.inputValue("#conversation-id");
  const { prompt, turn } = await page.evaluate(async (id) => {
    const post = (path, body) =>
      fetch(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    const stored = await (await fetch(`/api/conversations/${id}/messages`)).json();
    const last = stored.data[stored.data.length - 1];
    const ids = await (await post("/tokenize", { content: "<|im_start|>user\nHello<|im_end|>\n", parse_special: true })).json();
    return { prompt: last.stats.prompt_tokens, turn: ids.tokens.length };
  }, id);
  assert.equal(meter + turn, prompt, `meter ${meter} + the new turn ${turn} = the prompt sent, ${prompt}`);
  assert.deepEqual(problems, []);
  await page.close();
});

test("Continue after max tokens extends the same message, live and after a reload", async () => {
  const { page, problems } = await openPage();
  await saveSettings(page, () => page.fill("input[name=max_tokens]", "8"));
  await page.uncheck("input[name=thinking]");
  await send(page, "Tell me about otters");
  const answer = page.locator(".msg.assistant");
  await answer.locator(".meta .note.length").waitFor({ timeout: ANSWER_MS });
  const normal = (text) => text.replace(/\s+/g, " ").trim();
  const before = normal(await answer.locator(".answer").textContent());
  assert.ok(before.length > 0);
  await answer.locator("button.continue").click();
  await page.waitForFunction(
    (n) => {
      const a = document.querySelector(".msg.assistant");
      return a && !a.classList.contains("streaming") && a.querySelector(".meta .stats") &&
        a.querySelector(".answer").textContent.replace(/\s+/g, " ").trim().length > n;
    },
    before.length,
    { timeout: ANSWER_MS },
  );
  assert.equal(await page.locator(".msg.assistant").count(), 1, "the same message");
  const after = normal(await page.locator(".msg.assistant .answer").textContent());
  assert.ok(after.length > before.length && after.startsWith(before), `${before} → ${after}`);
  await page.reload();
  await page.waitForFunction(() => window.htmx);
  assert.equal(await page.locator(".msg.assistant").count(), 1);
  assert.equal(normal(await page.locator(".msg.assistant .answer").textContent()), after);
  assert.equal(await page.locator(".msg.assistant button.continue").count(), 1, "still cut off: Continue again");
  await page.screenshot({ path: join(SHOTS, "19-continued.png") });
  assert.deepEqual(problems, []);
  await page.close();
});
