// The chat page in a real browser: Debian's chromium, headless, driven by playwright-core,
// against `smolbot serve --stub` on a free local port. Covers what handler tests cannot see:
// HTMX and the SSE extension swapping the streamed fragments, the Thinking block collapsing,
// Stop (Esc) mid-stream, markup from the user staying inert under the CSP, a failed send
// keeping the typed text, a dropped stream resuming by itself, the server dying mid-stream, a
// phone-sized screen, and the built-in calculator's result shown under its call; then the stored conversations: reload and server
// restart find them, rename and delete in the sidebar, regenerate, slash commands and their
// menu, and the light and dark themes; code blocks (highlighted, labelled, copied alone),
// math typeset by KaTeX under the CSP, and Copy as Markdown; the composer (focus, a box that
// grows, Send that is Stop, "jump to latest"), the edit form's keys, the settings drawer and
// /clear's question.
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
 * `confirm` lists the confirmation dialogs the test expects, which are accepted, and
 * `dismiss` those it expects and turns down (the lists are read at each dialog).
 */
async function openPage(viewport, { confirm = [], dismiss = [], url = server.url } = {}) {
  const page = await context.newPage();
  if (viewport) await page.setViewportSize(viewport);
  const problems = [];
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  page.on("dialog", (dialog) => {
    const expected = confirm.find((pattern) => pattern.test(dialog.message()));
    const refused = dismiss.find((pattern) => pattern.test(dialog.message()));
    if (expected && dialog.type() === "confirm") {
      dialog.accept();
    } else if (refused && dialog.type() === "confirm") {
      dialog.dismiss();
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
  assert.equal(await page.locator("button.send").textContent(), "Stop", "Send is Stop while streaming");
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
  assert.equal(await page.locator("button.send").textContent(), "Send");
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

test("built-in tools: the calculator runs and its result shows, live and after a reload", async () => {
  const { page, problems } = await openPage();
  // One tools switch, in the settings; the composer has none of its own.
  assert.equal(await page.locator("#composer input[name=tools]").count(), 0);
  const path = await chatWith(page, "Hello");
  await page.click("#settings-open");
  await page.check("input[name=builtin_tools]");
  await page.click("#settings button[type=submit]");
  await page.locator("#settings .saved", { hasText: "Saved." }).waitFor();
  assert.ok(await page.isChecked("input[name=builtin_tools]"));
  await page.click("#settings-close");
  await send(page, "What is 17 * (3+4)?");
  // The call shows as a card, not as the model's XML.
  const card = page.locator(".msg.assistant .tool-card").last();
  await card.waitFor({ timeout: ANSWER_MS });
  assert.match(await card.locator(".tool-name").textContent(), /calculator/);
  assert.match(await card.locator(".tool-args").textContent(), /"expression"/);
  const result = page.locator(".msg.assistant .tool-output").last();
  await result.waitFor({ timeout: ANSWER_MS });
  assert.match(await result.textContent(), /calculator\s*→\s*119/);
  const answer = page.locator(".msg.assistant").last();
  await answer.locator(".meta .stats").waitFor({ timeout: ANSWER_MS });
  assert.match(await answer.locator(".answer").textContent(), /119/);
  assert.doesNotMatch(await page.locator("#messages").textContent(), /tool_call/);
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

/** The Thinking summaries and stats lines of the page's answers, in order. */
async function shownNumbers(page) {
  return {
    thinking: await page.locator(".msg.assistant details.thinking summary").allTextContents(),
    stats: await page.locator(".msg.assistant .meta .stats").allTextContents(),
  };
}

test("a reload shows the same thinking and stats as the live page, a tool turn included", async () => {
  const { page, problems } = await openPage();
  const path = await chatWith(page, "Numbers that stay");
  await saveSettings(page, () => page.check("input[name=builtin_tools]"));
  await send(page, "What is 17 * (3+4)?");
  await page.locator(".msg.assistant .meta .stats").nth(1).waitFor({ timeout: ANSWER_MS });
  const live = await shownNumbers(page);
  assert.equal(live.thinking.length, 3, `one block per round: ${JSON.stringify(live)}`);
  assert.ok(live.thinking.every((t) => /^Thought for \d+\.\d s · \d+ tokens?$/.test(t)), JSON.stringify(live));
  assert.equal(live.stats.length, 2, "one line per answer");
  assert.ok(live.stats.every((s) => /^first token /.test(s)), JSON.stringify(live));
  await page.goto(server.url + path);
  await page.waitForFunction(() => window.htmx);
  assert.deepEqual(await shownNumbers(page), live);
  assert.equal(await page.locator(".msg.assistant").count(), 2, "the tool turn is one answer");
  assert.deepEqual(problems, []);
  await page.close();
});

test("regenerate keeps the earlier answers as versions, switched with ‹ ›, after a reload too", async () => {
  const { page, problems } = await openPage();
  const path = await chatWith(page, "Versions please");
  const answer = page.locator(".msg.assistant").last();
  const count = answer.locator(".versions .version-count");
  assert.match(await answer.locator(".answer").textContent(), /Thinking\s*on/);
  assert.equal(await page.locator(".versions").count(), 0, "one version: no switcher");
  const regenerate = async (command, notice) => {
    await send(page, command);
    await page.locator(".notice", { hasText: notice }).waitFor();
    // The notice follows the answer, whose Regenerate only the last message shows.
    await page.goto(server.url + path);
    await page.waitForFunction(() => window.htmx);
    await page.locator(".msg.assistant .regen").click();
    await page.locator(".msg.assistant.streaming").waitFor();
    await page.locator(".msg.assistant .meta .stats").waitFor({ timeout: ANSWER_MS });
  };
  await regenerate("/no_think", "Thinking is off.");
  assert.equal(await count.textContent(), "2/2");
  await regenerate("/think", "Thinking is on.");
  assert.equal(await count.textContent(), "3/3");
  assert.equal(await page.locator(".msg.assistant").count(), 1);
  await answer.locator(".version-prev").click();
  await page.waitForFunction(() => document.querySelector(".version-count")?.textContent === "2/3");
  assert.match(await answer.locator(".answer").textContent(), /Thinking\s*off/, "the earlier answer");
  assert.equal(await answer.locator("details.thinking").count(), 0);
  await page.goto(server.url + path);
  await page.waitForFunction(() => window.htmx);
  assert.equal(await count.textContent(), "2/3", "the choice is stored");
  assert.match(await answer.locator(".answer").textContent(), /Thinking\s*off/);
  await answer.locator(".version-next").click();
  await page.waitForFunction(() => document.querySelector(".version-count")?.textContent === "3/3");
  assert.match(await answer.locator(".answer").textContent(), /Thinking\s*on/);
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
  await page.click("#settings-open");
  await page.screenshot({ path: join(SHOTS, "10-light.png"), fullPage: true });
  await page.keyboard.press("Escape");
  await page.locator("#settings-dialog").waitFor({ state: "hidden" });
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
  // The form still open was opened on an older question: saved now, it is refused with a
  // clear message instead of replacing the newest question.
  await page.locator("form.editing button[type=submit]").click();
  await page.locator("#error:not([hidden])", { hasText: "(409)" }).waitFor();
  assert.match(await page.locator("#error").textContent(), /no longer the last one/);
  await page.reload();
  await page.waitForFunction(() => window.htmx);
  assert.deepEqual(await page.locator(".msg.user .bubble").allTextContents(), ["The question to edit", "The next question"]);
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
  await page.click("#settings-open");
  await page.fill("input[name=max_tokens]", "8");
  await page.click("#settings button[type=submit]");
  await page.locator("#settings .saved", { hasText: "Saved." }).waitFor();
  await page.click("#settings-close");
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

/** Rejected responses (a missing font, a script) and CSP violations, from now on in `page`. */
async function watchLoads(page) {
  const failed = [];
  page.on("response", (response) => {
    if (response.status() >= 400) failed.push(`${response.status()} ${response.url()}`);
  });
  await page.addInitScript(() => {
    window.cspViolations = [];
    document.addEventListener("securitypolicyviolation", (e) => {
      window.cspViolations.push(`${e.violatedDirective}: ${e.blockedURI || e.sample}`);
    });
  });
  return failed;
}

test("code blocks: the language, highlighting in both themes, Copy copies the code alone", async () => {
  const { page, problems } = await openPage();
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: server.url });
  await chatWith(page, "Show me some code");
  const code = 'fn main() {\n    println!("Hello from smolbot-stub!");\n}';
  const check = async () => {
    const block = page.locator(".msg.assistant .answer .code");
    assert.equal(await block.count(), 1);
    assert.equal(await block.locator(".code-head .code-lang").textContent(), "rust");
    assert.ok((await block.locator("pre span.hl-rust").count()) > 0, "highlighted spans");
    const coloured = await block.locator("pre").evaluate((pre) => {
      const plain = getComputedStyle(pre).color;
      return [...pre.querySelectorAll("span")].filter((s) => getComputedStyle(s).color !== plain).length;
    });
    assert.ok(coloured > 0, "some of the code has its own colour");
    await block.locator("button.copy").click();
    await block.locator("button.copy", { hasText: "Copied" }).waitFor();
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), code);
  };
  await check();
  await page.reload();
  await page.waitForFunction(() => window.htmx);
  await check();
  // The theme button goes system → light → dark → system; strings are coloured in each.
  const stringColour = () => page.locator(".answer pre .hl-string").first().evaluate((s) => getComputedStyle(s).color);
  await page.click("#theme-toggle");
  const light = await stringColour();
  await page.click("#theme-toggle");
  const dark = await stringColour();
  await page.screenshot({ path: join(SHOTS, "17-code-dark.png") });
  await page.click("#theme-toggle");
  assert.notEqual(light, dark, "the dark theme has its own colours");
  assert.deepEqual(problems, []);
  await page.close();
});

test("math renders with KaTeX under the CSP; prices stay text", async () => {
  const { page, problems } = await openPage();
  const failed = await watchLoads(page);
  await page.reload();
  await page.waitForFunction(() => window.htmx);
  await chatWith(page, String.raw`Echo: The area is $$\int_0^1 x\,dx$$ and it costs $5 and $10; also $a^2+b^2=c^2$.`);
  const check = async () => {
    const answer = page.locator(".msg.assistant .answer");
    const display = answer.locator(".math-display .katex-display .katex-html");
    await display.waitFor();
    assert.ok((await display.boundingBox()).height > 20, "the display formula has height");
    assert.ok((await answer.locator(".math-inline .katex-html").boundingBox()).height > 5);
    assert.equal(await answer.locator(".math-display annotation").textContent(), String.raw`\int_0^1 x\,dx`);
    assert.equal(await answer.locator(".math").count(), 2, "the prices are not math");
    assert.match(await answer.textContent(), /costs \$5 and \$10;/);
    await page.evaluate(() => document.fonts.ready);
    const fonts = await page.evaluate(() =>
      [...document.fonts].filter((f) => f.family === "KaTeX_Main" && f.status === "loaded").length);
    assert.ok(fonts > 0, "KaTeX's font loaded");
    assert.deepEqual(await page.evaluate(() => window.cspViolations), []);
  };
  await check();
  await page.screenshot({ path: join(SHOTS, "18-math.png") });
  await page.reload();
  await page.waitForFunction(() => window.htmx);
  await check();
  assert.deepEqual(failed, []);
  assert.deepEqual(problems, []);
  await page.close();
});

test("Copy as Markdown puts the answer's source on the clipboard", async () => {
  const { page, problems } = await openPage();
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: server.url });
  const source = "**Bold**, `code` and $x\\,y$:\n\n- one\n- two\n\n```js\nlet a = 1;\n```";
  await chatWith(page, "Echo: " + source);
  const copy = async () => {
    const button = page.locator(".msg.assistant .copy-md");
    await button.click();
    await page.locator(".msg.assistant .copy-md", { hasText: "Copied" }).waitFor();
    return page.evaluate(() => navigator.clipboard.readText());
  };
  assert.equal(await copy(), source);
  await page.reload();
  await page.waitForFunction(() => window.htmx);
  assert.equal(await copy(), source, "the same after a reload");
  assert.deepEqual(problems, []);
  await page.close();
});

/** The message box's height in px, and whether its text scrolls inside it. */
function boxShape(page) {
  return page.evaluate(() => {
    const box = document.getElementById("message");
    return { height: box.getBoundingClientRect().height, scrolls: box.scrollHeight > box.clientHeight + 1 };
  });
}

test("composer: focused on load and after a send, grows with its text up to a limit", async () => {
  const { page, problems } = await openPage();
  assert.equal(await page.evaluate(() => document.activeElement.id), "message", "focused on load");
  const empty = await boxShape(page);
  await page.fill("#message", "one\ntwo\nthree\nfour");
  const four = await boxShape(page);
  assert.ok(four.height > empty.height, `four lines grow the box (${empty.height} → ${four.height} px)`);
  assert.equal(four.scrolls, false, "four lines fit");
  await page.fill("#message", Array.from({ length: 60 }, (_, i) => `line ${i}`).join("\n"));
  const sixty = await boxShape(page);
  // The limit: 40% of the screen, at most 16rem.
  const limit = await page.evaluate(() => Math.min(0.4 * window.innerHeight, 16 * 16));
  assert.ok(sixty.height > four.height && sixty.height <= limit + 0.5, `capped at ${limit} px: ${sixty.height}`);
  assert.equal(sixty.scrolls, true, "past the limit the text scrolls");
  await page.screenshot({ path: join(SHOTS, "17-composer-grown.png") });
  await page.fill("#message", "Sent with the button");
  await page.click("button.send");
  await page.locator(".msg.user .bubble", { hasText: "Sent with the button" }).waitFor();
  await page.waitForFunction(() => document.getElementById("message").value === "");
  assert.equal(await page.evaluate(() => document.activeElement.id), "message", "focused after the send");
  assert.ok(Math.abs((await boxShape(page)).height - empty.height) < 1, "back to its size once cleared");
  await page.locator(".meta .stats").waitFor({ timeout: ANSWER_MS });
  assert.deepEqual(problems, []);
  await page.close();
});

test("Send turns into Stop while an answer is written; Stop stops it", async () => {
  const { page, problems } = await openPage();
  const button = page.locator("#composer button.send");
  const place = await button.boundingBox();
  await send(page, "Tell me something long");
  await page.locator(".reasoning span").first().waitFor();
  assert.equal(await button.textContent(), "Stop");
  assert.equal(await button.getAttribute("aria-label"), "Stop the answer");
  const stopPlace = await button.boundingBox();
  assert.ok(Math.abs(stopPlace.x + stopPlace.width - place.x - place.width) < 1, "in Send's place");
  await page.screenshot({ path: join(SHOTS, "18-stop-button.png") });
  await button.click();
  await page.locator(".meta .note", { hasText: "Stopped." }).waitFor({ timeout: 5_000 });
  await page.waitForFunction(() => document.querySelector("#composer button.send").textContent === "Send");
  assert.ok(await button.isEnabled());
  assert.equal(await page.locator(".msg.user").count(), 1, "Stop sent nothing");
  assert.equal(await page.locator(".meta .stats").count(), 0);
  // And Send sends again.
  await send(page, "Next question");
  await page.locator(".meta .stats").waitFor({ timeout: ANSWER_MS });
  assert.deepEqual(problems, []);
  await page.close();
});

test("a reader who scrolled up is left there; jump to latest takes them back", async () => {
  const { page, problems } = await openPage({ width: 1000, height: 500 });
  await chatWith(page, "Fill the screen first");
  await page.uncheck("input[name=thinking]");
  await send(page, "And now a long answer");
  const streaming = page.locator(".msg.assistant.streaming .answer");
  await page.waitForFunction(() => {
    const answer = document.querySelector(".msg.assistant.streaming .answer");
    return answer && answer.textContent.length > 20;
  });
  const gap = () => page.evaluate(() => {
    const m = document.getElementById("messages");
    return m.scrollHeight - m.scrollTop - m.clientHeight;
  });
  assert.ok((await gap()) <= 2, "following the answer");
  assert.ok(await page.locator("#jump").isHidden());
  // A small scroll up, as a reader does to look back a line or two.
  await page.evaluate(() => { document.getElementById("messages").scrollTop -= 60; });
  const top = await page.evaluate(() => document.getElementById("messages").scrollTop);
  const length = (await streaming.textContent()).length;
  await page.waitForFunction(
    (before) => {
      const answer = document.querySelector(".msg.assistant.streaming .answer");
      return !answer || answer.textContent.length > before + 40;
    },
    length,
  );
  assert.equal(await page.evaluate(() => document.getElementById("messages").scrollTop), top, "not pulled down");
  assert.ok((await gap()) > 40, "the new text is below");
  await page.locator("#jump").waitFor();
  await page.screenshot({ path: join(SHOTS, "19-jump-to-latest.png") });
  await page.click("#jump");
  assert.ok((await gap()) <= 2, "at the latest");
  assert.ok(await page.locator("#jump").isHidden());
  assert.equal(await page.evaluate(() => document.activeElement.id), "message");
  // Following again: the answer's next text keeps the view at the bottom.
  const later = (await streaming.textContent()).length;
  await page.waitForFunction(
    (before) => {
      const answer = document.querySelector(".msg.assistant.streaming .answer");
      return !answer || answer.textContent.length > before + 40;
    },
    later,
  );
  assert.ok((await gap()) <= 2, `followed on (${await gap()} px below)`);
  await page.locator(".meta .stats").nth(1).waitFor({ timeout: ANSWER_MS });
  assert.deepEqual(problems, []);
  await page.close();
});

test("edit: the box has the focus at the end; Esc puts the message back, Enter saves, Shift+Enter is a new line", async () => {
  const { page, problems } = await openPage();
  const path = await chatWith(page, "An older question");
  await send(page, "Edit me please");
  await page.locator(".meta .stats").nth(1).waitFor({ timeout: ANSWER_MS });
  // Only the last question offers Edit.
  assert.equal(await page.locator(".msg.user .edit:visible").count(), 1);
  assert.ok(await page.locator(".msg.user").last().locator(".edit").isVisible());
  await page.locator(".msg.user").last().locator(".edit").click();
  const box = page.locator("form.editing textarea");
  await box.waitFor();
  assert.equal(await page.evaluate(() => document.activeElement.id), "edit-text", "the box has the focus");
  assert.deepEqual(
    await page.evaluate(() => [document.activeElement.selectionStart, document.activeElement.value.length]),
    [14, 14],
    "the cursor at the end",
  );
  await page.keyboard.type(" now");
  await page.keyboard.press("Escape");
  await page.locator("form.editing").waitFor({ state: "detached" });
  assert.deepEqual(await page.locator(".msg.user .bubble").allTextContents(), ["An older question", "Edit me please"]);
  assert.equal(new URL(page.url()).pathname, path, "no reload");
  // The message put back works as before.
  await page.locator(".msg.user").last().locator(".edit").click();
  await box.waitFor();
  assert.equal(await box.inputValue(), "Edit me please", "Esc dropped the change");
  await page.keyboard.type(" now");
  await page.keyboard.press("Shift+Enter");
  await page.keyboard.type("on two lines");
  assert.equal(await box.inputValue(), "Edit me please now\non two lines");
  await page.keyboard.press("Enter");
  await page.locator(".msg.assistant.streaming").waitFor();
  assert.equal(await page.locator(".msg.user .bubble").last().textContent(), "Edit me please now\non two lines");
  await page.locator(".meta .stats").nth(1).waitFor({ timeout: ANSWER_MS });
  assert.equal(await page.evaluate(() => document.activeElement.id), "message", "back in the composer");
  assert.equal(await page.locator(".msg.user").count(), 2);
  assert.deepEqual(problems, []);
  await page.close();
});

test("settings open in a drawer over the chat, on a phone and on a desktop", async () => {
  for (const [name, viewport] of [["phone", { width: 390, height: 844 }], ["desktop", { width: 1280, height: 800 }]]) {
    const { page, problems } = await openPage(viewport);
    await chatWith(page, `Settings on a ${name}`);
    const before = await page.locator("#messages").boundingBox();
    await page.click("#settings-open");
    const dialog = page.locator("#settings-dialog");
    await dialog.waitFor();
    assert.ok(await page.evaluate(() => document.getElementById("settings-dialog").open));
    // Over the chat: nothing moved under it.
    assert.deepEqual(await page.locator("#messages").boundingBox(), before, "the chat is not pushed down");
    const box = await dialog.boundingBox();
    assert.ok(box.x + box.width <= viewport.width + 0.5 && box.height <= viewport.height + 0.5, JSON.stringify(box));
    const widths = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
    assert.ok(widths[0] <= widths[1], `page is ${widths[0]} px wide in a ${widths[1]} px screen`);
    assert.ok(await page.locator("#settings button[type=submit]").isVisible(), "Save in view");
    await page.screenshot({ path: join(SHOTS, `20-settings-${name}.png`) });
    await page.fill("input[name=temperature]", "0.4");
    await page.click("#settings button[type=submit]");
    await page.locator("#settings .saved", { hasText: "Saved." }).waitFor();
    assert.ok(await dialog.isVisible(), "still open after a save");
    await page.keyboard.press("Escape");
    await dialog.waitFor({ state: "hidden" });
    await page.reload();
    await page.waitForFunction(() => window.htmx);
    assert.equal(await page.inputValue("input[name=temperature]"), "0.4", "saved with the conversation");
    if (name === "desktop") {
      // A click beside the drawer closes it.
      await page.click("#settings-open");
      await dialog.waitFor();
      await page.mouse.click(100, 400);
      await dialog.waitFor({ state: "hidden" });
    }
    assert.deepEqual(problems, []);
    await page.close();
  }
});

test("/clear asks first, like deleting a conversation", async () => {
  const confirm = [];
  const dismiss = [/^Delete every message of this chat\?/];
  const { page, problems } = await openPage(undefined, { confirm, dismiss });
  const path = await chatWith(page, "Keep me unless I say so");
  const asked = page.waitForEvent("dialog");
  await send(page, "/clear");
  assert.equal((await asked).message(), "Delete every message of this chat? This cannot be undone.");
  // Turned down: nothing is sent, the command stays in the box.
  assert.equal(await page.inputValue("#message"), "/clear");
  assert.equal(await page.locator(".msg.user").count(), 1);
  await page.reload();
  await page.waitForFunction(() => window.htmx);
  assert.equal(await page.locator(".msg.user").count(), 1, "still stored");
  dismiss.pop();
  confirm.push(/^Delete every message of this chat\?/);
  await send(page, "/clear");
  await page.waitForFunction(() => document.querySelectorAll(".msg.user").length === 0);
  assert.equal(new URL(page.url()).pathname, path);
  assert.deepEqual(problems, []);
  await page.close();
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
  await page.click("#settings-open");
  await change();
  await page.click("#settings button[type=submit]");
  await page.locator("#settings .saved", { hasText: "Saved." }).waitFor();
  await page.click("#settings-close");
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
  // A newer question: only its answer offers Continue; the earlier one's button is hidden.
  await send(page, "And beavers?");
  const second = page.locator(".msg.assistant").nth(1);
  await second.locator(".meta .note.length").waitFor({ timeout: ANSWER_MS });
  assert.ok(await second.locator("button.continue").isVisible(), "the last answer continues");
  assert.equal(
    await page.locator(".msg.assistant").first().locator("button.continue").isVisible(),
    false,
    "an earlier answer does not",
  );
  assert.deepEqual(problems, []);
  await page.close();
});
